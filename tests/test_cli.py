"""The command line: every command has --help; record, then replay on both runners with identical metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from tideflow.testing import comparable

TIDEFLOW = [sys.executable, "-m", "tideflow.cli"]

PIPELINE_FILE = '''
from river import linear_model, preprocessing, tree
import tideflow as tf

def build(source=None, **options):
    return (tf.Pipeline("file_demo").source(source or tf.SyntheticSource("sea-drift", n=1000)).validate()
            .detect(tf.DetectDrift(on="x0"))
            .learn(tf.RiverStrategy(tree.HoeffdingTreeClassifier(grace_period=50)), name="tree", detector="ADWIN")
            .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LogisticRegression()),
                   name="logistic"))
'''


def _run(args, cwd, check=True, timeout=300):
    proc = subprocess.run([*TIDEFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tideflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("command", [[], ["run"], ["replay"], ["record"], ["show"], ["list"]])
def test_every_command_has_help(command, tmp_path):
    out = _run([*command, "--help"], tmp_path).stdout
    assert "usage: tideflow" in out


def test_record_then_replay_on_both_runners_gives_identical_metrics(tmp_path):
    rec = tmp_path / "stream.arrow"
    out = _run(["record", "sea-drift:n=3000,batch_size=300,seed=5", "-o", str(rec), "--no-progress"], tmp_path)
    assert "recorded 3000 events in 10 batches" in out.stdout
    with pa.ipc.open_stream(rec) as reader:
        assert reader.read_all().num_rows == 3000

    (tmp_path / "mine.py").write_text(PIPELINE_FILE)
    runs = {}
    for runner in ("local", "ray"):
        proc = _run(["replay", str(rec), "--pipeline", str(tmp_path / "mine.py"), "--runner", runner,
                     "--no-progress", "--json", str(tmp_path / f"{runner}.json")], tmp_path)
        assert "tree" in proc.stdout and "logistic" in proc.stdout  # the summary table
        runs[runner] = json.loads((tmp_path / f"{runner}.json").read_text())
        # tracking is on by default: the SQLite store lands in the working folder
        assert (tmp_path / "mlflow.db").exists()
    strip = lambda doc: comparable(doc["per_batch"])  # noqa: E731
    assert runs["local"]["rows"] == runs["ray"]["rows"] == 3000
    assert strip(runs["local"]) == strip(runs["ray"])
    assert runs["local"]["strategies"]["tree"]["accuracy"] == runs["ray"]["strategies"]["tree"]["accuracy"]


def test_replay_from_an_offset_and_rechunked(tmp_path):
    rec = tmp_path / "s.arrow"
    _run(["record", "friedman-drift:n=1000,batch_size=250", "-o", str(rec), "--no-progress"], tmp_path)
    (tmp_path / "mine.py").write_text(
        "from river import linear_model\nimport tideflow as tf\n"
        "def build(source=None, **o):\n"
        "    return tf.Pipeline('f').source(source).validate().learn(tf.RiverStrategy(linear_model.LinearRegression()), name='lin')\n")
    _run(["replay", str(rec), "--pipeline", str(tmp_path / "mine.py"), "--runner", "local", "--no-tracking",
          "--no-progress", "--start-offset", "400", "--batch-size", "100", "--json", str(tmp_path / "o.json")], tmp_path)
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["rows"] == 600 and doc["batches"] == 6


def test_errors_are_clear_and_not_tracebacks(tmp_path):
    proc = _run(["run", "no-such-pipeline", "--runner", "local", "--no-tracking"], tmp_path, check=False)
    assert proc.returncode == 2
    assert "unknown pipeline 'no-such-pipeline'" in proc.stderr and "Traceback" not in proc.stderr
    rec = tmp_path / "f.arrow"
    _run(["record", "friedman-drift:n=500", "-o", str(rec), "--no-progress"], tmp_path)
    # the drift pipeline expects SEA's columns: a graph error naming the validate step, before anything runs
    proc = _run(["replay", str(rec), "--pipeline", "drift", "--runner", "local", "--no-tracking"], tmp_path, check=False)
    assert proc.returncode == 2
    assert "learn step" in proc.stderr or "validate" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run(["record", "nope", "-o", str(tmp_path / "x.arrow")], tmp_path, check=False)
    assert proc.returncode == 2 and "unknown synthetic stream 'nope'" in proc.stderr


def test_show_prints_the_default_graph(tmp_path):
    out = _run(["show"], tmp_path).stdout
    assert "Pipeline 'linkload'" in out and "graph hash:" in out
    out = _run(["show", "drift"], tmp_path).stdout
    assert "Pipeline 'drift'" in out


def test_list_names_every_source_kind(tmp_path):
    out = _run(["list"], tmp_path).stdout
    for name in ("linkload (default)", "drift", "sea-drift", "friedman-drift", "agrawal-drift", "linkload  options",
                 "weather  options"):
        assert name in out


def test_resume_from_mlflow_artifacts_continues_the_run(tmp_path):
    """`tideflow replay --checkpoint-mlflow`, its local checkpoints deleted, then `tideflow resume
    mlflow:<run_id>`: the run is rebuilt from the MLflow run's artifacts and ends as the first did."""
    import shutil

    import mlflow

    rec = tmp_path / "stream.arrow"
    _run(["record", "sea-drift:n=3000,batch_size=300,seed=5", "-o", str(rec), "--no-progress"], tmp_path)
    (tmp_path / "mine.py").write_text(PIPELINE_FILE)
    _run(["replay", str(rec), "--pipeline", str(tmp_path / "mine.py"), "--runner", "ray", "--no-progress",
          "--checkpoint-mlflow", "--checkpoint-every", "3", "--output-dir", "out", "--json", "first.json"], tmp_path)
    first = json.loads((tmp_path / "first.json").read_text())
    assert len(list((tmp_path / "out" / "checkpoints").glob("ckpt-*.json"))) == 2  # the newest two are kept
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "first.json").rename(tmp_path / "first-run.json")  # the resumed run must write its own

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tideflow").experiment_id],
                             filter_string="tags.mlflow.runName = 'file_demo-ray'")[0]
    proc = _run(["resume", f"mlflow:{run.info.run_id}"], tmp_path)
    assert "downloaded" in proc.stdout and "resuming" in proc.stdout
    again = json.loads((tmp_path / "first.json").read_text())  # the same --json argument, written by the resumed run
    strip = lambda doc: comparable(doc["per_batch"])  # noqa: E731
    assert again["rows"] == 3000 and strip(again) == strip(first)
    assert again["strategies"]["tree"]["accuracy"] == first["strategies"]["tree"]["accuracy"]
