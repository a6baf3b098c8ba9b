"""Fault recovery on the Ray runner: a strategy actor killed mid-stream (a real ``ray.kill``).

The run must finish, its metrics must equal an uninterrupted run's on the same
recording, every batch must be learned exactly once, and MLflow must hold each
interval's point once (nothing re-logged by the replay after the checkpoint).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from river import linear_model, preprocessing

import tideflow as tf
from tideflow.connectors.recording import RecordingSource, record
from tideflow.testing import PauseOnce, comparable


# the test's strategy class travels to the Ray workers by value (they cannot import this file)
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BATCHES = 40
ROWS = 100


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "friedman.arrows"
    record(tf.SyntheticSource("friedman-drift", n=BATCHES * ROWS, batch_size=ROWS, seed=11), path, progress=False)
    return path


def _pipeline(path, marker, at, cls=None):
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    return (tf.Pipeline("recover").source(RecordingSource(path)).validate()
            .detect(tf.DetectDrift(on="x0"))
            .learn((cls or PauseOnce)(model, marker=str(marker), at=at), name="lin", detector="ADWIN"))


class PacedPauseOnce(PauseOnce):
    """Learns each batch in no less than 20 ms: checkpoints taken by time (every 50 ms) then come
    several times before batch 25 on a machine of any speed."""

    def learn(self, batch):
        start = time.perf_counter()
        report = super().learn(batch)
        time.sleep(max(0.0, 0.02 - (time.perf_counter() - start)))
        return report


def _kill_when_marked(ray, marker: Path, step: str, killed: list[str]) -> threading.Thread:
    def run():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in ray.util.list_named_actors():
            if name.startswith("tideflow.recover.") and f"learn.{step}" in name:
                ray.kill(ray.get_actor(name), no_restart=False)
                killed.append(name)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("fuse", [True, False], ids=["chained", "one-actor-per-step"])
def test_killed_strategy_actor_recovers_from_checkpoint(recording, tmp_path, ray_session, fuse):
    import mlflow

    baseline = _pipeline(recording, tmp_path / "never", at=-1).run(
        runner="local", tracking=False, progress=False)

    marker = tmp_path / "reached"
    killed: list[str] = []
    killer = _kill_when_marked(ray_session, marker, "lin", killed)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _pipeline(recording, marker, at=25).run(
        runner="ray", progress=False, tracking_uri=uri, experiment="recovery", ray_fuse_chain=fuse,
        checkpoint_every=10, max_in_flight=2, metrics_every_s=0)
    killer.join(timeout=10)

    assert killed, "the strategy actor was never found to kill"
    assert result.extra["restarts"] == 1
    # the checkpoint before the kill was at batch 19 or later; the replay started after it
    assert result.extra["restart_log"][0]["from_batch"] >= 19
    assert result.batches == BATCHES and result.rows == BATCHES * ROWS
    assert result.summary["lin"]["samples_trained"] == BATCHES * ROWS  # learned exactly once
    assert comparable(result.per_batch) == comparable(baseline.per_batch)
    assert result.summary["lin"]["mae"] == baseline.summary["lin"]["mae"]
    assert [(e.step, e.offset) for e in result.drift_events] == [(e.step, e.offset) for e in baseline.drift_events]

    # MLflow: one point per batch (metrics_every_s=0), none twice despite the replay
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    child = client.search_runs([client.get_experiment_by_name("recovery").experiment_id],
                               filter_string="tags.mlflow.runName = 'lin'")[0]
    hist = client.get_metric_history(child.info.run_id, "mae")
    assert sorted(m.step for m in hist) == list(range(BATCHES))
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
        [r["mae"] for r in baseline.per_batch["lin"]])


def test_a_run_that_died_resumes_from_its_checkpoint_folder(recording, tmp_path, ray_session):
    import ray

    from tideflow.pipelines.checkpoint import CheckpointMismatch, CheckpointStore

    baseline = _pipeline(recording, tmp_path / "never", at=-1).run(runner="local", tracking=False, progress=False)
    marker = tmp_path / "reached"
    ckpt = tmp_path / "ckpt"
    killed: list[str] = []
    killer = _kill_when_marked(ray_session, marker, "lin", killed)
    with pytest.raises(ray.exceptions.RayActorError):
        _pipeline(recording, marker, at=25).run(
            runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt, checkpoint_every=10,
            max_restarts=0, max_in_flight=2)
    killer.join(timeout=10)
    assert killed
    files = CheckpointStore(ckpt, fingerprint="?").files()
    assert files and files[-1].name >= "ckpt-000000000019.json"
    assert not list(ckpt.glob("*.tmp"))  # written whole, then renamed

    # a different graph cannot resume from it
    other = (tf.Pipeline("recover").source(RecordingSource(recording)).validate()
             .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="lin"))
    with pytest.raises(CheckpointMismatch):
        other.run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt, resume=True)
    # starting afresh into a folder that holds a run's checkpoints is refused
    with pytest.raises(FileExistsError):
        _pipeline(recording, marker, at=25).run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt)

    resumed = _pipeline(recording, marker, at=25).run(
        runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt, resume=True, max_in_flight=2)
    assert resumed.batches == BATCHES and resumed.rows == BATCHES * ROWS
    assert resumed.summary["lin"]["samples_trained"] == BATCHES * ROWS
    assert comparable(resumed.per_batch) == comparable(baseline.per_batch)
    assert resumed.summary["lin"]["mae"] == baseline.summary["lin"]["mae"]


class _NoSeek(tf.SyntheticSource):
    """A source that cannot tell its position (a custom source without seek)."""

    @property
    def position(self):
        raise NotImplementedError


def test_a_source_that_cannot_seek_runs_without_checkpoints(ray_session, capfd):
    src = _NoSeek("friedman-drift", n=1000, batch_size=100, seed=1)
    result = (tf.Pipeline("noseek").source(src).validate()
              .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="lin")
              .run(runner="ray", tracking=False, progress=False, checkpoint_every=2, max_in_flight=2))
    assert result.batches == 10 and result.summary["lin"]["samples_trained"] == 1000
    assert "cannot seek" in capfd.readouterr().err


def test_a_run_that_died_resumes_from_its_mlflow_artifacts(recording, tmp_path, ray_session, monkeypatch, capsys):
    """Checkpoints copied into the MLflow run (timed as well as counted) bring back a run
    whose local folder is gone: `tideflow resume mlflow:<run_id>` rebuilds it from them."""
    import shutil

    import mlflow
    import ray

    from tideflow.cli import main
    from tideflow.pipelines.checkpoint import download

    baseline = _pipeline(recording, tmp_path / "never", at=-1).run(runner="local", tracking=False, progress=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    marker = tmp_path / "reached"
    killed: list[str] = []
    killer = _kill_when_marked(ray_session, marker, "lin", killed)
    out = tmp_path / "out"
    with pytest.raises(ray.exceptions.RayActorError):
        # by time only: a checkpoint every 0.05 s
        _pipeline(recording, marker, at=25, cls=PacedPauseOnce).run(
            runner="ray", progress=False, tracking_uri=uri, experiment="ckpt-mlflow", output_dir=out,
            checkpoint_every=0, checkpoint_every_s=0.05, checkpoint_mlflow=True, max_restarts=0, max_in_flight=2,
            checkpoint_meta={"started_by": "the Python API"})
    killer.join(timeout=10)
    assert killed
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("ckpt-mlflow").experiment_id],
                             filter_string="tags.mlflow.runName = 'recover-ray'")[0]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/slot-0.json", "checkpoints/slot-1.json", "checkpoints/history", "checkpoints/run.json"} <= names
    shutil.rmtree(out)  # the local copy is lost with the machine

    folder = download(run.info.run_id, tmp_path / "restored", tracking_uri=uri)
    ckpts = sorted(folder.glob("ckpt-*.json"))
    assert len(ckpts) == 1 and 0 < int(ckpts[0].stem.split("-")[1]) < 25  # the newest slot, before the kill
    resumed = _pipeline(recording, marker, at=25, cls=PacedPauseOnce).run(
        runner="ray", tracking=False, progress=False, checkpoint_dir=folder, resume=True, max_in_flight=2)
    assert resumed.batches == BATCHES and resumed.summary["lin"]["samples_trained"] == BATCHES * ROWS
    assert comparable(resumed.per_batch) == comparable(baseline.per_batch)
    assert resumed.summary["lin"]["mae"] == baseline.summary["lin"]["mae"]

    # the command: resume needs the run's argv, which only `tideflow run` records
    monkeypatch.chdir(tmp_path)
    assert main(["resume", f"mlflow:{run.info.run_id}", "--tracking-uri", uri]) != 0
    err = capsys.readouterr()
    assert "downloaded" in err.out and "does not say how the run was started" in err.err


class _FlakyArtifacts:
    """Artifact uploads into a folder; the checkpoint slot upload fails once (a store that goes
    down between two uploads of one checkpoint: a fault a real server cannot be made to hit
    at that exact point)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_next_slot = True

    def log_artifact(self, path, artifact_path=None):
        import shutil

        path = Path(path)
        if path.name.startswith("slot-") and self.fail_next_slot:
            self.fail_next_slot = False
            raise ConnectionError("tracking server went away")
        dest = self.root / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / path.name)


