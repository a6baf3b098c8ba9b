"""Tracking against real MLflow stores (SQLite file and a live `mlflow server`), no mocks.

The only instrumentation is a counting spy around `MlflowClient.log_batch` that still calls
the real method, so the store receives everything and the assertions read it back.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils import validation
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tideflow.pipelines import tracking
from tideflow.pipelines.tracking import MetricsLogger, Tracker, flatten_params

PARAMS = {
    "graph": {
        "source": {"kind": "mnist", "batch_size": 32},
        "ops": ["normalize", "drift:adwin"],
        "empty": {},
    },
    "seed": 7,
    "long": "x" * 7000,  # over MLflow's 6000-char param value limit
}


class LogBatchSpy:
    """Counts log_batch calls (and metrics per call) and forwards them to the real method."""

    def __init__(self, client: MlflowClient) -> None:
        self.real = client.log_batch
        self.metric_calls: list[int] = []
        self.calls = 0
        client.log_batch = self  # instance attribute shadows the method

    def __call__(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (),
                 synchronous: bool | None = None) -> Any:
        self.calls += 1
        if metrics:
            self.metric_calls.append(len(metrics))
        return self.real(run_id, metrics=metrics, params=params, tags=tags,
                         synchronous=synchronous)


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run_id, key)
    by_step = {m.step: m.value for m in points}
    assert len(by_step) == len(points), f"duplicate steps in {key}"
    return by_step


@pytest.fixture(scope="module")
def shared_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Creating a SQLite store runs MLflow's migrations (~2.5 s); the small tests share one.
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_limits_match_mlflow() -> None:
    assert tracking.MAX_METRICS_PER_BATCH == validation.MAX_METRICS_PER_BATCH
    assert tracking.MAX_PARAMS_TAGS_PER_BATCH == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert tracking.MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert tracking.MAX_TAG_VAL_LENGTH == validation.MAX_TAG_VAL_LENGTH
    assert tracking.MAX_ENTITY_KEY_LENGTH == validation.MAX_ENTITY_KEY_LENGTH


def test_flatten_params() -> None:
    flat = flatten_params(PARAMS)
    assert flat["graph.source.kind"] == "mnist"
    assert flat["graph.source.batch_size"] == "32"
    assert flat["graph.ops"] == "['normalize', 'drift:adwin']"
    assert flat["graph.empty"] == "{}"
    assert flat["seed"] == "7"
    assert all(isinstance(v, str) for v in flat.values())


def test_default_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Tracker().tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert Tracker().tracking_uri == "http://example.invalid:5000"
    assert Tracker(tracking_uri="sqlite:///x.db").tracking_uri == "sqlite:///x.db"
    assert list(tmp_path.iterdir()) == []  # constructing a tracker touches no store


def test_sqlite_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(experiment="roundtrip", tracking_uri=uri, run_name="pipe-1")
    spy = LogBatchSpy(tracker.client)

    run_id = tracker.start(PARAMS)
    assert tracker.run_id == run_id
    ewc = tracker.start_child("ewc", {"lambda": 0.4, "opt": {"lr": 0.01}})
    replay = tracker.start_child("replay", {"buffer": 500})
    assert tracker.child_ids == {"ewc": ewc, "replay": replay}

    # 2500 points: 2 keys x 500 steps per child, 1 key x 500 steps on the parent.
    expected: dict[tuple[str, str], dict[int, float]] = {}
    for step in range(500):
        for name, rid, off in (("ewc", ewc, 0.0), ("replay", replay, 0.5)):
            vals = {"acc": off + step / 1000, "loss": 1.0 / (step + 1) + off}
            tracker.log_metrics(name, vals, step)
            for k, v in vals.items():
                expected.setdefault((rid, k), {})[step] = v
        tracker.log_metrics(None, {"throughput": 100.0 + step}, step)
        expected.setdefault((run_id, "throughput"), {})[step] = 100.0 + step
    graph = {"nodes": ["src", "ewc", "replay"], "edges": [["src", "ewc"], ["src", "replay"]]}
    tracker.log_dict(graph, "graph.json")
    tracker.log_dict({"final_acc": 0.9}, "summary.json", name="ewc")
    tracker.set_tags({"recording": "abc123"})
    tracker.end()

    # Batching: 2500 points in full batches, not one call per point.
    assert sum(spy.metric_calls) == 2500 == tracker.points_logged
    assert len(spy.metric_calls) <= 5, spy.metric_calls
    assert max(spy.metric_calls) <= 1000

    client = MlflowClient(tracking_uri=uri)  # fresh client: read what the store holds
    parent = client.get_run(run_id)
    assert parent.info.run_name == "pipe-1"
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["graph.source.kind"] == "mnist"
    assert p["graph.source.batch_size"] == "32"
    assert p["graph.ops"] == "['normalize', 'drift:adwin']"
    assert p["graph.empty"] == "{}"
    assert p["seed"] == "7"
    assert p["long"] == "x" * 6000
    assert parent.data.tags["recording"] == "abc123"

    for name, rid in (("ewc", ewc), ("replay", replay)):
        child = client.get_run(rid)
        assert child.info.run_name == name
        assert child.data.tags[MLFLOW_PARENT_RUN_ID] == run_id
        assert child.info.status == "FINISHED"
        assert child.info.experiment_id == parent.info.experiment_id
    assert client.get_run(ewc).data.params == {"lambda": "0.4", "opt.lr": "0.01"}

    for (rid, key), want in expected.items():
        got = history(client, rid, key)
        assert got.keys() == want.keys(), (rid, key)
        assert all(got[s] == pytest.approx(v, rel=1e-12) for s, v in want.items()), (rid, key)

    dst = tmp_path / "dl"
    dst.mkdir()
    def download_json(rid: str, path: str) -> Any:
        return json.loads(Path(client.download_artifacts(rid, path, str(dst))).read_text())

    assert download_json(run_id, "graph.json") == graph
    assert download_json(ewc, "summary.json") == {"final_acc": 0.9}
    # Artifacts of the SQLite store are pinned next to the database file, in mlartifacts/.
    exp = client.get_experiment_by_name("roundtrip")
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert list((tmp_path / "mlartifacts").rglob("graph.json"))

    # A second tracker reuses the existing experiment as is.
    t2 = Tracker(experiment="roundtrip", tracking_uri=uri)
    t2.start({})
    t2.end(status="KILLED")
    assert client.get_run(t2.run_id).info.experiment_id == exp.experiment_id
    assert client.get_run(t2.run_id).info.status == "KILLED"


def test_metrics_logger_chunks(shared_sqlite: str) -> None:
    client = MlflowClient(tracking_uri=shared_sqlite)
    exp = client.create_experiment("chunks")
    run_id = client.create_run(exp).info.run_id
    spy = LogBatchSpy(client)
    logger = MetricsLogger(client, flush_every=10_000, flush_seconds=3600)
    for step in range(1250):
        logger.log(run_id, "a", float(step), step)
        logger.log(run_id, "b", -float(step), step, timestamp_ms=1_000_000 + step)
    assert spy.calls == 0 and logger.points_logged == 0 and logger.pending == 2500
    logger.flush()
    assert spy.metric_calls == [1000, 1000, 500]  # MLflow's per-call limit is 1000
    assert logger.points_logged == 2500 and logger.pending == 0
    b = client.get_metric_history(run_id, "b")
    assert len(b) == 1250
    assert {m.timestamp for m in b} == {1_000_000 + s for s in range(1250)}
    assert history(client, run_id, "a") == {s: float(s) for s in range(1250)}
    logger.flush()  # nothing buffered: no call
    assert spy.calls == 3


def test_metrics_logger_flush_every_and_seconds(shared_sqlite: str) -> None:
    client = MlflowClient(tracking_uri=shared_sqlite)
    exp = client.create_experiment("thresholds")
    r1, r2 = (client.create_run(exp).info.run_id for _ in range(2))
    spy = LogBatchSpy(client)

    logger = MetricsLogger(client, flush_every=10, flush_seconds=3600)
    for step in range(25):
        logger.log(r1, "x", 1.0, step)
    logger.log(r2, "y", 2.0, 0)
    assert spy.metric_calls == [10, 10]  # a run's buffer goes once it is full
    assert logger.pending == 6
    logger.flush()
    assert sorted(spy.metric_calls[2:]) == [1, 5]  # per run

    # flush_seconds=0: the oldest point is always "too old", so every log sends.
    logger = MetricsLogger(client, flush_seconds=0.0)
    logger.log(r2, "z", 3.0, 1)
    assert logger.points_logged == 1 and logger.pending == 0
    assert history(client, r2, "z") == {1: 3.0}


def test_metrics_logger_threads(shared_sqlite: str) -> None:
    client = MlflowClient(tracking_uri=shared_sqlite)
    exp = client.create_experiment("threads")
    runs = [client.create_run(exp).info.run_id for _ in range(4)]
    logger = MetricsLogger(client, flush_every=100)

    def work(rid: str) -> None:
        for step in range(250):
            logger.log_many(rid, {"acc": step / 250, "n": float(step)}, step)

    threads = [threading.Thread(target=work, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.flush()
    assert logger.points_logged == 4 * 250 * 2
    for rid in runs:
        assert history(client, rid, "n") == {s: float(s) for s in range(250)}


def test_nan_and_bad_keys(
    shared_sqlite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(experiment="nan", tracking_uri=shared_sqlite)
    run_id = tracker.start({"k": 1})
    tracker.start_child("s", {})
    tracker.log_metrics(None, {"acc": math.nan, "loss": 0.5}, 0)
    tracker.log_metrics(None, {"acc": math.inf, "loss": 0.25}, 1)
    tracker.log_metrics("s", {"acc": 0.75, "err": -math.inf, "acc@1": 0.5}, 0)
    tracker.log_metrics("s", {"bad": "not-a-number"}, 1)  # type: ignore[dict-item]
    tracker.end()
    assert tracker.skipped_points == 4
    assert tracker.points_logged == 4
    client = MlflowClient(tracking_uri=shared_sqlite)
    assert history(client, run_id, "loss") == {0: 0.5, 1: 0.25}
    assert client.get_metric_history(run_id, "acc") == []
    child = tracker.child_ids["s"]
    assert history(client, child, "acc") == {0: 0.75}
    assert history(client, child, "acc_1") == {0: 0.5}  # '@' is not allowed by MLflow
    assert client.get_metric_history(child, "err") == []


def test_misuse_raises(shared_sqlite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(experiment="misuse", tracking_uri=shared_sqlite)
    with pytest.raises(RuntimeError, match="start"):
        tracker.log_metrics(None, {"a": 1.0}, 0)
    tracker.start({})
    with pytest.raises(KeyError, match="nope"):
        tracker.log_metrics("nope", {"a": 1.0}, 0)
    tracker.start_child("c", {})
    with pytest.raises(ValueError, match="already"):
        tracker.start_child("c", {})
    with pytest.raises(Exception):
        tracker.end(status="DONE")  # not an MLflow status
    tracker.end()
    tracker.end()  # idempotent
    with pytest.raises(RuntimeError, match="end"):
        tracker.log_metrics(None, {"a": 1.0}, 0)

    with pytest.raises(ZeroDivisionError):
        with Tracker(experiment="misuse", tracking_uri=shared_sqlite) as t:
            t.start({})
            1 / 0
    assert MlflowClient(shared_sqlite).get_run(t.run_id).info.status == "FAILED"


def test_disabled_is_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    art = tmp_path / "f.txt"
    art.write_text("x")
    t = Tracker(enabled=False)
    t.start(PARAMS)
    t.start_child("s", {"a": 1})
    t.log_metrics(None, {"a": 1.0, "nan": math.nan}, 0)
    t.log_metrics("s", {"a": 1.0}, 0)
    t.log_dict({"a": 1}, "graph.json")
    t.log_artifact(str(art))
    t.set_tags({"a": "b"}, name="s")
    t.flush()
    t.end()
    assert t.run_id is None and t.child_ids == {} and t.client is None
    assert t.points_logged == 0 and t.skipped_points == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no mlflow.db, mlruns, ...


def test_tracking_server(mlflow_server: str, mlflow_server_root: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ckpt.txt"
    ckpt.write_text("weights")
    tracker = Tracker(experiment="server", tracking_uri=mlflow_server, run_name="remote")
    spy = LogBatchSpy(tracker.client)
    run_id = tracker.start(PARAMS)
    child = tracker.start_child("ewc", {"lambda": 0.4})
    for step in range(300):
        tracker.log_metrics(None, {"throughput": float(step)}, step)
        tracker.log_metrics("ewc", {"acc": step / 300, "loss": 1 / (step + 1)}, step)
    tracker.log_dict({"nodes": ["a", "b"]}, "graph.json")
    tracker.log_artifact(str(ckpt), name="ewc", artifact_path="checkpoints")
    tracker.end()
    assert sum(spy.metric_calls) == 900 and len(spy.metric_calls) <= 2

    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "remote"
    assert parent.data.params["graph.source.kind"] == "mnist"
    assert parent.data.params["long"] == "x" * 6000
    assert client.get_run(child).data.tags[MLFLOW_PARENT_RUN_ID] == run_id
    assert history(client, run_id, "throughput") == {s: float(s) for s in range(300)}
    acc = history(client, child, "acc")
    assert acc.keys() == set(range(300))
    assert all(acc[s] == pytest.approx(s / 300, rel=1e-12) for s in acc)

    # Artifacts went through the server's proxy into its artifacts folder.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    dst = tmp_path / "dl"
    dst.mkdir()
    graph = Path(client.download_artifacts(run_id, "graph.json", str(dst)))
    assert json.loads(graph.read_text()) == {"nodes": ["a", "b"]}
    got = Path(client.download_artifacts(child, "checkpoints/ckpt.txt", str(dst)))
    assert got.read_text() == "weights"
    assert list((mlflow_server_root / "artifacts").rglob("ckpt.txt"))
    # Nothing leaked into the local working folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.txt", "dl"]


def test_ready_pipeline_artifacts_go_to_the_runs_own_store(tmp_path, monkeypatch):
    """A report's plots and tables go to the store the run was logged to (tracking_uri=...), not to
    the default one of the working folder; pipelines carry their observers into every run."""
    from mlflow import MlflowClient

    import tideflow as tf
    from tideflow.pipelines.metrics.batch_times import BatchTimes
    from tideflow.pipelines.tracking import log_run_artifacts

    monkeypatch.chdir(tmp_path)  # the default store would be ./mlflow.db
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    from river import linear_model

    p = tf.Pipeline("artifacts").source(tf.SyntheticSource("friedman-drift", n=300, batch_size=100)).learn(
        tf.RiverStrategy(linear_model.LinearRegression()), name="lin").observe(BatchTimes())
    result = p.run(tracking_uri=uri, experiment="art", progress=False)
    assert result.tracking_uri == uri and result.metrics["batch_times"]["batches"] == 3
    table = tmp_path / "scores.json"
    table.write_text("{}")
    log_run_artifacts(result, [table])
    assert [a.path for a in MlflowClient(uri).list_artifacts(result.run_id)] == ["graph.json", "scores.json",
                                                                                 "summary.json"]
    assert not (tmp_path / "mlflow.db").exists()
