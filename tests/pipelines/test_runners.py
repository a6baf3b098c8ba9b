"""The local and the Ray runner on recorded streams: identical metrics, quarantine, routing.

Ray tests share one real local Ray per session (the ``ray_session`` fixture).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from mlflow import MlflowClient
from river import linear_model, preprocessing, tree

import tideflow as tf
from tideflow.connectors.recording import RecordingSource, RecordingWriter, record
from tideflow.testing import comparable


@pytest.fixture(scope="module")
def classification_recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "sea.arrow"
    record(tf.SyntheticSource("sea-drift", n=3000, batch_size=250, seed=4, position=1500, width=200), path,
           progress=False)
    return path


@pytest.fixture(scope="module")
def keyed_recording(tmp_path_factory):
    """A regression stream with a `link` key: each link has its own linear relation, which drifts."""
    path = tmp_path_factory.mktemp("rec") / "links.arrow"
    rng = np.random.default_rng(7)
    schema = tf.Schema({"link": "string", "x0": "float64", "x1": "float64", "y": "float64"}, target="y", key="link")
    links = np.array([f"l{i}" for i in range(5)])
    slopes = rng.normal(size=(5, 2))
    offset = 0
    with RecordingWriter(path, schema, stream_id="links") as w:
        for b in range(12):
            n = 200
            which = rng.integers(0, 5, n)
            x = rng.normal(size=(n, 2))
            s = slopes[which] * (1.0 if b < 6 else -1.0)  # the relation flips halfway
            y = (x * s).sum(axis=1) + rng.normal(scale=0.1, size=n)
            w.write(tf.Batch.from_pydict({"link": links[which].tolist(), "x0": x[:, 0], "x1": x[:, 1], "y": y},
                                         stream_id="links", first_offset=offset))
            offset += n
    return path


def _classification_pipeline(path):
    return (tf.Pipeline("cls").source(RecordingSource(path)).validate()
            .detect(tf.DetectDrift(on="x1", detector="PageHinkley"))
            .learn(tf.RiverStrategy(tree.HoeffdingTreeClassifier(grace_period=50)), name="tree", detector="ADWIN")
            .learn(tf.AvalancheStrategy("Naive", n_classes=2, hidden=8, seed=3), name="naive"))


def _keyed_pipeline(path):
    lin = lambda: tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression())  # noqa: E731
    return (tf.Pipeline("links").source(RecordingSource(path)).validate()
            .learn(lin(), name="shared", detector="ADWIN")
            .learn(lin(), name="per_link", route=tf.Keyed("link", actors=2), detector="ADWIN"))


def test_local_and_ray_give_identical_metrics_classification(classification_recording, ray_session):
    local = _classification_pipeline(classification_recording).run(runner="local", tracking=False, progress=False)
    on_ray = _classification_pipeline(classification_recording).run(runner="ray", tracking=False, progress=False)
    assert local.batches == on_ray.batches == 12
    assert comparable(local.per_batch) == comparable(on_ray.per_batch)
    assert local.summary["tree"]["rows_scored"] == 3000
    assert [(e.step, e.offset) for e in local.drift_events] == [(e.step, e.offset) for e in on_ray.drift_events]
    # the learners really learned: far better than chance on SEA
    assert local.summary["tree"]["accuracy"] > 0.8


def test_local_and_ray_give_identical_metrics_keyed(keyed_recording, ray_session):
    local = _keyed_pipeline(keyed_recording).run(runner="local", tracking=False, progress=False,
                                                 keep_predictions=True)
    on_ray = _keyed_pipeline(keyed_recording).run(runner="ray", tracking=False, progress=False,
                                                  keep_predictions=True)
    assert comparable(local.per_batch) == comparable(on_ray.per_batch)
    for name in ("shared", "per_link"):
        mine, theirs = local.predictions[name], on_ray.predictions[name]
        assert mine["offset"].tolist() == list(range(2400)) == theirs["offset"].tolist()
        assert np.array_equal(mine["prediction"], theirs["prediction"])
        # the per-batch MAE is the mean of these very predictions' errors
        first = np.abs(mine["prediction"][:200] - mine["truth"][:200]).mean()
        assert first == pytest.approx(local.per_batch[name][0]["mae"])
    # one model per link fits per-link slopes; one shared model cannot
    assert local.summary["per_link"]["mae"] < 0.7 * local.summary["shared"]["mae"]
    # the flip halfway is caught by the error detector of the per-link models
    assert local.summary["per_link"]["error_drift_events"] >= 1


@pytest.mark.parametrize("fuse", [True, False], ids=["chained", "one-actor-per-step"])
def test_ray_chaining_modes_match_local(classification_recording, ray_session, fuse):
    """One learner: by default the whole graph runs in the source actor; unfused, one actor per step."""
    def one_learner():
        return (tf.Pipeline("solo").source(RecordingSource(classification_recording)).validate()
                .detect(tf.DetectDrift(on="x1", detector="PageHinkley"))
                .learn(tf.RiverStrategy(tree.HoeffdingTreeClassifier(grace_period=50)), name="tree",
                       detector="ADWIN"))
    local = one_learner().run(runner="local", tracking=False, progress=False, keep_predictions=True)
    sink = tf.MemorySink()
    on_ray = one_learner().sink(sink, name="keep").run(runner="ray", tracking=False, progress=False,
                                                       keep_predictions=True, ray_fuse_chain=fuse,
                                                       max_in_flight=3)
    assert on_ray.batches == 12 and sink.rows == 3000
    assert [b.first_offset for b in sink.batches] == list(range(0, 3000, 250))
    assert comparable(local.per_batch) == comparable(on_ray.per_batch)
    assert [(e.step, e.offset) for e in local.drift_events] == [(e.step, e.offset) for e in on_ray.drift_events]
    assert np.array_equal(local.predictions["tree"]["prediction"], on_ray.predictions["tree"]["prediction"])
    assert local.summary["tree"]["rows_scored"] == on_ray.summary["tree"]["rows_scored"] == 3000


def test_label_delay_predicts_with_an_older_model(classification_recording):
    now = _classification_pipeline(classification_recording).run(runner="local", tracking=False, progress=False)
    late = _classification_pipeline(classification_recording).run(runner="local", tracking=False, progress=False,
                                                                   label_delay=3)
    assert late.summary["tree"]["rows_scored"] == 3000
    # with labels 3 batches late the first 3 batches are predicted by an untrained model
    assert late.summary["tree"]["samples_trained"] == 3000  # the queue is flushed at the end
    assert late.per_batch["tree"][:3] != now.per_batch["tree"][:3]
    assert [r["samples"] for r in late.per_batch["tree"][:4]] == [0, 0, 0, 250]


def _malformed_source():
    schema = tf.Schema({"x": "float64", "y": "float64"}, target="y")
    good = lambda start, n: tf.Batch.from_pydict(  # noqa: E731
        {"x": np.arange(n, dtype=float), "y": 2.0 * np.arange(n)}, stream_id="s", first_offset=start)
    batches = [
        good(0, 50),
        # wrong types: strings that are not numbers in a float column (2 rows of 4)
        tf.Batch.from_pydict({"x": ["1.5", "oops", "2.5", "bad"], "y": [1.0, 2.0, 3.0, 4.0]}, stream_id="s",
                             first_offset=50),
        # NaN and inf (2 rows of 5)
        tf.Batch.from_pydict({"x": [1.0, float("nan"), 2.0, float("inf"), 3.0], "y": [1.0] * 5}, stream_id="s",
                             first_offset=54),
        # a missing column: every row of the batch (3)
        tf.Batch.from_pydict({"x": [1.0, 2.0, 3.0]}, stream_id="s", first_offset=59),
        # duplicated offsets from a redelivery (the first 2 rows repeat offsets 60, 61)
        tf.Batch.from_pydict({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0], "offset": [60, 61, 62]}, stream_id="s"),
        good(63, 50),
    ]
    return tf.MemorySource(batches, schema)


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_malformed_batches_go_to_quarantine_and_the_job_continues(runner, tmp_path, monkeypatch, request):
    if runner == "ray":
        request.getfixturevalue("ray_session")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = (tf.Pipeline("bad").source(_malformed_source()).validate()
         .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="lin"))
    result = p.run(runner=runner, tracking=True, tracking_uri=uri, progress=False)
    assert result.batches == 6
    assert result.quarantine == {"wrong_type": 2, "nan": 1, "inf": 1, "missing_field": 3, "duplicate_offset": 2}
    assert result.quarantined == 9
    # every other row was scored and learned: 50 + 2 + 3 + 0 + 1 + 50
    assert result.summary["lin"]["rows_scored"] == 106
    assert result.summary["lin"]["samples_trained"] == 106
    # quarantined rows are kept, with their reason and the row itself
    q = pa.ipc.open_stream(result.output_dir / "quarantine.arrow").read_all()
    assert q.num_rows == 9
    assert sorted(set(q.column("reason").to_pylist())) == ["duplicate_offset", "inf", "missing_field", "nan",
                                                           "wrong_type"]
    assert '"oops"' in " ".join(q.column("row").to_pylist())
    # and the counts are in MLflow
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["quarantined_total"] == 9
    assert run.data.metrics["quarantine.missing_field"] == 3
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    assert "quarantine.arrow" in artifacts and "graph.json" in artifacts and "summary.json" in artifacts


def test_tracking_logs_nested_runs_and_per_batch_metrics(classification_recording, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _classification_pipeline(classification_recording).run(runner="local", tracking_uri=uri,
                                                                     progress=False, metrics_every_s=0)
    client = MlflowClient(uri)
    parent = client.get_run(result.run_id)
    assert parent.data.params["pipeline"] == "cls"
    assert parent.data.params["steps.tree.kind"] == "learn"
    assert parent.data.params["steps.naive.params.n_classes"] == "2"
    assert parent.data.params["steps.pagehinkley_x1.params.detector"] == "PageHinkley"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"tree", "naive"}
    history = client.get_metric_history(by_name["tree"].info.run_id, "accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(12))
    logged = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert logged == pytest.approx([r["accuracy"] for r in result.per_batch["tree"]])
    final = client.get_run(by_name["tree"].info.run_id).data.metrics["final_accuracy"]
    assert math.isclose(final, result.summary["tree"]["accuracy"])


def test_metrics_are_logged_per_interval_and_add_up(classification_recording, tmp_path, monkeypatch):
    """With a long interval, MLflow gets the first batch, then one point for all the others."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _classification_pipeline(classification_recording).run(runner="local", tracking_uri=uri,
                                                                     progress=False, metrics_every_s=3600)
    client = MlflowClient(uri)
    children = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    tree = {c.info.run_name: c for c in children}["tree"].info.run_id
    history = sorted(client.get_metric_history(tree, "accuracy"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 11]
    recs = result.per_batch["tree"]
    rest = sum(r["accuracy"] * r["rows_scored"] for r in recs[1:]) / sum(r["rows_scored"] for r in recs[1:])
    assert history[0].value == pytest.approx(recs[0]["accuracy"]) and history[1].value == pytest.approx(rest)
    rows = sorted(client.get_metric_history(result.run_id, "rows"), key=lambda m: m.step)
    assert sum(m.value for m in rows) == 3000
    # drift events are logged as they happen, one point each
    offsets = sorted(m.value for m in client.get_metric_history(tree, "drift_offset"))
    assert offsets == sorted(float(e.offset) for e in result.drift_events if e.step == "tree")


def test_keyed_local_learns_one_instance_per_key(keyed_recording):
    sink = tf.MemorySink()
    p = _keyed_pipeline(keyed_recording).sink(sink, name="keep")
    result = p.run(runner="local", tracking=False, progress=False)
    assert sink.rows == 2400 == result.rows
    assert result.summary["per_link"]["samples_trained"] == 2400


def test_ray_runner_sinks_and_backpressure_setting(keyed_recording, ray_session):
    sink = tf.MemorySink()
    p = _keyed_pipeline(keyed_recording).sink(sink, name="keep")
    result = p.run(runner="ray", tracking=False, progress=False, max_in_flight=1)
    assert sink.rows == 2400
    assert [b.first_offset for b in sink.batches] == sorted(b.first_offset for b in sink.batches)
    assert result.summary["per_link"]["rows_scored"] == 2400


class _Fragile(tf.RiverStrategy):
    """Fails to learn on one batch, as a buggy strategy or a poisoned batch would."""

    def learn(self, batch):
        if batch.first_offset == 300:
            raise RuntimeError("boom")
        return super().learn(batch)


def test_a_failing_strategy_is_counted_and_the_job_goes_on():
    src = tf.SyntheticSource("friedman-drift", n=1000, batch_size=100)
    p = (tf.Pipeline("fragile").source(src).validate()
         .learn(_Fragile(linear_model.LinearRegression()), name="fragile")
         .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="sound"))
    result = p.run(runner="local", tracking=False, progress=False)
    assert result.summary["fragile"]["errors"] == 1
    assert "boom" in result.summary["fragile"]["first_error"]
    assert result.summary["fragile"]["samples_trained"] == 900
    assert result.summary["sound"]["samples_trained"] == 1000 and result.summary["sound"]["errors"] == 0


