"""Per-event learning for the link-load forecasters (``per_event=True``, issue 16).

A forecaster re-fits at exact sample counts; by default a batch is predicted before it is
learned, so the rows of a batch after a fit due inside it are forecast by the model from
before that fit. With ``per_event=True`` every row must be forecast as with transport
batches of one row. Tried on a synthetic daily profile, on the link-load source (keyed,
several links) and on an hourly two-station table of our own making with missing values
and a station that starts late, which the forecasters were not built on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

import tideflow as tf
from tideflow.connectors.linkload import LinkLoadSource
from tideflow.stream.batch import Batch
from tideflow.stream.drift import DriftEvent
from tideflow.stream.schema import Schema
from tideflow.strategies import checks
from tideflow.strategies.forecasting import FrozenMLP, IncrementalRefit, WindowForecaster
from tideflow.strategies.liquid import LiquidForecaster

torch.set_num_threads(1)

SCHEMA = Schema({"y": "float64"}, target="y")
TINY = {"window": 4, "pretrain_steps": 40, "epochs": 2}
EVENT = DriftEvent("s", 0, "PageHinkley", "error", "test", 1.0)


def _refit(**kw: Any) -> WindowForecaster:
    # refit_every=6 divides into neither 4 nor 7: re-fits fall inside batches
    return IncrementalRefit(refit_every=6, hidden=8, **TINY, **kw)


def _liquid(**kw: Any) -> WindowForecaster:
    return LiquidForecaster(units=8, online_finetune=True, finetune_every=6, finetune_steps=2,
                            **TINY, **kw)


def _profile(n: int) -> np.ndarray:
    t = np.arange(n)
    y = 2.0 + np.sin(2 * np.pi * t / 32) + 0.02 * np.random.default_rng(0).normal(size=n)
    y[n // 2:] += 1.0
    return y


def _stream(f: WindowForecaster, batches: list[Batch]) -> tuple[np.ndarray, list[dict]]:
    """Prequential: predict each batch, then learn it; the predictions and the reports' extras."""
    preds, extras = [], []
    for b in batches:
        preds.append(f.predict(b).to_numpy())
        extras.append(f.learn(b).extra)
    return np.concatenate(preds), extras


def _cut(y: np.ndarray, step: int) -> list[Batch]:
    return [Batch.from_pydict({"y": y[i:i + step]}, first_offset=i) for i in range(0, len(y), step)]


def _rows(batches: list[Batch]) -> list[Batch]:
    """The same stream in batches of one row."""
    return [b.slice(i, 1) for b in batches for i in range(len(b))]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    # the same model on the same inputs, evaluated in batches of another shape: float32 rounding
    return bool(np.allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True))


def _same_learning(a: WindowForecaster, b: WindowForecaster) -> None:
    assert (a.fits, a.fit_windows, a.examples) == (b.fits, b.fit_windows, b.examples)
    checks.assert_same(a.snapshot()["series"], b.snapshot()["series"], "series state")


@pytest.mark.parametrize("make", [_refit, _liquid], ids=["IncrementalRefit", "LiquidForecaster"])
def test_per_event_batches_forecast_as_batches_of_one_row(make):
    y = _profile(130)
    one = make()
    one.bind(SCHEMA)
    p1, _ = _stream(one, _cut(y, 1))
    for step in (4, 7):
        f = make(per_event=True)
        f.bind(SCHEMA)
        p, extras = _stream(f, _cut(y, step))
        assert _close(p, p1), step
        _same_learning(f, one)
        assert sum(e["per_event_rows"] for e in extras) == len(y)
    # the default stays batch-prequential: rows after a re-fit inside a batch use the older model
    default = make()
    default.bind(SCHEMA)
    p4, extras = _stream(default, _cut(y, 4))
    late = ~np.isclose(p4, p1, rtol=1e-6, atol=1e-6)
    assert late.sum() >= 3 and "per_event_rows" not in extras[0]
    _same_learning(default, one)  # what it learns never depended on the cut


@pytest.mark.parametrize("make", [_refit, _liquid], ids=["IncrementalRefit", "LiquidForecaster"])
def test_keyed_link_load_rows_forecast_as_batches_of_one_row(make):
    def source(steps: int) -> LinkLoadSource:
        probe = LinkLoadSource("abilene", days=1, scenario="none")
        return LinkLoadSource("abilene", days=1.5, batch_steps=steps, links=probe.link_ids[:3])

    def run(f: WindowForecaster, batches: list[Batch]) -> np.ndarray:
        f.bind(source(1).schema())
        return _stream(f, batches)[0]

    batches = list(source(4).batches())  # 4 steps x 3 links a batch
    one = make(key="link")
    p1 = run(one, _rows(batches))  # the same rows, one (one link at one step) per batch
    f = make(key="link", per_event=True)
    assert _close(run(f, batches), p1)
    _same_learning(f, one)
    assert one.series_keys() == f.series_keys() and len(f.series_keys()) == 3
    assert not _close(run(make(key="link"), batches), p1)


def _stations() -> pa.Table:
    """Hourly demand of two stations (daily cycle, weekend dip), station "b" joining late with
    missing values first and a gap later: another user's table, not the link-load shape."""
    hours = np.arange(24 * 6)
    rows: dict[str, list[Any]] = {"station": [], "hour": [], "demand": []}
    for h in hours:
        day = h // 24
        for name, level in (("a", 50.0), ("b", 80.0)):
            if name == "b" and h < 20:
                continue
            v = level * (1.2 + np.cos(2 * np.pi * (h % 24) / 24)) * (0.6 if day % 7 >= 5 else 1.0)
            v += np.sin(h * 1.7 + level)  # deterministic "noise"
            if name == "b" and (h < 23 or 90 <= h < 94):
                v = None
            rows["station"].append(name)
            rows["hour"].append(int(h))
            rows["demand"].append(v)
    return pa.table(rows)


