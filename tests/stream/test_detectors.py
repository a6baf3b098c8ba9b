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


def _cases():
    for det in REAL + BINARY:
        # binary detectors watch a 0/1 column: the classification check stream's label
        kind, on = ("classification", "y") if det in BINARY else ("regression", "x")
        params = {"on": on, "detector": det}
        if det == "PerformanceTrigger":
            params["params"] = {"k": 20, "tau": 1.2}
        for check in yield_operator_checks(DetectDrift, schema_kind=kind, params=params):
            yield pytest.param(check, id=f"{det}-{check.__name__}")


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
    src = tf.SyntheticSource("friedman-drift", n=4000, batch_size=200, position=2000)
    p = (tf.Pipeline("det").source(src).validate()
         .detect(DetectDrift(on="x0", detector=detector, name="feature_watch"))
         .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()), name="lin",
                detector=detector))
    result = p.run(runner="local", tracking=False, progress=False)
    on_error = [e for e in result.drift_events if e.step == "lin"]
    assert on_error and {e.statistic for e in on_error} == {"error"}
    assert any(2000 <= e.offset < 2600 for e in on_error), [e.offset for e in on_error]
