"""What a user with their own data hits: no row left out in silence, predictions out, pipeline
options from the command line, ready pipelines on another source, one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from river import linear_model

import tideflow as tf
from tideflow.strategies.base import StepReport

# the test's strategy classes travel to the Ray workers by value (they cannot import this file)
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = tf.Schema({"x": "float64", "y": "float64"}, target="y")


def _batches(n: int = 6, rows: int = 50) -> list[tf.Batch]:
    rng = np.random.default_rng(0)
    return [tf.Batch.from_pydict({"x": (x := rng.normal(size=rows)), "y": 2 * x + rng.normal(0, 0.1, rows)},
                                 stream_id="s", first_offset=i * rows) for i in range(n)]


class Picky(tf.RiverStrategy):
    """Learns only rows with x > -1; reports the rest as skipped."""

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return tf.RiverStrategy._unit_test_params()

    def learn(self, batch: tf.Batch) -> StepReport:
        keep = np.asarray(batch.column("x")) > -1 if len(batch) else np.zeros(0, bool)
        report = super().learn(batch.filter(keep))
        report.samples = len(batch)
        if (~keep).any():
            report.skipped["x_too_small"] = int((~keep).sum())
        return report


def test_rows_a_strategy_cannot_use_are_counted_and_said(caplog, tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with caplog.at_level(logging.WARNING, logger="tideflow"):
        r = (tf.Pipeline("picky").source(tf.MemorySource(_batches(), SCHEMA))
             .learn(Picky(linear_model.LinearRegression()), name="p")
             .run(tracking_uri=uri, experiment="picky", progress=False))
    expected = int(sum((np.asarray(b.column("x")) <= -1).sum() for b in _batches()))
    assert expected > 0 and r.summary["p"]["skipped_rows"] == {"x_too_small": expected}
    warned = [m for m in caplog.messages if "could not use" in m]
    assert len(warned) == 1 and "x_too_small" in warned[0]  # once, not once per batch
    from mlflow import MlflowClient

    child = [c for c in MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("picky").experiment_id]) if c.info.run_name == "p"][0]
    assert child.data.metrics["final_skipped.x_too_small"] == expected


class Fragile(tf.RiverStrategy):
    """Fails to predict the batch that starts at offset 100."""

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return tf.RiverStrategy._unit_test_params()

    def predict(self, batch: tf.Batch) -> Any:
        if len(batch) and batch.first_offset == 100:
            raise RuntimeError("boom")
        return super().predict(batch)


def test_a_run_that_scored_fewer_rows_than_it_read_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="tideflow"):
        r = (tf.Pipeline("fragile").source(tf.MemorySource(_batches(), SCHEMA))
             .learn(Fragile(linear_model.LinearRegression()), name="f")
             .run(tracking=False, progress=False))
    assert r.summary["f"]["rows_scored"] == 250 and r.summary["f"]["shortfall"] == 50
    assert any("scored 250 of the 300 rows" in m and "1 failed batch step" in m for m in caplog.messages)


def test_rows_without_a_target_are_left_out_of_the_error_and_counted(caplog, ray_session):
    """A regression row whose target is null or NaN cannot be scored: before, one such row made
    the run's MAE, RMSE and MAPE NaN. Now it is predicted, left out of every sum, counted as
    ``rows_unscored`` and said; the rest score as a stream without those rows would."""
    schema = tf.Schema({"x": "float64", "y": "float64"}, target="y", nullable=("y",))
    full = _batches()
    gaps = {3, 70, 71, 140, 299}  # offsets whose target is missing: null, and NaN at 140
    batches = []
    for b in full:
        y = [None if o in gaps and o != 140 else (float("nan") if o == 140 else v)
             for o, v in zip(b.offsets.tolist(), b.column("y").to_pylist())]
        batches.append(tf.Batch.from_pydict({"x": b.column("x").to_pylist(), "y": y}, stream_id="s",
                                            first_offset=int(b.first_offset)))
    runs = {}
    with caplog.at_level(logging.WARNING, logger="tideflow"):
        for runner in ("local", "ray"):
            runs[runner] = (tf.Pipeline("gaps").source(tf.MemorySource(batches, schema))
                            .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="r")
                            .run(runner=runner, tracking=False, progress=False, keep_predictions=True))
    s = runs["local"].summary["r"]
    assert s["rows_unscored"] == len(gaps) and s["rows_scored"] == 300 - len(gaps)
    assert np.isfinite(s["mae"]) and np.isfinite(s["rmse"]) and np.isfinite(s["mape"])
    # the MAE over the rows that have a target, from the run's own predictions
    kept = runs["local"].predictions["r"]
    known = [(p, t) for o, p, t in zip(kept["offset"], kept["prediction"], kept["truth"]) if o not in gaps]
    assert len(kept["offset"]) == 300  # every row predicted, those without a target too
    assert len(known) == 300 - len(gaps)
    assert s["mae"] == pytest.approx(np.mean([abs(p - t) for p, t in known]), rel=1e-12)
    assert any("5 predicted without a target to score against" in m for m in caplog.messages)
    ray_s = runs["ray"].summary["r"]
    assert {k: ray_s[k] for k in ("rows_scored", "rows_unscored", "mae", "rmse")} == \
        {k: s[k] for k in ("rows_scored", "rows_unscored", "mae", "rmse")}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_predictions_go_to_a_file_one_row_per_scored_row(fmt, tmp_path, ray_session):
    schema = tf.Schema({"x": "float64", "k": "string", "y": "float64"}, target="y", key="k")
    rows = [tf.Batch.from_pydict({"x": b.column("x"), "k": ["a", "b"] * 25, "y": b.column("y")},
                                 stream_id="s", first_offset=b.first_offset) for b in _batches()]

    def run(runner: str, path: Any) -> tf.RunResult:
        return (tf.Pipeline("preds").source(tf.MemorySource(rows, schema)).validate()
                .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="lin", route=tf.Keyed("k"))
                .learn(Fragile(linear_model.LinearRegression()), name="fragile")
                .observe(tf.PredictionSink(path))
                .run(runner=runner, tracking=False, progress=False))

    local = run("local", tmp_path / f"local.{fmt}")
    ray = run("ray", tmp_path / f"ray.{fmt}")
    assert local.metrics["prediction_sink"]["rows"] == 300
    if fmt == "parquet":
        a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    else:
        import pyarrow.csv as pcsv

        a, b = pcsv.read_csv(tmp_path / "local.csv"), pcsv.read_csv(tmp_path / "ray.csv")
    assert a.equals(b)
    assert a.column_names == ["offset", "key", "target", "pred_lin", "pred_fragile"]
    assert a.column("offset").to_pylist() == list(range(300))
    # the batch the fragile step failed on has no prediction of it, the other step's are there
    fragile = a.column("pred_fragile").to_pylist()
    assert all(v is None for v in fragile[100:150]) and all(v is not None for v in fragile[150:])
    assert a.column("pred_lin").null_count == 0
    assert local.predictions == {}  # the sink streams them; the result does not hold them


def _cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """The command, in this process (what `tideflow ARGS` runs): exit status, stdout, stderr."""
    from tideflow.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = tmp_path / "s.arrow"
    assert _cli(["record", "sea-drift:n=2000,batch_size=500", "-o", str(rec), "--no-progress"], capsys)[0] == 0
    bad = tmp_path / "truncated.arrow"
    bad.write_bytes(rec.read_bytes()[: len(rec.read_bytes()) // 2])
    (tmp_path / "broken.py").write_text("def build(source=None:\n    pass\n")
    cases = [
        ["replay", str(bad), "--pipeline", "drift", "--runner", "local", "--no-tracking", "--no-progress"],
        ["record", "sea-drift:n=abc,batch_size=5", "-o", str(tmp_path / "x.arrow")],
        ["replay", str(rec), "--pipeline", str(tmp_path / "broken.py"), "--runner", "local", "--no-tracking"],
        ["run", "drift", "--set", "nope=1", "--runner", "local", "--no-tracking"],
        ["replay", str(rec), "--pipeline", "drift", "--set", "n=10", "--runner", "local", "--no-tracking"],
    ]
    for args in cases:
        code, _, err = _cli(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2, (args, err[-2000:])
        assert "Traceback" not in err and lines[-1].startswith("tideflow: error: "), (args, err)
        assert len([line for line in lines if line.startswith("tideflow: error")]) == 1
    assert "broken.py:1" in _cli(cases[2], capsys)[2]
    with pytest.raises(ValueError, match="unknown option"):  # --debug: the exception, with its traceback
        _cli(["--debug", *cases[3]], capsys)


def test_pipeline_options_reach_source_and_strategies(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, show, _ = _cli(["show", "drift", "--set", "seed=7", "--set", "n=1000"], capsys)
    assert code == 0 and "seed=7" in show and "n=1000" in show and "options (--set key=value):" in show
    assert "adwin_x0 -> on_drift" in show  # the routing of drift events
    code, out, err = _cli(["run", "drift", "--set", "n=1000", "--set", "batch_size=250", "--runner", "local",
                           "--no-tracking", "--no-progress", "--json", "s.json"], capsys)
    import json

    doc = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and doc["rows"] == 1000 and doc["batches"] == 4, err[-500:]


def test_nowcast_takes_a_source_of_its_own(tmp_path):
    """Another table (hourly, two sensors, other column names): its target role and its numeric
    columns are used; weather-feed options are refused."""
    from tideflow.pipelines.ready import nowcast

    hours = 150
    t = np.arange(hours, dtype="int64") * 3600
    rng = np.random.default_rng(2)
    cols: dict[str, list[Any]] = {"when": [], "sensor": [], "level": [], "rain": [], "flow": []}
    for sensor in ("up", "down"):
        level = np.cumsum(rng.normal(0, 0.3, hours)) + 10 * np.sin(np.arange(hours) * 2 * np.pi / 24)
        cols["when"] += list(t)
        cols["sensor"] += [sensor] * hours
        cols["level"] += list(level)
        cols["rain"] += list(rng.gamma(1, 1, hours))
        cols["flow"] += list(level * 2 + rng.normal(0, 1, hours))
    order = np.argsort(np.asarray(cols["when"]), kind="stable")
    import pyarrow as pa

    data = {k: pa.array([v[i] for i in order]) for k, v in cols.items()}
    data["when"] = pa.array([v * 1_000_000 for v in data["when"].to_pylist()], type=pa.timestamp("us"))
    schema = tf.Schema({"when": "timestamp[us]", "sensor": "string", "level": "float64", "rain": "float64",
                        "flow": "float64"}, target="flow", key="sensor", time="when")
    batches = [tf.Batch.from_pydict({k: v.slice(i, 12) for k, v in data.items()}, stream_id="river", first_offset=i)
               for i in range(0, 2 * hours, 12)]
    src = tf.MemorySource(batches, schema)
    p = nowcast.build(src, model="gbm", window=48)
    learn = p.build().step("fixed").op
    assert learn.target == "flow" and learn.features == ["level", "rain"]
    with pytest.raises(ValueError, match="stations=, hours= and implausible= choose the weather feed"):
        nowcast.build(src, stations="JFK")
    r = p.run(tracking=False, progress=False)
    scores = nowcast.score_run(r)
    assert scores["fixed"]["scored"] > 0 and scores["fixed"]["mae"] is not None


def test_a_second_run_of_a_source_read_to_its_end_says_why_it_got_no_rows(caplog):
    src = tf.MemorySource(_batches(), SCHEMA)
    p = tf.Pipeline("twice").source(src).learn(tf.RiverStrategy(linear_model.LinearRegression()), name="r")
    assert p.run(tracking=False, progress=False).summary["r"]["rows_scored"] == 300
    with caplog.at_level(logging.WARNING, logger="tideflow"):
        again = p.run(tracking=False, progress=False)
    assert again.summary["r"]["rows_scored"] == 0  # a source keeps its position, as a broker's does
    assert any("source is at its end (position 300)" in m and "seek(0)" in m for m in caplog.messages)
    src.seek(0)
    assert p.run(tracking=False, progress=False).summary["r"]["rows_scored"] == 300


def test_one_row_batches_with_a_missing_target_are_counted_not_fatal():
    """A one-row batch whose only target is null has a column Arrow types null (its values come
    out as None): scoring it stopped the run with a TypeError. It is now counted as unscored."""
    y = [None if i % 9 == 0 else float(i) for i in range(40)]
    batches = [tf.Batch.from_pydict({"x": [float(i)], "y": [y[i]]}, stream_id="s", first_offset=i) for i in range(40)]
    schema = tf.Schema({"x": "float64", "y": "float64"}, target="y", nullable=("y",))
    r = (tf.Pipeline("one").source(tf.MemorySource(batches, schema))
         .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="r").run(tracking=False, progress=False))
    s = r.summary["r"]
    assert s["rows_unscored"] == 5 and s["rows_scored"] == 35 and np.isfinite(s["mae"]) and s["errors"] == 0
