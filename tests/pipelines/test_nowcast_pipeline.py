"""The nowcast pipeline on the real weather feed: one run, its scores, drift events, MLflow and the plot;
a short replay of the shorter fixed windows and the budget rule with their bootstrap intervals."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

import tideflow as tf
from tideflow.connectors.weather import WeatherSource
from tideflow.pipelines.ready import load_pipeline
from tideflow.pipelines.ready.nowcast import (BANDS, CONFIGS, REFERENCES, build, configs, markdown_table,
                                              plot_forecasts, score_run, summary_table)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """JFK wind speed, 30 days, a 300-row window: the first fit after ~12 days, then ~18 days scored
    (the first reading's configurations; the short replay below runs the others)."""
    folder = tmp_path_factory.mktemp("nowcast")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    source = WeatherSource("JFK", target="wind_speed", neighbours=True, batch_hours=3, hours=720)
    pipeline = build(source, target="wind_speed", model="gbm", window=300, configs="vh;trigger;both")
    result = pipeline.run(runner="local", tracking_uri=uri, progress=False, keep_predictions=True,
                          output_dir=str(folder / "run"))
    for reporter in pipeline.reporters:
        reporter(result)
    return result, uri


def test_every_strategy_is_scored_on_the_same_matured_forecasts(tracked_run):
    result, _ = tracked_run
    scores = score_run(result)
    assert list(scores) == ["fixed", "vh", "trigger", "both"] + REFERENCES
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
    # one row per configuration of the detail table, one in each pooled table
    assert text.count("| gbm | JFK wind_speed |") == 6 and text.count("| gbm | wind_speed |") == 2
    assert "| trigger |" in text and ("| yes |" in text or "| no |" in text)
    # per-horizon MAE in the table, and the README's range table printed under it
    fixed = score_run(result)["fixed"]
    assert "/".join(format(m, ".2f") for m in fixed["mae_h"]) in text


def test_summary_table_without_day_errors_gives_ranges_over_the_stations(tracked_run):
    """A result file without day errors (written before the intervals) still tables: the range of
    the stations' point ratios."""
    import copy

    result, _ = tracked_run
    scores = score_run(result)
    other = copy.deepcopy(scores)
    other["trigger"]["mae_rel"] = scores["trigger"]["mae_rel"] + 0.10  # a second station, 10 points worse
    doc = {"runs": [{"station": "JFK", "target": "wind_speed", "model": "gbm", "scores": scores},
                    {"station": "LGA", "target": "wind_speed", "model": "gbm", "scores": other}]}
    rows = [line for line in summary_table(doc).splitlines() if line.startswith("| gbm | wind_speed |")]
    assert len(rows) == 2  # the window rules' table, then the retraining table
    lo, hi = sorted([scores["trigger"]["mae_rel"], other["trigger"]["mae_rel"]])
    want = f"{100 * (lo - 1):+.0f}..{100 * (hi - 1):+.0f} %"
    assert f"| {want} / " in rows[1], rows[1]


def test_ready_pipeline_by_name_validates_and_refuses_unknown_models():
    p = load_pipeline("nowcast", model="mlp", target="temp", hours=48)
    graph = p.build()
    assert [s.name for s in graph.learners] == CONFIGS + REFERENCES
    assert "lookback_temp" in graph.validate().fields
    with pytest.raises(ValueError, match="unknown nowcast model"):
        load_pipeline("nowcast", model="xgb")


def test_the_weather_feed_emits_implausible_values_as_missing_unless_kept():
    """EWR's 1048 mph wind (a recording error) is missing in the feed's rows by default and
    reaches them with ``implausible="keep"``; a source of one's own refuses the weather-feed option."""
    p = load_pipeline("nowcast", model="gbm", stations="EWR", target="wind_speed", hours=1100)
    src = p.build().source.op
    assert src.params()["implausible"] == "missing"
    assert [e["value"] for e in src.metadata()["implausible_values"]] == [pytest.approx(1048.36058)]
    assert max(v for b in src for v in b.column("wind_speed").to_pylist() if v is not None) < 100
    kept = load_pipeline("nowcast", model="gbm", stations="EWR", target="wind_speed", hours=1100,
                         implausible="keep").build().source.op
    assert "implausible" not in kept.params()
    assert max(v for b in kept for v in b.column("wind_speed").to_pylist() if v is not None) > 1000
    with pytest.raises(ValueError, match="implausible"):
        build(tf.MemorySource([], tf.Schema({"t": "float64"}, target="t")), implausible="missing")


def test_age_triggers_counts_fires_exactly_max_age_apart():
    from tideflow.pipelines.ready.nowcast import PROTOCOL, age_triggers

    age = PROTOCOL["trigger"]["max_age"]
    events = [{"step": "trigger", "offset": o} for o in (1250, 1298, 1298 + age, 1298 + 2 * age, 1298 + 2 * age + 50)]
    events.append({"step": "both", "offset": 5})
    assert age_triggers({"drift_events": events}, "trigger", age) == 2
    assert age_triggers({"drift_events": events}, "both", age) == 0


# -- the second reading, the shorter fixed windows and the intervals: a short replay ---------------
SHORT = ["fixed", "fixed80", "fixed100", "vh_budget", "both_budget"]


@pytest.fixture(scope="module")
def short_run():
    """LGA temperature, 400 hours, a 200-row window, the MLP (the cheapest model to fit): the
    first fit on day 9, then about 8 days scored, over 9 day blocks."""
    source = WeatherSource("LGA", target="temp", neighbours=True, batch_hours=3, hours=400)
    pipeline = build(source, target="temp", model="mlp", window=200, configs="fixed80;fixed100;vh_budget;both_budget")
    return pipeline.run(runner="local", tracking=False, progress=False)


def test_shorter_windows_and_the_budget_rule_are_scored_on_the_same_forecasts(short_run):
    s = score_run(short_run)
    assert list(s) == SHORT + REFERENCES  # the shorter windows are named by their rows: 0.4 and 0.5 of 200
    assert len({r["scored"] for r in s.values()}) == 1 and s["fixed"]["scored"] > 6 * 150
    fits = s["fixed"]["fits"]
    # the shorter windows start fitting on the same row as `fixed` (not once they have 80 rows)
    assert s["fixed80"]["fits"] == s["fixed100"]["fits"] == s["vh_budget"]["fits"] == fits
    assert s["fixed80"]["train_rows"] == 80 * fits and s["fixed100"]["train_rows"] == 100 * fits
    # the budget rule's look-back: between the shortest candidate (48) and the window, about 0.4 of it
    assert 48 * fits <= s["vh_budget"]["train_rows"] <= 0.7 * s["fixed"]["train_rows"]
    assert s["both_budget"]["fits"] < fits // 4


def test_day_sums_add_up_to_the_run_and_every_ratio_has_an_interval(short_run):
    import numpy as np

    from tideflow.pipelines.metrics.day_errors import ratio_interval

    days = short_run.metrics["day_errors"]
    s = score_run(short_run)
    assert 8 <= len(days["days"]) <= 10
    assert all(b - a == 1 for a, b in zip(days["days"], days["days"][1:]))  # consecutive UTC days
    for name in SHORT + REFERENCES:
        extra = short_run.summary[name]["extra"]
        err, n = np.asarray(days["steps"][name]["abs_err"]), np.asarray(days["steps"][name]["n"])
        assert n.sum(axis=0).tolist() == [extra[f"n_h{h}"] for h in range(1, 7)], name
        assert np.allclose(err.sum(axis=0), [extra[f"abs_err_h{h}"] for h in range(1, 7)]), name
    for name in SHORT[1:] + REFERENCES:
        r = s[name]
        lo, hi = r["mae_rel_ci"]
        # the bootstrap's point estimate is the table's ratio, inside an interval of some width
        point = ratio_interval(days["steps"][name], days["steps"]["fixed"])[0]
        assert point == pytest.approx(r["mae_rel"], rel=1e-9)
        assert lo <= r["mae_rel"] <= hi and hi - lo > 0.005, (name, lo, hi)
        if name in BANDS:
            assert isinstance(r["band_met"], bool) and isinstance(r["band_met_ci"], bool)
            assert r["band_met"] or not r["band_met_ci"]  # the interval's end is never easier than the point
    # adaptive against fixed shorter windows, paired on the same days
    vs = s["vh_budget"]["vs"]
    assert set(vs) == {"fixed80", "fixed100"}
    for b, v in vs.items():
        assert v["mae_rel"] == pytest.approx(s["vh_budget"]["mae"] / s[b]["mae"], rel=1e-9)
        assert v["ci"][0] <= v["mae_rel"] <= v["ci"][1]


def test_pooled_tables_resample_the_same_days_of_every_station(short_run):
    """Two stations with the same errors pool to the same ratio and interval as one; the results
    page carries both and the runs' CPU time, and the JSON keeps number lists on one line."""
    import copy
    import json

    from tideflow.pipelines.ready.nowcast import dumps, pooled

    s = score_run(short_run)
    days = short_run.metrics["day_errors"]
    run = {"station": "LGA", "target": "temp", "model": "mlp", "scores": s, "day_errors": days, "cpu_seconds": 120.0}
    twin = {**copy.deepcopy(run), "station": "JFK", "cpu_seconds": 180.0}
    both = pooled([run, twin], "vh_budget")
    assert both["mae_rel"] == pytest.approx(s["vh_budget"]["mae_rel"], rel=1e-9)
    assert both["mae_rel_ci"] == pytest.approx(s["vh_budget"]["mae_rel_ci"], rel=1e-9)
    assert both["rows_rel"] == pytest.approx(s["vh_budget"]["rows_rel"])
    doc = {"protocol": {"stations": ["JFK", "LGA"], "horizons": 6, "batch_hours": 3, "window": 200,
                        "eval_hours": 160, "bootstrap": {"draws": 2000, "level": 0.95, "seed": 0}},
           "seconds": 60.0, "runs": [twin, run]}
    text = markdown_table(doc)
    lo, hi = both["mae_rel_ci"]
    cell = f"{100 * (both['mae_rel'] - 1):+.0f} % [{100 * (lo - 1):+.0f}, {100 * (hi - 1):+.0f}]"
    pooled_rows = [line for line in text.splitlines() if line.startswith("| mlp | temp |")]
    assert len(pooled_rows) == 2 and cell in pooled_rows[0], pooled_rows
    assert "| `vh_budget` vs `fixed80` |" in text and "`vh_budget` vs `fixed100`: MAE [CI]" in text
    # the header gives the runs' own CPU time next to the wall time other jobs stretch
    assert "CPU time of the 2 runs' processes: 5 min in all (2-3 min per run)" in text.splitlines()[0]
    assert "implausible" not in text.splitlines()[0]  # no weather feed named in the protocol
    # the header says how the weather feed emitted values outside their physical range
    missing = markdown_table({**doc, "protocol": {**doc["protocol"], "implausible": "missing"}})
    assert "emitted as missing (the default;" in missing.splitlines()[0]
    kept = markdown_table({**doc, "protocol": {**doc["protocol"], "implausible": "keep"}})
    assert "emitted as they are (`--set implausible=keep`)" in kept.splitlines()[0]
    dumped = dumps(doc)
    assert json.loads(dumped) == json.loads(json.dumps(doc))
    assert "[" + ", ".join(str(x) for x in days["steps"]["fixed"]["n"][0]) + "]" in dumped


def test_ratio_interval_pairs_the_days():
    import numpy as np

    from tideflow.pipelines.metrics.day_errors import ratio_interval

    rng = np.random.default_rng(0)
    n = rng.integers(10, 30, size=(20, 3)).astype(float)
    weather = rng.gamma(2.0, 1.0, size=(20, 1))  # some days are far harder than others, for both
    b = {"abs_err": n * weather, "n": n}
    same = {"abs_err": 1.1 * n * weather, "n": n}
    assert ratio_interval(same, b) == pytest.approx((1.1, 1.1, 1.1))
    noisy = {"abs_err": 1.1 * n * weather * rng.normal(1.0, 0.05, size=(20, 3)), "n": n}
    point, lo, hi = ratio_interval(noisy, b)
    assert lo < 1.1 < hi and lo > 1.0 and hi - lo < 0.1  # the shared weather cancels in the pairing
    # the same draws written out: each draw's day multiplicities weight both configurations' sums
    pick = np.random.default_rng(0).integers(0, 20, size=(2000, 20))
    ratios = []
    for row in pick:
        per = [np.mean([noisy["abs_err"][row, h].sum() / n[row, h].sum() for h in range(3)]),
               np.mean([b["abs_err"][row, h].sum() / n[row, h].sum() for h in range(3)])]
        ratios.append(per[0] / per[1])
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])), rel=1e-12)
    with pytest.raises(ValueError, match="same days"):
        ratio_interval(noisy, {"abs_err": n[:5], "n": n[:5]})


