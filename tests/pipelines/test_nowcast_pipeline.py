"""The nowcast pipeline on the real weather feed: one run, its scores, drift events, MLflow and the plot."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tideflow.connectors.weather import WeatherSource
from tideflow.pipelines.ready import load_pipeline
from tideflow.pipelines.ready.nowcast import (CONFIGS, REFERENCES, build, markdown_table, plot_forecasts, score_run,
                                              summary_table)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """JFK wind speed, 30 days, a 300-row window: the first fit after ~12 days, then ~18 days scored."""
    folder = tmp_path_factory.mktemp("nowcast")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    source = WeatherSource("JFK", target="wind_speed", neighbours=True, batch_hours=3, hours=720)
    pipeline = build(source, target="wind_speed", model="gbm", window=300)
    result = pipeline.run(runner="local", tracking_uri=uri, progress=False, keep_predictions=True,
                          output_dir=str(folder / "run"))
    for reporter in pipeline.reporters:
        reporter(result)
    return result, uri


def test_every_strategy_is_scored_on_the_same_matured_forecasts(tracked_run):
    result, _ = tracked_run
    scores = score_run(result)
    assert set(scores) == set(CONFIGS + REFERENCES)
    counts = {name: r["scored"] for name, r in scores.items()}
    assert len(set(counts.values())) == 1 and counts["fixed"] > 6 * 300, counts
    for name, r in scores.items():
        assert all(m is not None and m > 0 for m in r["mae_h"]), name
    # the models beat persistence at six hours (wind speed changes a lot in six hours)
    assert scores["fixed"]["mae_h"][5] < scores["persistence"]["mae_h"][5]


def test_compute_accounting_orders_the_configurations(tracked_run):
    result, _ = tracked_run
    s = score_run(result)
    # fixed re-fits every 3-hour batch once ready, on 300 rows each
    assert s["fixed"]["fits"] >= 100 and s["fixed"]["train_rows"] == 300 * s["fixed"]["fits"]
    assert s["vh"]["fits"] == s["fixed"]["fits"] and s["vh"]["train_rows"] < s["fixed"]["train_rows"]
    assert 1 <= s["trigger"]["fits"] < s["fixed"]["fits"] // 2
    assert s["trigger"]["fits"] == s["trigger"]["triggers"] + 1  # the first fit, then one per trigger
    assert s["both"]["train_rows"] < s["trigger"]["train_rows"] or s["both"]["fits"] != s["trigger"]["fits"]
    assert s["persistence"]["fits"] == 0 and s["persistence"]["train_rows"] == 0
    assert s["trigger"]["ec_rows_rel"] == pytest.approx(s["trigger"]["mae_rel"] * s["trigger"]["rows_rel"])


def test_drift_events_are_logged_to_mlflow_and_drawn(tracked_run):
    result, uri = tracked_run
    events = [e for e in result.drift_events if e.step == "trigger"]
    assert events and {e.detector for e in events} == {"PerformanceTrigger"}
    assert {e.statistic for e in events} == {"error[JFK]"}
    client = MlflowClient(uri)
    children = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    by_name = {c.info.run_name: c for c in children}
    trig = by_name["trigger"].info.run_id
    logged = client.get_metric_history(trig, "drift_offset")
    assert sorted(int(m.value) for m in logged) == sorted(e.offset for e in events)
    rows = client.get_metric_history(by_name["fixed"].info.run_id, "cum_train_rows")
    assert max(m.value for m in rows) == score_run(result)["fixed"]["train_rows"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"summary.json", "nowcast.png", "nowcast_scores.json"} <= artifacts
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert any(e["detector"] == "PerformanceTrigger" and e["statistic"] == "error[JFK]"
               for e in summary["drift_events"])
    assert (result.output_dir / "nowcast.png").stat().st_size > 10_000
    # every trigger is drawn on the plot (all of them fire after the first fit, where it starts)
    source = WeatherSource("JFK", target="wind_speed", neighbours=True, batch_hours=3, hours=720)
    _, drawn = plot_forecasts(result, source, result.output_dir / "again.png", target="wind_speed", start_row=300)
    want = {(e.step, e.offset) for e in result.drift_events if e.step in ("trigger", "both")}
    assert want and set(drawn) == want


def test_markdown_table_marks_the_bands(tracked_run):
    result, _ = tracked_run
    doc = {"protocol": {"stations": ["JFK"], "horizons": 6, "batch_hours": 3, "window": 300, "eval_hours": 400},
           "seconds": 60.0, "runs": [{"station": "JFK", "target": "wind_speed", "model": "gbm",
                                      "scores": score_run(result)}]}
    text = markdown_table(doc)
    assert text.count("| gbm | JFK wind_speed |") == 6
    assert "| trigger |" in text and ("| yes |" in text or "| no |" in text)
    # per-horizon MAE in the table, and the README's range table printed under it
    fixed = score_run(result)["fixed"]
    assert "/".join(format(m, ".2f") for m in fixed["mae_h"]) in text


def test_summary_table_gives_ranges_over_the_stations(tracked_run):
    import copy

    result, _ = tracked_run
    scores = score_run(result)
    other = copy.deepcopy(scores)
    other["trigger"]["mae_rel"] = scores["trigger"]["mae_rel"] + 0.10  # a second station, 10 points worse
    doc = {"runs": [{"station": "JFK", "target": "wind_speed", "model": "gbm", "scores": scores},
                    {"station": "LGA", "target": "wind_speed", "model": "gbm", "scores": other}]}
    row = [line for line in summary_table(doc).splitlines() if line.startswith("| gbm | wind_speed |")]
    assert len(row) == 1
    lo, hi = sorted([scores["trigger"]["mae_rel"], other["trigger"]["mae_rel"]])
    want = f"{100 * (lo - 1):+.0f}..{100 * (hi - 1):+.0f} %"
    assert f"| {want} / " in row[0], row[0]


def test_ready_pipeline_by_name_validates_and_refuses_unknown_models():
    p = load_pipeline("nowcast", model="mlp", target="temp", hours=48)
    graph = p.build()
    assert [s.name for s in graph.learners] == CONFIGS + REFERENCES
    assert "lookback_temp" in graph.validate().fields
    with pytest.raises(ValueError, match="unknown nowcast model"):
        load_pipeline("nowcast", model="xgb")


def test_age_triggers_counts_fires_exactly_max_age_apart():
    from tideflow.pipelines.ready.nowcast import PROTOCOL, age_triggers

    age = PROTOCOL["trigger"]["max_age"]
    events = [{"step": "trigger", "offset": o} for o in (1250, 1298, 1298 + age, 1298 + 2 * age, 1298 + 2 * age + 50)]
    events.append({"step": "both", "offset": 5})
    assert age_triggers({"drift_events": events}, "trigger") == 2
    assert age_triggers({"drift_events": events}, "both") == 0
