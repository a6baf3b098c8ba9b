"""The linkload comparison's scoring: segments and time to convergence, on errors we construct."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tideflow.connectors.linkload import LinkLoadSource
from tideflow.pipelines.metrics.convergence import TimeToConvergence
from tideflow.pipelines.ready.linkload import (
    PROTOCOL,
    build,
    compare,
    report,
    score_run,
    time_to_convergence,
    ttc_reason,
)

SPD = PROTOCOL["steps_per_day"]


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


def test_converging_with_less_than_the_hold_window_left_is_not_convergence():
    hold = PROTOCOL["hold_steps"]
    ape = _ape(60)  # back in band some 60-84 steps after the failure at 1728
    full = ttc_reason(ape, 1728, PROTOCOL["pretrain_steps"])
    assert full[0] is not None and full[1] is None
    k = 1728 + full[0]
    # the stream ends less than a hold window after k: in band to the end, yet not converged
    cut = ape[: k + hold - 10]
    assert ttc_reason(cut, 1728, PROTOCOL["pretrain_steps"]) == (None, "stream ended")
    assert time_to_convergence(cut, 1728, PROTOCOL["pretrain_steps"]) is None
    assert ttc_reason(ape[: k + hold], 1728, PROTOCOL["pretrain_steps"]) == full  # exactly enough
    # out of band at the end: never, not "cut short"
    assert ttc_reason(_ape(None)[:1800], 1728, PROTOCOL["pretrain_steps"]) == (None, "never")


def test_time_to_convergence_of_a_run_that_starts_after_a_seek():
    # a replay that seeked to offset 100 scores offsets 100, 101, ...: the rule still applies
    ape = _ape(10)
    truth = np.full(len(ape), 100.0)
    arrays = {"offset": np.arange(100, len(ape)), "truth": truth[100:], "prediction": 100 + ape[100:]}
    obs = TimeToConvergence(1728, eval_start=PROTOCOL["pretrain_steps"], rolling=PROTOCOL["rolling"],
                            quantile=PROTOCOL["reference_quantile"], tolerance=PROTOCOL["tolerance"],
                            hold=PROTOCOL["hold_steps"])
    obs.on_start(None)
    obs.on_finish(SimpleNamespace(predictions={"m": arrays}))
    steps, reason = ttc_reason(ape, 1728, PROTOCOL["pretrain_steps"])
    assert obs.result() == {"m": {"steps": steps, "reason": reason}} and steps is not None


def _spy_on_plots(monkeypatch) -> list[dict[str, object]]:
    """What each figure showed (title, legend), read just before the pipeline closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen: list[dict[str, object]] = []
    close = plt.close

    def spy(fig=None):
        ax = fig.axes[0]
        seen.append({"title": ax.get_title(), "legend": [t.get_text() for t in ax.get_legend().get_texts()]})
        close(fig)

    monkeypatch.setattr(plt, "close", spy)
    return seen


def test_node_failure_names_what_failed_in_table_and_plot(tmp_path, capsys, monkeypatch):
    seen = _spy_on_plots(monkeypatch)
    source = LinkLoadSource("abilene", days=4, batch_steps=SPD, failures="node:ATLAng@3;link:7-9@3.5")
    pipeline = build(source, strategies="persistence")
    result = pipeline.run(runner="local", tracking=False, progress=False, output_dir=str(tmp_path))
    report(result, source)
    out = capsys.readouterr().out
    failed = "node ATLAng at day 3, link 7-9 (LOSAng-SNVAng) at day 3.5"
    assert f"failed {failed}" in out and "None" not in out
    assert f"failure of {failed}" in seen[0]["legend"] and "ATLAng" in seen[0]["title"]
    # this short stream fails before the protocol scores (day 14): the table says so
    assert "comes before scoring starts" in out


def test_an_early_stop_says_why_the_columns_after_the_failure_are_empty(tmp_path, capsys):
    pipeline = build(strategies="persistence", batch_steps=SPD)  # the protocol's stream
    result = pipeline.run(runner="local", tracking=False, progress=False, output_dir=str(tmp_path),
                          max_batches=16)  # 16 days: scored from day 14, the failure at day 18
    scores = pipeline.reporters[0](result)
    out = capsys.readouterr().out
    row = scores["persistence"]
    assert row["mape_before"] > 0 and np.isnan(row["mape_after"])
    assert row["ttc_steps"] is None and row["ttc_reason"] == "event not reached"
    assert row["reason"].startswith("the run stopped after step 1536 of 2304, before the failure at step 1728")
    assert "note: the run stopped after step 1536" in out


def test_build_refuses_unknown_options_and_options_that_cannot_apply():
    with pytest.raises(ValueError, match=r"unknown linkload option\(s\) topolgy \(did you mean topology\?\)"):
        build(topolgy="polska")
    source = LinkLoadSource("abilene", scenario="none", days=1)
    for option in ({"topology": "polska"}, {"failures": "node:ATLAng@18"}, {"scenario": "moderate"}):
        with pytest.raises(ValueError, match="cannot apply"):
            build(source, **option)
    with pytest.raises(ValueError, match="unknown: nope"):
        build(source, strategies="lnn_cfc,nope")
    with pytest.raises(ValueError, match="set 'default'"):
        build(source, set="default", strategies="lnn_ltc")  # not in the default set
    with pytest.raises(ValueError, match="fail at a day in \\(14, 24\\)"):
        build(failures="node:ATLAng@5")  # before the protocol scores anything
    with pytest.raises(ValueError, match="closest: ATLAng"):  # checked before any run starts
        compare(topologies=["abilene"], scenarios=["drastic"], seeds=[0], failures="node:Atlanta@18")
    with pytest.raises(ValueError, match=r"topology \(say topologies=\[...\]\)"):
        compare(topologies=["abilene"], scenarios=["drastic"], seeds=[0], topology="polska")


def test_seed_reaches_the_strategies_and_the_stream():
    def seeds(pipeline):
        graph = pipeline.build()
        return graph.source.op.seed, {s.name: s.op.params()["seed"] for s in graph.learners}

    assert seeds(build(seed=3, strategies="lnn_cfc,il_b96")) == (3, {"lnn_cfc": 3, "il_b96": 3})
    # a source's own seed (`--source linkload:seed=5`) seeds the strategies too
    source = LinkLoadSource("abilene", scenario="none", days=1, seed=5)
    assert seeds(build(source, strategies="lnn_cfc,il_b96")) == (5, {"lnn_cfc": 5, "il_b96": 5})
    assert seeds(build(source, seed=7, strategies="lnn_cfc")) == (5, {"lnn_cfc": 7})