def test_day_blocks_follow_the_time_role_or_count_24_rows():
    """Another table (two sensors, integer seconds, starting at 12:00 UTC): with a time role a batch
    goes to the UTC day of its first row; without one, a block is 24 rows of a series."""
    import numpy as np

    import tideflow as tf
    from tideflow.pipelines.metrics.day_errors import DayErrors
    from tideflow.strategies.nowcast import NowcastPersistence

    hours = 96
    start = 12 * 3600  # 1970-01-01 12:00 UTC; batches of 6 hours
    t = np.repeat(start + 3600 * np.arange(hours), 2)
    level = np.sin(np.arange(2 * hours) / 7.0)
    data = {"t": t.astype("int64"), "sensor": ["a", "b"] * hours, "level": level}
    days = {}
    for with_time in (True, False):
        cols = data if with_time else {k: v for k, v in data.items() if k != "t"}
        schema = tf.Schema({k: ("int64" if k == "t" else "string" if k == "sensor" else "float64") for k in cols},
                           target="level", key="sensor", time="t" if with_time else None)
        batches = [tf.Batch.from_pydict({k: v[i:i + 12] for k, v in cols.items()}, first_offset=i)
                   for i in range(0, 2 * hours, 12)]
        obs = DayErrors(2)
        p = (tf.Pipeline("blocks").source(tf.MemorySource(batches, schema))
             .learn(NowcastPersistence(window=2, horizons=2, lags=1), name="p", route=tf.Keyed("sensor")))
        r = p.observe(obs).run(tracking=False, progress=False)
        days[with_time] = r.metrics["day_errors"]
        err = np.asarray(days[with_time]["steps"]["p"]["abs_err"])
        assert err.sum(axis=0) == pytest.approx([r.summary["p"]["extra"][f"abs_err_h{h}"] for h in (1, 2)])
    # 96 hours from 12:00: days 0 (12 h, errors from the second batch on), 1, 2, 3 and 4 (12 h)
    assert days[True]["days"] == [0, 1, 2, 3, 4]
    # without a time: 12 hourly rows of each sensor per batch, blocks of 24 rows: 0..3
    assert days[False]["days"] == [0, 1, 2, 3]


