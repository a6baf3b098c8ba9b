"""Nowcasters: rows they cannot use are reported (``StepReport.skipped``) and change no forecast;
missing feature values follow each model's stated policy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.schema import Schema
from tideflow.strategies.nowcast import NowcastGBM, NowcastMLP

T0 = datetime(2020, 6, 1, tzinfo=timezone.utc)
SCHEMA = Schema({"timestamp": pa.timestamp("s", tz="UTC"), "x": "float64", "y": "float64"}, target="y",
                time="timestamp", nullable=("timestamp", "x", "y"))


def _series(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = np.cos(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.5 * x + 0.2 * rng.normal(size=n)
    return x, y


def _batch(hours: list, x: list, y: list, first_offset: int) -> Batch:
    stamps = [None if h is None else T0 + timedelta(hours=int(h)) for h in hours]
    return Batch.from_pydict({"timestamp": pa.array(stamps, type=pa.timestamp("s", tz="UTC")), "x": x, "y": y},
                             first_offset=first_offset)


def _clean_and_messy(n: int = 240, size: int = 24) -> tuple[list[Batch], list[Batch], dict[str, int]]:
    """The same hourly series twice: as it is (one target missing), and with rows a nowcaster
    cannot use added to some batches: late rows (times of the previous batch, other values), a
    second row with a time already in its batch, rows without a time."""
    x, y = _series(n)
    y[100] = np.nan
    clean, messy = [], []
    added = {"time_not_after_newest": 0, "null_time": 0}
    for i in range(0, n, size):
        hours, xs, ys = list(range(i, i + size)), x[i:i + size].tolist(), y[i:i + size].tolist()
        clean.append(_batch(hours, xs, ys, i))
        if i and (i // size) % 3 == 1:
            late = [i - 3, i - 2, i + 5]  # two of the previous batch's hours, one of this batch's
            hours, xs, ys = hours + late + [None], xs + [9.0] * 4, ys + [-50.0] * 4
            added["time_not_after_newest"] += 3
            added["null_time"] += 1
        messy.append(_batch(hours, xs, ys, 10_000 + i))
    return clean, messy, added


def test_rows_it_cannot_use_are_reported_and_change_no_forecast():
    clean, messy, added = _clean_and_messy()
    runs = []
    for batches in (clean, messy):
        f = NowcastGBM(window=72, horizons=3, lags=3, max_iter=10)
        f.bind(SCHEMA)
        skipped: dict[str, int] = {}
        forecasts, extras = [], []
        for b, probe in zip(batches, clean[1:] + clean[:1]):
            report = f.learn(b)
            for k, v in report.skipped.items():
                skipped[k] = skipped.get(k, 0) + v
            extras.append(report.extra)
            forecasts.append(f.predict(probe).to_pylist())
        runs.append((skipped, forecasts, extras, f.fits))
    (clean_skipped, *clean_run), (messy_skipped, *messy_run) = runs
    assert clean_skipped == {"null_target": 1}
    assert messy_skipped == {"null_target": 1, **added}
    assert messy_run == clean_run  # forecasts, matured-error sums and fits: as if the rows were not there


def test_a_feature_missing_from_a_whole_window_does_not_stop_gradient_boosting():
    # a sensor down for longer than the fit window: scikit-learn's binning fails on a column
    # without any value, so every fit (hence every learn) would fail until it came back
    x, y = _series(120)
    x[40:] = np.nan
    f = NowcastGBM(window=48, horizons=2, lags=2, max_iter=5)
    f.bind(SCHEMA)
    for i in range(0, 120, 24):
        f.learn(_batch(list(range(i, i + 24)), x[i:i + 24].tolist(), y[i:i + 24].tolist(), i))
    assert f.fits == 4  # one per batch once 48 rows are in, the last two over windows without x
    assert np.isfinite(f.predict(_batch([120, 121], [None, None], [0.0, 0.0], 120)).to_numpy()).all()


def test_the_neural_nowcasters_see_a_missing_feature_as_the_middle_of_its_range():
    # the policy the module states (and committed results rest on): NaN -> 0 after MinMax(-1, 1)
    x, y = _series(96)
    f = NowcastMLP(window=72, horizons=2, lags=2, hidden=8, epochs=2)
    f.bind(SCHEMA)
    for i in range(0, 96, 24):
        f.learn(_batch(list(range(i, i + 24)), x[i:i + 24].tolist(), y[i:i + 24].tolist(), i))
    net, scaler = f._series.model
    rows = f._series.X[-3:].copy()
    middle = rows.copy()
    middle[:, 0] = scaler[0][0] + scaler[1][0] / 2  # the value that scales to 0
    rows[:, 0] = np.nan
    assert np.allclose(f._predict_model((net, scaler), rows), f._predict_model((net, scaler), middle), rtol=0,
                       atol=1e-6)


def test_a_batch_longer_than_the_window_is_learned_and_scored():
    """A batch of more rows than the history keeps (window + context) used to fail with an
    IndexError: its rows are now kept until the next trim, scored and forecast."""
    import numpy as np

    import tideflow as tf
    from tideflow.strategies.nowcast import NowcastGBM

    f = NowcastGBM(window=12, horizons=2, lags=2, max_iter=5)
    f.bind(tf.Schema({"x": "float64", "y": "float64"}, target="y"))
    x, y = np.cos(np.arange(120) / 5), np.sin(np.arange(120) / 5)
    first = f.learn(tf.Batch.from_pydict({"x": x[:60], "y": y[:60]}))
    second = f.learn(tf.Batch.from_pydict({"x": x[60:], "y": y[60:]}, first_offset=60))
    assert first.fits == 1 and second.fits == 1 and second.extra["n_h1"] == 60
    assert np.isfinite(f.predict(tf.Batch.from_pydict({"x": [0.5], "y": [0.1]}, first_offset=120)).to_numpy()).all()
