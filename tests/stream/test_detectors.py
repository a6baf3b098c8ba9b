"""Every drift detector the adapter offers: the operator check suite (snapshot/restore mid-stream
included) on a column, and detection of a real shift on a column and on a learner's error."""

from __future__ import annotations

import numpy as np
import pytest
from river import linear_model, preprocessing

import tideflow as tf
from tideflow.stream.checks import yield_operator_checks
from tideflow.stream.drift import BINARY_DETECTORS, DetectDrift, RiverDetector

REAL = ["ADWIN", "PageHinkley", "KSWIN", "PerformanceTrigger"]
BINARY = sorted(BINARY_DETECTORS)


def _error_rate_stream(n_batches: int, seed: int) -> list[tf.Batch]:
    """A 0/1 error column whose rate jumps from 5 % to 60 % halfway: decisions for binary detectors."""
    rng = np.random.default_rng(seed)
    n, size = n_batches * 64, 64
    err = np.r_[rng.random(n // 2) < 0.05, rng.random(n - n // 2) < 0.6].astype(np.int64)
    return [tf.Batch.from_pydict({"y": err[i * size:(i + 1) * size]}, stream_id="check", first_offset=i * size)
            for i in range(n_batches)]


def _setup(det):
    # binary detectors watch a 0/1 error column; the others the regression check stream's x
    params = {"on": "y" if det in BINARY else "x", "detector": det}
    if det == "PerformanceTrigger":
        params["params"] = {"k": 20, "tau": 1.2}
    return params, (_error_rate_stream if det in BINARY else None)


def _cases():
    for det in REAL + BINARY:
        params, streams = _setup(det)
        for check in yield_operator_checks(DetectDrift, schema_kind="regression", params=params, streams=streams):
            yield pytest.param(check, id=f"{det}-{check.__name__}")


@pytest.mark.parametrize("detector", REAL + BINARY)
def test_every_detector_decides_after_the_snapshot_point_of_its_check_stream(detector):
    """The snapshot/restore check compares decisions only if there are some after its split
    (3 batches): each detector fires there on its check stream."""
    from tideflow.stream.checks import check_stream

    params, streams = _setup(detector)
    stream = streams(8, 42) if streams else check_stream("regression", 8, 42)
    op = DetectDrift(**params)
    fired = []
    for b in stream:
        op.process(b)
        fired += [e.offset for e in op.drain().drift_events]
    assert any(off >= 3 * 64 for off in fired), fired


@pytest.mark.parametrize("check", list(_cases()))
def test_operator_checks_for_every_detector(check):
    check()


@pytest.mark.parametrize("detector", REAL)
def test_real_valued_detectors_fire_after_a_mean_shift_on_a_column(detector):
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=1000), rng.normal(loc=3.0, size=1000)]
    params = {"k": 50, "tau": 1.5} if detector == "PerformanceTrigger" else None
    d = RiverDetector(detector, params=params, statistic="x")
    events = d.update(np.abs(x) if detector == "PerformanceTrigger" else x, offsets=np.arange(2000),
                      stream_id="s")
    assert events and all(e.detector == detector and e.statistic == "x" for e in events)
    first = min(e.offset for e in events)
    assert 1000 <= first < 1300, first


@pytest.mark.parametrize("detector", BINARY)
def test_binary_detectors_fire_when_the_error_rate_jumps(detector):
    rng = np.random.default_rng(1)
    wrong = np.r_[rng.random(2000) < 0.05, rng.random(2000) < 0.5].astype(float)
    events = RiverDetector(detector, statistic="error").update(wrong, offsets=np.arange(4000), stream_id="s")
    # River's DDM/EDDM may raise an early false alarm on a stationary 5 % error rate; the jump is caught
    assert any(2000 <= e.offset < 2600 for e in events), [e.offset for e in events][:8]


@pytest.mark.parametrize("detector", ["ADWIN", "PageHinkley", "KSWIN"])
def test_detector_on_a_learners_error_and_on_a_feature_in_one_pipeline(detector):
    from tideflow.stream.checks import check_stream

    # at offset 2000 the features' mean jumps by 3 sd and the relation to y flips
    batches = check_stream("regression", 20, seed=3, features=("x0", "x1"), batch_size=200)
    src = tf.MemorySource(batches, tf.Schema({"x0": "float64", "x1": "float64", "y": "float64"}, target="y"))
    p = (tf.Pipeline("det").source(src).validate()
         .detect(DetectDrift(on="x0", detector=detector, name="feature_watch"))
         .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()), name="lin",
                detector=detector))
    result = p.run(runner="local", tracking=False, progress=False)
    on_error = [e for e in result.drift_events if e.step == "lin"]
    assert on_error and {e.statistic for e in on_error} == {"error"}
    assert any(2000 <= e.offset < 2600 for e in on_error), [e.offset for e in on_error]
    on_feature = [e for e in result.drift_events if e.step == "feature_watch"]
    assert on_feature and {(e.detector, e.statistic) for e in on_feature} == {(detector, "x0")}
    assert any(2000 <= e.offset < 2300 for e in on_feature), [e.offset for e in on_feature]


@pytest.mark.parametrize("detector", ["ADWIN", "PageHinkley", "DDM"])
def test_nulls_and_nan_are_skipped_and_counted_not_fatal_to_the_detector(detector, caplog):
    rng = np.random.default_rng(2)
    if detector == "DDM":
        x = np.r_[rng.random(2000) < 0.05, rng.random(2000) < 0.5].astype(float)
        x[[5, 2500]] = 0.5  # not a 0/1 error
    else:
        x = np.r_[rng.normal(size=2000), rng.normal(loc=3.0, size=2000)]
    x[[3, 10, 2100]] = np.nan
    x[11] = np.inf
    d = RiverDetector(detector, statistic="x")
    events = d.update(x, offsets=np.arange(4000), stream_id="s")
    assert d.skipped == (6 if detector == "DDM" else 4)
    said = [r.getMessage() for r in caplog.records if "skipping values" in r.getMessage()]
    assert len(said) == 1 and "first at offset 3" in said[0]  # said once, where it started
    assert any(2000 <= e.offset < 2600 for e in events), [e.offset for e in events][:8]
    assert all(np.isfinite(x[e.offset]) for e in events)
    again = RiverDetector(detector, statistic="x")
    again.restore(d.snapshot())
    assert again.skipped == d.skipped


def test_a_binary_detector_on_a_regression_error_is_refused_when_the_graph_is_validated():
    from tideflow.pipelines.graph import GraphError

    def graph(detector):
        return tf.Pipeline("p").source(tf.SyntheticSource("friedman-drift", n=100)).learn(
            tf.RiverStrategy(linear_model.LinearRegression()), name="lin", detector=detector).build()

    with pytest.raises(GraphError, match="learn step 'lin': DDM watches a 0/1 error"):
        graph("DDM").validate()
    with pytest.raises(GraphError, match="unknown River drift detector"):
        graph("NoSuchDetector").validate()
    graph("ADWIN").validate()