def test_classifier_on_a_float_target_is_a_graph_error():
    src = tf.SyntheticSource("friedman-drift", n=100)
    p = tf.Pipeline("p").source(src).learn(tf.RiverStrategy(tree.HoeffdingTreeClassifier()), name="tree")
    with pytest.raises(tf.GraphError, match="learn step 'tree'.*classifier but target 'y' is double"):
        p.build()


def _meter_rows(n: int) -> tuple[list[tf.Batch], tf.Schema, list[tuple[dict[str, float], float]]]:
    """One-row batches of a stream unlike the project's own (a heat meter: flow and two
    temperatures, float32, with nulls and NaN), and the same rows as River dicts."""
    rng = np.random.default_rng(11)
    flow = rng.gamma(2.0, 1.5, n).astype(np.float32)
    t_in = (55 + 5 * rng.normal(size=n)).astype(np.float32)
    t_out = (t_in - 8 - rng.normal(size=n)).astype(np.float32)
    kw = (flow * (t_in - t_out) * np.float32(1.16)).astype(np.float32)
    feats = {"flow": flow.tolist(), "t_in": t_in.tolist(), "t_out": t_out.tolist()}
    feats["flow"][7] = None
    feats["t_out"][19] = float("nan")
    batches, rows = [], []
    for i in range(n):
        cols = {k: pa.array([v[i]], type=pa.float32()) for k, v in feats.items()}
        batches.append(tf.Batch.from_pydict({**cols, "kw": pa.array([kw[i]], type=pa.float32())},
                                            stream_id="meter", first_offset=i))
        x = {k: float(v[i]) for k, v in feats.items() if v[i] is not None and v[i] == v[i]}
        rows.append((x, float(kw[i])))
    schema = tf.Schema({"flow": "float32", "t_in": "float32", "t_out": "float32", "kw": "float32"}, target="kw")
    return batches, schema, rows


