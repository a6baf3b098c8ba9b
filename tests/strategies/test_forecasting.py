"""One-step-ahead forecasters (IL baseline, frozen controls, persistence) and the liquid forecaster.

The setting of arXiv 2404.05304 at small scale: a 15-min-like daily profile
(period 96 steps) with a level shift, pretraining on two periods.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tideflow.stream.batch import Batch
from tideflow.stream.drift import DriftEvent
from tideflow.stream.schema import Schema
from tideflow.strategies import checks
from tideflow.strategies.base import SchemaError
from tideflow.strategies.forecasting import (
    FrozenGRU,
    FrozenMLP,
    IncrementalRefit,
    Persistence,
    WindowForecaster,
)
from tideflow.strategies.liquid import LiquidForecaster

torch.set_num_threads(1)

SCHEMA = Schema({"y": "float64"}, target="y")
KEYED = Schema({"link": "string", "load": "float64"}, target="load")
PERIOD, PRETRAIN, SHIFT_AT, N = 96, 192, 300, 400
TINY = {"window": 4, "pretrain_steps": 40, "epochs": 2}
EVENT = DriftEvent("s", 0, "PageHinkley", "error", "test", 1.0)


def profile(n: int = N, shift: float = 1.0, shift_at: int = SHIFT_AT, noise: float = 0.02,
            seed: int = 0) -> np.ndarray:
    """A daily-like load profile (two harmonics) with noise and a level shift."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = 2.0 + np.sin(2 * np.pi * t / PERIOD) + 0.3 * np.sin(4 * np.pi * t / PERIOD + 1.0)
    y = y + noise * rng.normal(size=n)
    y[shift_at:] += shift
    return y


def batches(y: np.ndarray, step: int, start: int = 0) -> list[Batch]:
    return [Batch.from_pydict({"y": y[i:i + step]}, first_offset=start + i)
            for i in range(0, len(y), step)]


def stream(f: WindowForecaster, y: np.ndarray, step: int = 1, start: int = 0) -> np.ndarray:
    """Prequential: predict each batch, then learn it; the predictions."""
    out = []
    for b in batches(y, step, start):
        out.append(f.predict(b).to_numpy())
        f.learn(b)
    return np.concatenate(out)


def bound(f: WindowForecaster, schema: Schema = SCHEMA) -> WindowForecaster:
    f.bind(schema)
    return f


def rmse(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - y) ** 2)))


# -- accuracy on the synthetic profile ---------------------------------------------------------


def test_fitted_forecasters_beat_persistence_before_the_shift():
    y = profile()
    before = slice(PRETRAIN, SHIFT_AT)
    common = {"pretrain_steps": PRETRAIN, "window": 16}
    forecasters = {
        "persistence": Persistence(),
        "frozen_mlp": FrozenMLP(epochs=20, **common),
        "il_b48": IncrementalRefit(refit_every=48, epochs=10, **common),
        "liquid_cfc": LiquidForecaster(epochs=40, lr=1e-2, **common),
    }
    errors = {}
    for name, f in forecasters.items():
        errors[name] = rmse(stream(bound(f), y, step=4)[before], y[before])
    for name in ("frozen_mlp", "il_b48", "liquid_cfc"):
        assert errors[name] < 0.8 * errors["persistence"], errors


def test_window_normalisation_lets_a_frozen_model_follow_a_level_shift():
    # the first reconstruction's finding: with global scaling a frozen model leaves its range
    y = profile()
    after = slice(SHIFT_AT + 16, N)
    errors = {}
    for normalisation in ("global", "window"):
        f = bound(FrozenMLP(pretrain_steps=PRETRAIN, epochs=20, normalisation=normalisation))
        errors[normalisation] = rmse(stream(f, y, step=8)[after], y[after])
    assert errors["window"] < 0.5 * errors["global"], errors


def test_persistence_forecasts_the_last_value():
    f = bound(Persistence())
    assert f.predict(batches(np.array([1.0, 2.0]), 2)[0]).to_pylist() == [0.0, 1.0]
    f.learn(batches(np.array([1.0, 2.0]), 2)[0])
    assert f.predict(batches(np.array([5.0, 7.0, 9.0]), 3)[0]).to_pylist() == [2.0, 5.0, 7.0]
    f.learn(batches(np.array([5.0]), 1)[0])
    assert f.fits == 0 and f.predict(batches(np.array([0.0]), 1)[0]).to_pylist() == [5.0]