def _run_table(table: pa.Table, batch_size: int, **kw: Any) -> tf.RunResult:
    source = tf.TableSource(table, target="demand", features=["station", "hour"],
                            nullable=["demand"], batch_size=batch_size, stream_id="stations")
    f = IncrementalRefit(key="station", window=6, pretrain_steps=48, refit_every=10, epochs=2,
                         hidden=8, **kw)
    return (tf.Pipeline("stations").source(source).learn(f, name="m")
            .run(runner="local", tracking=False, progress=False, keep_predictions=True))


def test_a_table_of_another_user_through_the_engine():
    table = _stations()
    one, five = _run_table(table, 1), _run_table(table, 5, per_event=True)
    default = _run_table(table, 5)
    p1, p5 = one.predictions["m"]["prediction"], five.predictions["m"]["prediction"]
    assert _close(p5, p1)
    truth = one.predictions["m"]["truth"]
    known = np.isfinite(truth)
    mae = {name: np.mean(np.abs(r.predictions["m"]["prediction"] - truth)[known])
           for name, r in (("one", one), ("five", five), ("default", default))}
    assert np.isclose(mae["five"], mae["one"], rtol=1e-6)
    assert not np.isclose(mae["default"], mae["one"], rtol=1e-6)
    s1, s5, sd = one.summary["m"], five.summary["m"], default.summary["m"]
    assert s5["fits"] == s1["fits"]
    # the missing loads before station b's first value are left out and counted, as one by one
    assert s5["skipped_rows"] == s1["skipped_rows"] == {"null_target": 3}
    # the summary says which semantics ran; the default's description is as it always was
    assert s5["extra"]["per_event_rows"] == table.num_rows and "per_event_rows" not in sd["extra"]
    assert s5["strategy"].endswith("per_event=True)") and "per_event" not in sd["strategy"]


def test_a_drift_refit_scheduled_at_a_batch_end_is_placed_per_event():
    y = _profile(110)

    def run(step: int, **kw: Any) -> tuple[np.ndarray, WindowForecaster]:
        f = LiquidForecaster(units=8, refit_on_drift=True, min_refit_samples=13, **TINY, **kw)
        f.bind(SCHEMA)
        p70, _ = _stream(f, _cut(y[:70], step))
        f.on_drift(EVENT)  # at row 70, a batch end for both cuts; the re-fit is due at 83
        rest, _ = _stream(f, _cut(y, step)[70 // step:])
        return np.concatenate([p70, rest]), f

    p1, one = run(1)
    p5, five = run(5, per_event=True)
    assert _close(p5, p1) and five.refits == one.refits == 1
    _same_learning(five, one)
    assert not _close(run(5)[0], p1)


def test_predict_changes_nothing_and_learn_without_it_reaches_the_same_state():
    y = _profile(80)
    f, g = _refit(per_event=True), _refit(per_event=True)
    f.bind(SCHEMA)
    g.bind(SCHEMA)
    _stream(f, _cut(y[:44], 4))
    _stream(g, _cut(y[:44], 4))
    b = Batch.from_pydict({"y": y[44:57]}, first_offset=44)
    before = f.snapshot()
    first = f.predict(b).to_numpy()
    checks.assert_same(f.snapshot()["series"], before["series"], "state after predict")
    assert f.fits == before["fits"]
    assert np.array_equal(f.predict(b).to_numpy(), first)  # the same rows again: the same answer
    report = f.learn(b)  # adopts the pass
    g.learn(b)  # no predict first: learns as by default
    _same_learning(f, g)
    assert report.fits == 2 and report.extra["per_event_rows"] == 13


def test_the_switch_is_named_only_when_on_and_needs_observed_rows():
    off = IncrementalRefit()
    assert "per_event" not in off.params() and "per_event" not in off.describe()
    on = LiquidForecaster(per_event=True)
    assert on.params()["per_event"] is True and on.clone().per_event is True
    assert "per_event=True" in on.describe()
    with pytest.raises(ValueError, match="within_batch='observed'"):
        FrozenMLP(per_event=True, within_batch="recursive")
    # without the target column a batch is predicted by the model as it is, and nothing is cut
    f = _refit(per_event=True)
    f.bind(SCHEMA)
    _stream(f, _cut(_profile(50), 5))
    unlabelled = Batch.from_pydict({"y": [1.0, 2.0, 3.0]}, first_offset=50).select([])
    assert len(f.predict(unlabelled)) == 3


def test_with_a_label_delay_learning_is_still_that_of_batches_of_one_row():
    y = _profile(90)
    one, f = _refit(), _refit(per_event=True)
    one.bind(SCHEMA)
    f.bind(SCHEMA)
    _stream(one, _cut(y, 1))
    batches = _cut(y, 6)
    f.predict(batches[0])
    for b, nxt in zip(batches, batches[1:] + [None]):
        if nxt is not None:
            f.predict(nxt)  # the next rows before these are learned
        f.learn(b)
    _same_learning(f, one)


def test_per_event_passes_the_check_suite_except_the_unlabelled_prediction():
    # as for within_batch="observed" (test_forecasting.py): rows read their batch's targets
    for cls in (IncrementalRefit, LiquidForecaster):
        params = {**cls._unit_test_params(), "within_batch": "observed", "per_event": True}
        setup = checks._Setup(cls, params, "regression", 42)
        for check in checks.STRATEGY_CHECKS:
            if check is not checks.check_predict_returns_array:
                check(setup)
