"""The linkload comparison's scoring: segments and time to convergence, on errors we construct."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tideflow.pipelines.ready.linkload import PROTOCOL, build, score_run, time_to_convergence


def _ape(recovery_steps, n=2304, failure=1728, level=5.0, spike=25.0, seed=0):
    rng = np.random.default_rng(seed)
    ape = level + rng.normal(0, 0.5, n).clip(-2, 2)
    if recovery_steps is None:
        ape[failure:] = spike
    else:
        ape[failure:failure + recovery_steps] = spike
    return ape


@pytest.mark.parametrize("recovery", [0, 10, 50, 200])
def test_time_to_convergence_follows_the_recovery(recovery):
    ttc = time_to_convergence(_ape(recovery), failure=1728, eval_start=PROTOCOL["pretrain_steps"])
    # the 24-step rolling mean needs up to ~24 steps after the errors fall back to clear the spike
    assert ttc is not None and recovery <= ttc <= recovery + PROTOCOL["rolling"]


def test_never_converging_is_none():
    assert time_to_convergence(_ape(None), failure=1728, eval_start=PROTOCOL["pretrain_steps"]) is None


def test_a_relapse_within_the_hold_period_delays_convergence():
    ape = _ape(30)
    ape[1728 + 80: 1728 + 110] = 25.0  # better for a while, then bad again
    ttc = time_to_convergence(ape, failure=1728, eval_start=PROTOCOL["pretrain_steps"])
    assert ttc is not None and ttc >= 110


def test_score_run_segments():
    n, failure = 2304, 1728
    truth = np.full(n, 100.0)
    pred = truth.copy()
    pred[failure:failure + 96] = 150.0  # 50 % off on the first day only
    result = SimpleNamespace(
        predictions={"m": {"offset": np.arange(n), "prediction": pred, "truth": truth}},
        summary={"m": {"fits": 3, "train_seconds": 1.5, "error_drift_events": 2}},
    )
    s = score_run(result, {"failure_offset": failure})["m"]
    assert s["mape_before"] == 0 and s["mape_day1"] == pytest.approx(50.0) and s["mape_after"] == 0
    assert s["rmse_day1"] == pytest.approx(50.0)
    assert s["refits"] == 2 and s["ttc_steps"] is not None and 96 <= s["ttc_steps"] <= 96 + 24


def test_default_pipeline_shape():
    graph = build().build()
    assert [s.name for s in graph.learners] == ["lnn_cfc", "il_b96", "hybrid_cfc", "persistence"]
    assert graph.step("hybrid_cfc").detector == "ADWIN"
    full = build(set="full").build()
    assert len(full.learners) == 9
    with pytest.raises(ValueError, match="unknown strategy set"):
        build(set="nope")