def test_one_row_batches_give_progressive_validation_at_a_bounded_cost_per_batch():
    """At transport size 1 the local runner's metrics are River's progressive validation on the
    same rows (missing values left out of each row's dict), and the engine's own per-batch work
    stays bounded: calls made by tideflow's code per batch (its functions, and the Arrow, numpy
    and builtin functions it calls; River's internals are not counted)."""
    import os
    import sys

    batches, schema, rows = _meter_rows(300)

    def run() -> tf.RunResult:
        return (tf.Pipeline("meter").source(tf.MemorySource(batches, schema))
                .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()),
                       name="m").run(runner="local", tracking=False, progress=False))

    run()  # imports and first calls
    ours = os.path.dirname(tf.__file__) + os.sep
    calls = 0

    def count(frame, event, arg):  # noqa: ANN001, ANN202
        nonlocal calls
        if event in ("call", "c_call") and frame.f_code.co_filename.startswith(ours):
            calls += 1

    sys.setprofile(count)
    try:
        result = run()
    finally:
        sys.setprofile(None)
    # progressive validation by hand, its absolute errors summed in stream order (River's MAE
    # keeps a running mean, which differs in the last digits)
    model, abs_sum = preprocessing.StandardScaler() | linear_model.LinearRegression(), 0.0
    for x, y in rows:
        abs_sum += abs(model.predict_one(x) - y)
        model.learn_one(x, y)
    assert result.summary["m"]["mae"] == abs_sum / len(rows)
    # the engine before the small-batch work made about 187 such calls per batch on this stream
    assert calls / len(batches) < 160, calls / len(batches)


def test_the_summary_keeps_a_selection_pools_newest_size_and_sums_its_counts():
    """A selection stage's ``pool`` is a level (rows held after that batch): the run's summary
    keeps its newest value, while counts (``selected``) add up over the run."""
    from tideflow.testing import KeepAll

    rng = np.random.default_rng(5)
    schema = tf.Schema({"depth": "float64", "flow": "float64"}, target="flow")
    batches = [tf.Batch.from_pydict({"depth": rng.random(7), "flow": rng.random(7)}, stream_id="weir",
                                    first_offset=7 * i) for i in range(5)]
    result = (tf.Pipeline("weir").source(tf.MemorySource(batches, schema))
              .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="w", select=KeepAll(every=2))
              .run(runner="local", tracking=False, progress=False))
    levels = [rec["extra"]["select.pool"] for rec in result.per_batch["w"]]
    assert levels == [7.0, 14.0, 21.0, 28.0, 35.0]
    extra = result.summary["w"]["extra"]
    assert extra["select.pool"] == 35.0  # the sum (105) would be no size the pool ever had
    assert extra["select.selected"] == 14.0 + 28.0