def test_configs_option_picks_the_learn_steps():
    p = load_pipeline("nowcast", model="gbm", target="temp", hours=48, configs="vh_budget;fixed480")
    graph = p.build()
    assert [s.name for s in graph.learners] == ["fixed", "fixed480", "vh_budget"] + REFERENCES
    fields = graph.validate().fields
    assert "lookback_budget_temp" in fields and "lookback_temp" not in fields
    assert graph.step("fixed480").op.window == 480 and graph.step("fixed480").op.min_rows == 1200
    with pytest.raises(ValueError, match="unknown nowcast configuration"):
        load_pipeline("nowcast", hours=48, configs="fixed300")
    assert configs(72) == ["fixed", "fixed29", "fixed36", "vh", "vh_budget", "trigger", "both", "both_budget"]


def test_a_stopped_comparison_keeps_its_finished_runs_and_resumes(tmp_path, monkeypatch):
    """The full comparison runs for a long time on a shared machine: a stop part-way keeps every
    finished run, and ``resume`` runs only the rest, for the same protocol only."""
    import tideflow.pipelines.ready.nowcast as nc

    real, calls = nc._run_one_quietly, []

    def stopped_in_the_second_run(args):
        calls.append(args[:3])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the stop a person gives a long comparison
        return real(args)

    monkeypatch.setattr(nc, "_run_one_quietly", stopped_in_the_second_run)
    out = tmp_path / "nowcast"
    kw = {"models": ["mlp"], "stations": ["LGA", "JFK"], "targets": ["temp"], "hours": 200, "out": out,
          "window": 60, "configs": "fixed"}
    with pytest.raises(KeyboardInterrupt):
        nc.compare(**kw)
    partial = out.with_suffix(".partial.json")
    saved = json.loads(partial.read_text())
    assert [(r["station"], r["model"]) for r in saved["runs"]] == [("LGA", "mlp")]
    assert saved["runs"][0]["cpu_seconds"] > 0 and not out.with_suffix(".json").exists()
    # a file written for another protocol is never mixed in
    other = {"protocol": {**saved["protocol"], "window": 61}, "common": saved["common"]}
    assert nc._reusable(partial, other) == []
    calls.clear()
    doc = nc.compare(**kw, resume="yes")
    assert calls == [("JFK", "temp", "mlp")]  # only the run the stop cut short
    assert [r["station"] for r in doc["runs"]] == ["JFK", "LGA"] and doc["runs"][1] == saved["runs"][0]
    assert doc["seconds"] >= saved["seconds"]
    assert not partial.exists() and "| mlp | LGA temp | fixed |" in out.with_suffix(".md").read_text()