def test_mlflow_copy_after_a_failed_upload_holds_each_history_record_once(tmp_path):
    from tideflow.pipelines.checkpoint import CheckpointStore, MlflowMirror

    store = CheckpointStore(tmp_path / "local", fingerprint="f", meta={"argv": ["run"]})
    store.mirror = MlflowMirror(_FlakyArtifacts(tmp_path / "remote"), tmp_path / "staging")
    durable = []
    for seq in (9, 19, 29):
        store.save({"seq": seq, "actors": {}, "collector": {}}, history={"rows": seq})
        durable.append(store.durable)
    assert durable == [False, True, True]  # the first slot upload failed; the runner does not ack it
    chunks = sorted((tmp_path / "remote" / "checkpoints" / "history").glob("*.jsonl"))
    records = [line for c in chunks for line in c.read_text().splitlines()]
    assert [json.loads(r)["seq"] for r in records] == [9, 19, 29]
    assert {p.name for p in (tmp_path / "remote" / "checkpoints").glob("slot-*.json")} == {"slot-0.json", "slot-1.json"}


class PauseAndReset(PauseOnce):
    """The fault-injection learner, which also starts a fresh model on every event another
    step raised: its metrics tell whether such events were lost, doubled or mis-timed."""

    def on_drift(self, event):
        if event.detector == "ood":
            self._model = self.estimator.clone()