# -- when models are fitted ----------------------------------------------------------------------


@pytest.mark.parametrize("refit_every", [7, 25])
def test_incremental_refit_refits_every_b_samples(refit_every):
    f = bound(IncrementalRefit(refit_every=refit_every, hidden=8, **TINY))
    y = profile(n=150)
    reported = 0
    seen = 0
    for b in batches(y, 6):
        reported += f.learn(b).fits
        seen += len(b)
        assert f.fits == (0 if seen < 40 else 1 + (seen - 40) // refit_every)
    assert reported == f.fits == 1 + (150 - 40) // refit_every
    info = f.series_info()
    assert info["last_fit_at"] == 40 + (f.fits - 1) * refit_every


def test_fits_happen_at_exact_sample_counts_whatever_the_batching():
    y = profile(n=120)
    one, many = bound(IncrementalRefit(refit_every=9, hidden=8, **TINY)), bound(
        IncrementalRefit(refit_every=9, hidden=8, **TINY))
    stream(one, y, step=1)
    stream(many, y, step=13)
    checks.assert_same(many.snapshot()["series"], one.snapshot()["series"], "series state")


@pytest.mark.parametrize("cls", [FrozenMLP, FrozenGRU])
def test_frozen_controls_never_refit(cls):
    f = bound(cls(hidden=8, **TINY))
    y = profile(n=200)
    stream(f, y[:40], step=8)
    weights = {k: v.clone() for k, v in f.snapshot()["series"][0][1]["model"].items()}
    f.on_drift(EVENT)
    stream(f, y[40:], step=8, start=40)
    assert f.fits == 1
    checks.assert_same(f.snapshot()["series"][0][1]["model"], weights, "weights after pretraining")


def test_hybrid_refits_after_a_drift_event_and_not_before():
    f = bound(LiquidForecaster(units=8, refit_on_drift=True, min_refit_samples=12, **TINY))
    y = profile(n=120)
    stream(f, y[:70], step=5)
    assert (f.fits, f.refits) == (1, 0)  # pretraining only, however long it streams
    f.on_drift(EVENT)
    f.on_drift(EVENT)  # ignored: a re-fit is already pending
    stream(f, y[70:81], step=1, start=70)
    assert (f.fits, f.refits) == (1, 0) and f.series_info()["drift_pending"]
    report = f.learn(batches(y[81:82], 1, 81)[0])
    assert (report.fits, f.fits, f.refits) == (1, 2, 1)
    assert f.series_info()["last_fit_at"] == 82 and not f.series_info()["drift_pending"]
    stream(f, y[82:], step=5, start=82)
    assert f.refits == 1
    plain = bound(LiquidForecaster(units=8, **TINY))
    stream(plain, y[:70], step=10)
    plain.on_drift(EVENT)
    stream(plain, y[70:], step=10, start=70)
    assert (plain.fits, plain.refits) == (1, 0)


def test_hybrid_refits_when_the_engines_detector_fires_on_its_error():
    from tideflow.pipelines.learn_step import Learner

    y = profile(n=360, shift=3.0, shift_at=200)
    f = bound(LiquidForecaster(units=8, window=8, pretrain_steps=96, epochs=3, refit_on_drift=True))
    learner = Learner("hybrid", f, SCHEMA, detector="PageHinkley")
    events = []
    for seq, b in enumerate(batches(y, 4)):
        events += learner.step(seq, b).events
    assert events and min(e.offset for e in events) >= 200, events
    assert f.refits >= 1


def test_online_finetune_updates_weights_every_few_samples():
    f = bound(LiquidForecaster(units=8, online_finetune=True, finetune_every=10, finetune_steps=2,
                               **TINY))
    stream(f, profile(n=100), step=7)
    assert f.series_info()["finetunes"] == (100 - 40) // 10
    assert f.fits == 1 + f.series_info()["finetunes"]


# -- the liquid network's state --------------------------------------------------------------------


def test_stateful_liquid_streams_alike_in_batches_of_one_or_seven_steps():
    y = profile(n=126)
    # pretraining ends with a batch of 7, so both fit the same model after the same rows
    params = {"units": 8, "window": 4, "pretrain_steps": 42, "epochs": 2}
    one, seven = bound(LiquidForecaster(**params)), bound(LiquidForecaster(**params))
    p1, p7 = stream(one, y, step=1), stream(seven, y, step=7)
    np.testing.assert_allclose(p7, p1, rtol=0, atol=1e-6)
    assert not np.allclose(p1[42:], y[41:-1])  # the fitted model, not persistence, was compared


@pytest.mark.parametrize("cell", ["cfc", "ltc"])
def test_stateful_liquid_resumes_bit_identically_from_a_snapshot(cell):
    y = profile(n=60)
    params = {"cell": cell, "units": 8, "window": 4, "pretrain_steps": 20, "epochs": 2}
    a = bound(LiquidForecaster(**params))
    stream(a, y[:30], step=1)
    buffer = io.BytesIO()
    torch.save(a.snapshot(), buffer)  # plain data: tensors, numbers, lists, numpy arrays
    buffer.seek(0)
    numpy_core = getattr(np, "_core", None) or np.core  # histories are numpy arrays
    with torch.serialization.safe_globals([np.ndarray, np.dtype, np.dtypes.Float64DType,
                                           numpy_core.multiarray._reconstruct]):
        state = torch.load(buffer, weights_only=True)
    b = bound(LiquidForecaster(**params))
    b.restore(state)
    pa_, pb = stream(a, y[30:], step=1, start=30), stream(b, y[30:], step=1, start=30)
    assert np.array_equal(pa_, pb)
    checks.assert_same(b.snapshot()["series"], a.snapshot()["series"], "state after resuming")


# -- series, keys and rows of a batch ----------------------------------------------------------


def _keyed_batches(a: np.ndarray, b: np.ndarray, step: int) -> list[Batch]:
    out = []
    for i in range(0, len(a), step):
        n = len(a[i:i + step])
        links = [lk for _ in range(n) for lk in ("A", "B")]
        load = np.ravel(np.column_stack([a[i:i + step], b[i:i + step]]))
        out.append(Batch.from_pydict({"link": links, "load": load}, first_offset=2 * i))
    return out


def _stream_keyed(f: WindowForecaster, a: np.ndarray, b: np.ndarray, step: int) -> np.ndarray:
    out = []
    for batch in _keyed_batches(a, b, step):
        p = f.predict(batch).to_numpy()
        out.append(p[np.array(batch.column("link").to_pylist()) == "A"])
        f.learn(batch)
    return np.concatenate(out)


@pytest.mark.parametrize("make", [
    lambda: IncrementalRefit(key="link", refit_every=16, hidden=8, **TINY),
    lambda: LiquidForecaster(key="link", units=8, **TINY),
])
def test_one_shared_instance_keeps_each_series_apart(make):
    a = profile(n=90, seed=1)
    b_small, b_large = profile(n=90, seed=2), 10.0 * profile(n=90, seed=3, shift_at=50)
    first, second = bound(make(), KEYED), bound(make(), KEYED)
    pa_small = _stream_keyed(first, a, b_small, step=3)
    pa_large = _stream_keyed(second, a, b_large, step=3)
    assert np.array_equal(pa_small, pa_large)
    assert first.series_keys() == ["A", "B"] and first.series_info("A")["fits"] >= 1
    # and like keyed routing: an instance that only ever saw series A
    alone = bound(make(), KEYED)
    only_a = []
    for i in range(0, 90, 3):
        batch = Batch.from_pydict({"link": ["A"] * 3, "load": a[i:i + 3]}, first_offset=i)
        only_a.append(alone.predict(batch).to_numpy())
        alone.learn(batch)
    assert np.array_equal(np.concatenate(only_a), pa_small)


def test_observed_and_recursive_rows_of_a_batch():
    f = bound(FrozenMLP(hidden=8, **TINY))
    y = profile(n=60)
    stream(f, y[:48], step=8)
    nxt = Batch.from_pydict({"y": y[48:54]}, first_offset=48)
    observed = f.predict(nxt).to_numpy()
    without_target = f.predict(nxt.select([])).to_numpy()
    recursive = bound(FrozenMLP(hidden=8, within_batch="recursive", **TINY))
    stream(recursive, y[:48], step=8)
    assert np.array_equal(recursive.predict(nxt).to_numpy(), without_target)
    assert np.isclose(observed[0], without_target[0], rtol=0, atol=1e-6)
    assert not np.allclose(observed[1:], without_target[1:])
    # an observed row is the same forecast as predicting it after learning the rows before it
    f.learn(nxt.slice(0, 3))
    assert np.allclose(f.predict(nxt.slice(3, 3)).to_numpy(), observed[3:], atol=1e-6)


def test_observed_mode_passes_the_check_suite_except_the_unlabelled_prediction():
    # "predict_returns_array" demands the same predictions without the target column;
    # observed rows read it by design (see the forecasting module docstring)
    for cls in (IncrementalRefit, LiquidForecaster):
        params = {**cls._unit_test_params(), "within_batch": "observed"}
        setup = checks._Setup(cls, params, "regression", 42)
        for check in checks.STRATEGY_CHECKS:
            if check is not checks.check_predict_returns_array:
                check(setup)


# -- variants and errors --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["cfc", "ltc"])
@pytest.mark.parametrize("wiring, mode, normalisation", [
    ("autoncp", "stateful", "global"), ("full", "stateful", "global"),
    ("autoncp", "window", "window"), ("full", "window", "global"),
])
def test_liquid_variants_run(cell, wiring, mode, normalisation):
    f = bound(LiquidForecaster(cell=cell, wiring=wiring, mode=mode, normalisation=normalisation,
                               units=6, hidden=8, window=4, pretrain_steps=24, epochs=1))
    p = stream(f, profile(n=40), step=5)
    assert f.fits == 1 and np.isfinite(p).all() and len(p) == 40


@pytest.mark.parametrize("normalisation", ["global", "window"])
@pytest.mark.parametrize("cls", [FrozenMLP, FrozenGRU, IncrementalRefit])
def test_both_normalisations_run(cls, normalisation):
    f = bound(cls(normalisation=normalisation, hidden=8, **TINY))
    p = stream(f, profile(n=60), step=10)
    assert f.fits >= 1 and np.isfinite(p).all()


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="normalisation='global'"):
        LiquidForecaster(mode="stateful", normalisation="window")
    with pytest.raises(ValueError, match="pretrain_steps"):
        FrozenMLP(window=16, pretrain_steps=16)
    with pytest.raises(SchemaError, match="key column 'link'"):
        FrozenMLP(key="link").bind(SCHEMA)
    f = bound(FrozenMLP(key="link", target="load", **TINY), KEYED)
    with pytest.raises(SchemaError, match="key column 'link'"):
        f.predict(Batch.from_pydict({"load": [1.0]}))


