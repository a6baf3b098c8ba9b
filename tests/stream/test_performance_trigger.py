"""The performance-based retraining trigger: fires on worse matured error, or on age; survives snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from river import linear_model, preprocessing

import tideflow as tf
from tideflow.stream.drift import PerformanceTrigger, RiverDetector


def _feed(trigger, errors):
    fired = []
    for i, e in enumerate(errors):
        trigger.update(e)
        if trigger.drift_detected:
            fired.append(i)
    return fired


def test_stable_noisy_error_does_not_fire_but_a_worse_one_does():
    rng = np.random.default_rng(0)
    stable = 1.0 + 0.1 * rng.standard_normal(500)
    assert _feed(PerformanceTrigger(k=24, tau=1.2), stable) == []
    worse = np.r_[stable, 1.6 + 0.1 * rng.standard_normal(100)]
    fired = _feed(PerformanceTrigger(k=24, tau=1.2), worse)
    assert fired and 500 <= fired[0] < 524  # within one window of the change


def test_max_age_fallback_fires_on_schedule():
    fired = _feed(PerformanceTrigger(k=5, tau=10.0, max_age=50), np.ones(200))
    assert fired == [49, 99, 149, 199]


def test_warmup_errors_are_not_the_reference():
    errors = np.r_[np.full(50, 10.0), np.ones(100), np.full(30, 1.5)]
    assert _feed(PerformanceTrigger(k=10, tau=1.2), errors) == []  # reference 10: nothing is worse
    fired = _feed(PerformanceTrigger(k=10, tau=1.2, warmup=50), errors)
    assert fired and 150 <= fired[0] < 160


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        PerformanceTrigger(k=0)


def test_snapshot_restore_gives_identical_decisions():
    rng = np.random.default_rng(1)
    errors = np.r_[rng.random(300), rng.random(300) * 2]
    a = RiverDetector("PerformanceTrigger", params={"k": 12, "tau": 1.3, "max_age": 400})
    a.update(errors[:250], offsets=np.arange(250), stream_id="s")
    b = RiverDetector("PerformanceTrigger", params={"k": 12, "tau": 1.3, "max_age": 400})
    b.restore(a.snapshot())
    rest = dict(offsets=np.arange(250, 600), stream_id="s")
    assert [e.offset for e in a.update(errors[250:], **rest)] == [e.offset for e in b.update(errors[250:], **rest)]


def test_learn_step_uses_it_on_the_prequential_error():
    # Friedman with a global abrupt drift at 2000: the trigger fires on the error jump
    src = tf.SyntheticSource("friedman-drift", n=4000, batch_size=200, position=2000)
    p = (tf.Pipeline("perf").source(src)
         .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()), name="lin",
                detector="PerformanceTrigger", detector_params={"k": 100, "tau": 1.5, "warmup": 500}))
    result = p.run(runner="local", tracking=False, progress=False)
    offsets = [e.offset for e in result.drift_events if e.detector == "PerformanceTrigger"]
    assert any(2000 <= o < 2400 for o in offsets), offsets