def test_events_between_steps_survive_a_recovery(recording, tmp_path, ray_session):
    """An event raised at batch 20 is due at batch 24: after a kill at batch 25 the run goes back
    to the checkpoint after batch 23, when the event is still waiting in the driver (the
    checkpoint holds it); the one raised at batch 29 is raised again by the restored learner.
    Metrics equal a local run's."""
    from tideflow.testing import Emitter

    def pipeline(marker, at):
        model = preprocessing.StandardScaler() | linear_model.LinearRegression()
        return (tf.Pipeline("recover").source(RecordingSource(recording)).validate()
                .learn(Emitter(linear_model.LinearRegression(), at=(2099, 2999)), name="ood")
                .learn(PauseAndReset(model, marker=str(marker), at=at), name="lin"))

    baseline = pipeline(tmp_path / "never", -1).run(runner="local", tracking=False, progress=False)
    assert baseline.summary["ood"]["events_emitted"] == 2
    marker = tmp_path / "reached"
    killed: list[str] = []
    killer = _kill_when_marked(ray_session, marker, "lin", killed)
    result = pipeline(marker, 25).run(runner="ray", tracking=False, progress=False, checkpoint_every=10,
                                      max_in_flight=4)
    killer.join(timeout=10)
    assert killed and result.extra["restarts"] == 1
    assert result.extra["restart_log"][0]["from_batch"] == 23  # checkpoints after batches 11 and 23
    assert comparable(result.per_batch) == comparable(baseline.per_batch)
    assert result.summary["lin"]["mae"] == baseline.summary["lin"]["mae"]
    # and the events did something: without them the listener's error differs
    quiet = (tf.Pipeline("quiet").source(RecordingSource(recording)).validate()
             .learn(PauseAndReset(preprocessing.StandardScaler() | linear_model.LinearRegression(),
                                  marker=str(tmp_path / "never"), at=-1), name="lin")
             .run(runner="local", tracking=False, progress=False))
    assert quiet.summary["lin"]["mae"] != baseline.summary["lin"]["mae"]