def test_a_missing_observation_is_the_previous_value_and_counts_as_used():
    # the policy window_forecaster.py states (committed link-load results rest on it): a NaN load
    # is forward-filled before it is kept, the row is a sample, nothing is reported as skipped
    y = profile(60)
    gappy, filled = y.copy(), y.copy()
    gappy[[10, 45, 46]] = np.nan
    filled[10], filled[45:47] = filled[9], filled[44]
    twins = []
    for values in (gappy, filled):
        f = FrozenMLP(hidden=8, **TINY)
        f.bind(Schema({"y": "float64"}, target="y", nullable=("y",)))
        reports = [f.learn(Batch.from_pydict({"y": values[i:i + 20]}, first_offset=i)) for i in range(0, 60, 20)]
        twins.append((reports, f))
    (reports, gap), (_, full) = twins
    assert all(r.samples == 20 and not r.skipped for r in reports) and gap.n_learned == 60
    probe = Batch.from_pydict({"y": profile(70)[60:]}, first_offset=60)
    assert gap.predict(probe).equals(full.predict(probe))


def test_a_series_that_starts_without_values_leaves_them_out_and_counts_them():
    """Missing loads before a series' first value have nothing to carry forward: they are left out
    and counted (learning them as NaN made every later forecast of the series NaN)."""
    from tideflow.stream.schema import Schema

    f = FrozenMLP(window=4, pretrain_steps=40, epochs=2, hidden=8)
    f.bind(Schema({"y": "float64"}, target="y", nullable=("y",)))
    y = np.sin(np.arange(100) / 4)
    y[:5] = np.nan
    import time

    t0 = time.perf_counter()
    report = f.learn(Batch.from_pydict({"y": y}))
    assert report.skipped == {"null_target": 5} and f.fits == 1
    assert 0 < report.train_seconds <= time.perf_counter() - t0  # the call's own wall time
    assert np.isfinite(f.predict(Batch.from_pydict({"y": [0.1, 0.2]}, first_offset=100)).to_numpy()).all()
