"""The ``images`` ready pipeline and its comparison (tideflow/pipelines/ready/images.py).

Split digits (scikit-learn's, offline) stand in for Fashion-MNIST: the pipeline's options and
what it refuses, a run on the local runner and the same on a real local Ray with identical
metrics, a Ray run stopped part-way and resumed from its checkpoint folder to the same final
accuracy matrix, the iid bound's shuffled stream, a stream that is not images (a table's rows
as tasks), a recording replayed through the command, and the comparison on a tiny protocol
writing its JSON and Markdown, SparseTraining and EAR as learners of the pipeline, and a second
comparison merged into the first's file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tideflow as tf
from tideflow.cli import main
from tideflow.pipelines.ready.images import PROTOCOL, build, dst_steps_per_task, iid_source
from tideflow.pipelines.ready.images_compare import compare

#: the small stream of these tests: split digits with the task id in every row (so that both
#: class-IL and task-IL metrics exist), 5 tasks of 2 classes, 17 batches
STREAM = {"split": "task-incremental", "tasks": 5, "seed": 1, "batch_size": 90}


def _digits(**kw: Any) -> tf.ImageStream:
    return tf.ImageStream("digits", **{**STREAM, **kw})


def _quiet(pipeline: tf.Pipeline, runner: str, **kw: Any) -> tf.RunResult:
    return pipeline.run(runner=runner, tracking=False, progress=False, **kw)


@pytest.fixture(scope="module")
def local_run() -> tf.RunResult:
    return _quiet(build(_digits(), strategies="naive,prd,dkvb", epochs=1), "local")


def test_show_prints_the_graph_and_every_option(capsys: Any) -> None:
    assert main(["show", "images"]) == 0
    out = capsys.readouterr().out
    for step in ("naive", "replay", "ewc", "lwf", "prd", "dkvb", "dst", "ear"):
        assert f"learn     {step}" in out
    assert "options (--set key=value):" in out
    for option in ("dataset:", "split:", "encoder:", "strategies:", "epochs:", "train_per_class:", "num_gpus:"):
        assert option in out


def test_unknown_and_inapplicable_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"epoch \(did you mean epochs\?\)"):
        build(epoch=3)
    with pytest.raises(ValueError, match="choose the pipeline's own stream"):
        build(_digits(), dataset="fashion-mnist", encoder="efficientnet-lite0")
    with pytest.raises(ValueError, match="runs alone"):
        build(strategies="iid,naive")
    with pytest.raises(ValueError, match="unknown: gem"):
        build(strategies="naive,gem")
    with pytest.raises(ValueError, match="epochs is an integer >= 1"):
        build(epochs=0)
    # a source without held-out rows: the engine would have nothing to evaluate
    schema = tf.Schema({"x": "float64", "y": "int64"}, target="y")
    plain = tf.MemorySource([tf.Batch.from_pydict({"x": [0.0, 1.0], "y": [0, 1]}, stream_id="s")], schema)
    with pytest.raises(ValueError, match="no held-out rows per task"):
        build(plain)
    with pytest.raises(ValueError, match=r"seed \(did you mean seeds\?\)"):
        compare(seed=0)
    # the command line says the same in one line
    assert main(["run", "images", "--set", "epoch=3"]) == 2


def test_a_tiny_run_gives_every_learner_its_accuracy_matrices(local_run: tf.RunResult) -> None:
    assert local_run.batches == 17 and sorted(local_run.cl_metrics) == ["dkvb", "naive", "prd"]
    for name, m in local_run.cl_metrics.items():
        assert len(m.matrix) == 5 and all(len(row) == 5 for row in m.matrix), name  # after each task, each task
        assert m.matrix_til is not None and m.average_accuracy_til is not None, name
        assert all(0.0 <= v <= 1.0 for row in m.matrix for v in row)
    # each task is learned while it is current (the diagonal); PRD's contrastive learning needs
    # more than one pass over each batch to do as well, so it is not held to it here
    for name in ("naive", "dkvb"):
        assert min(local_run.cl_metrics[name].matrix_til[i][i] for i in range(5)) > 0.8, name
    # class-IL: the bottleneck keeps the old tasks, fine-tuning does not
    dkvb, naive = local_run.cl_metrics["dkvb"], local_run.cl_metrics["naive"]
    assert dkvb.average_accuracy > naive.average_accuracy + 0.2
    assert naive.forgetting > 0.3 and dkvb.forgetting < 0.1


def test_the_ray_runner_gives_the_local_metrics(local_run: tf.RunResult, ray_session: Any) -> None:
    ray = _quiet(build(_digits(), strategies="prd,dkvb", epochs=1), "ray")
    for name in ("prd", "dkvb"):
        assert ray.cl_metrics[name].matrix == local_run.cl_metrics[name].matrix
        assert ray.cl_metrics[name].matrix_til == local_run.cl_metrics[name].matrix_til
        assert ray.summary[name]["accuracy"] == local_run.summary[name]["accuracy"]


def test_a_stopped_ray_run_resumes_to_the_same_final_matrix(local_run: tf.RunResult, tmp_path: Path,
                                                             ray_session: Any) -> None:
    ckpt = tmp_path / "ckpt"
    stopped = _quiet(build(_digits(), strategies="prd", epochs=1), "ray", checkpoint_dir=ckpt,
                     checkpoint_every=3, max_batches=8)
    assert stopped.batches == 8 and len(stopped.cl_metrics["prd"].matrix) < 5  # stopped inside task 2
    assert list(ckpt.glob("ckpt-*.json"))
    resumed = _quiet(build(_digits(), strategies="prd", epochs=1), "ray", checkpoint_dir=ckpt, resume=True)
    assert resumed.batches == 17
    # PRD's teacher, momentum and generator came back from the checkpoint mid-task
    assert resumed.summary["prd"]["samples_trained"] == local_run.summary["prd"]["samples_trained"]
    assert resumed.cl_metrics["prd"].matrix == local_run.cl_metrics["prd"].matrix
    assert resumed.cl_metrics["prd"].matrix_til == local_run.cl_metrics["prd"].matrix_til


def test_the_iid_stream_holds_the_same_rows_shuffled_without_tasks() -> None:
    src = _digits()
    iid = iid_source(src, seed=1, batch_size=90)
    assert iid.schema().task is None and "task" not in iid.schema().fields
    rows = [b for b in iid.batches()]
    assert not any(b.end_of_task for b in rows)
    labels = np.concatenate([b.numpy("label") for b in rows])
    src.seek(0)
    ordered = np.concatenate([b.numpy("label") for b in src.batches()])
    assert sorted(labels.tolist()) == sorted(ordered.tolist()) and labels.tolist() != ordered.tolist()
    assert np.concatenate([b.offsets for b in rows]).tolist() == list(range(len(labels)))
    # task order is gone: every batch mixes tasks' classes
    assert all(len(set(b.numpy("label").tolist())) > 2 for b in rows[:-1])
    assert sorted(iid.held_out()) == sorted(src.held_out())


def test_a_table_of_other_data_runs_as_tasks() -> None:
    """Not images: a synthetic table of 6 classes in 3 tasks (vector rows), marked task ends."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=900, n_features=12, n_informative=8, n_classes=6, n_clusters_per_class=1,
                               random_state=3)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    test = np.arange(len(y)) % 4 == 0
    schema = tf.Schema({"x": tf.Tensor((12,), "float32"), "y": "int64"}, target="y")
    batches, offset = [], 0
    for t in range(3):
        rows = np.flatnonzero(~test & (y // 2 == t))
        for i, start in enumerate(range(0, len(rows), 50)):
            part = rows[start:start + 50]
            b = tf.Batch.from_pydict({"x": tf.tensor_array(x[part]), "y": y[part]}, stream_id="table",
                                     first_offset=offset)
            offset += len(part)
            batches.append(tf.Batch(b.data, "table", start + 50 >= len(rows)))
    held = {t: tf.Batch.from_pydict({"x": tf.tensor_array(x[test & (y // 2 == t)]), "y": y[test & (y // 2 == t)]},
                                    stream_id="held") for t in range(3)}
    unlabeled = tf.Batch.from_pydict({"x": tf.tensor_array(x[~test])}, stream_id="table")
    src = tf.MemorySource(batches, schema, held_out=held, unlabeled=unlabeled)
    result = _quiet(build(src, strategies="dkvb,prd,dst,ear", epochs=2, seed=4), "local")
    for name in ("dkvb", "prd", "dst", "ear"):
        m = result.cl_metrics[name]
        assert len(m.matrix) == 3 and len(m.matrix[0]) == 3
        assert m.matrix[0][0] > 0.7, name  # the first task is learned
        assert result.summary[name]["errors"] == 0, name
    # no task column and no plan: DST's tasks are the marked ones, its schedule their counted rows
    dst = result.strategies["dst"]
    rows = [sum(len(b) for b in batches if b.offsets[0] in range(*span)) for span in _task_spans(batches)]
    assert dst.task_source == "events" and len(dst.task_keys) == 3
    assert dst.steps_per_task == dst_steps_per_task(rows, batch_size=50, minibatch=32, epochs=2)


def _task_spans(batches: list[tf.Batch]) -> list[tuple[int, int]]:
    """The offsets each task covers: a task ends with its marked batch."""
    spans, start = [], 0
    for b in batches:
        if b.end_of_task:
            spans.append((start, int(b.offsets[-1]) + 1))
            start = int(b.offsets[-1]) + 1
    return spans


def test_a_recording_replays_through_the_pipeline(tmp_path: Path, capsys: Any) -> None:
    rec = tmp_path / "d.arrow"
    assert main(["record", "images:dataset=digits,split=class-incremental,seed=2,batch_size=100", "-o", str(rec),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["replay", str(rec), "--pipeline", "images", "--runner", "local", "--no-tracking", "--no-progress",
                 "--set", "strategies=dkvb", "--set", "epochs=1", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dkvb: R = [" in out
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(doc["accuracy_matrices"]["dkvb"]["matrix"]) == 5  # one row per task: the marks were kept
    # the dataset option chooses the pipeline's own stream: refused with a recording
    assert main(["replay", str(rec), "--pipeline", "images", "--set", "dataset=digits"]) == 2


def test_compare_on_a_tiny_protocol_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "images"
    doc = compare(dataset="digits", seeds="0", inputs="pixels", methods="naive,iid", train_per_class=None,
                  test_per_class=None, epochs=1, out=out)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["protocol"]["dataset"] == "digits" and saved["protocol"]["epochs"] == 1
    assert saved["protocol"]["batch_size"] == PROTOCOL["batch_size"]
    # naive in both scenarios; the iid bound's one run gives both entries
    assert len(saved["runs"]) == 3
    entries = {(r["scenario"], r["method"]): r for r in saved["table"]}
    assert set(entries) == {("class-IL", "naive"), ("task-IL", "naive"), ("class-IL", "iid"), ("task-IL", "iid")}
    assert entries[("task-IL", "iid")]["average_accuracy"] > entries[("class-IL", "iid")]["average_accuracy"]
    assert entries[("class-IL", "iid")]["forgetting"] is None  # no tasks: no forgetting
    # fine-tuning forgets in class-IL, and the bound does better than it there
    assert entries[("class-IL", "naive")]["forgetting"] > 0.3
    assert entries[("class-IL", "iid")]["average_accuracy"] > entries[("class-IL", "naive")]["average_accuracy"]
    for r in saved["runs"]:
        assert r["train_rows"] > 0 and r["train_seconds"] > 0
        assert r["peak_rss_mib"] is None or r["peak_rss_mib"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| input | scenario | method | final acc |" in md and md.count("| pixels |") == 4
    assert doc["command"].startswith("tideflow compare images --set dataset=digits")


def test_dst_and_ear_learn_in_the_pipeline() -> None:
    """DST reads each row's task id from the task column and its schedule's length from the
    stream's plan; with no task column (class-IL) it takes task ids from the stream's task ends."""
    src = _digits()
    result = _quiet(build(src, strategies="dst,ear", epochs=3), "local")
    dst, ear = result.strategies["dst"], result.strategies["ear"]
    assert dst.task_source == "column"
    rows = src.metadata()["task_rows"]
    assert dst.steps_per_task == dst_steps_per_task(rows, batch_size=90, minibatch=32, epochs=3) > 1
    m = result.cl_metrics["dst"]
    assert m.bwt_til == 0.0  # every task's sub-network is frozen at its end
    assert min(m.matrix_til[i][i] for i in range(5)) > 0.8
    # EAR on pixels: its own MLP encoder, frozen after the first task, and something grown on it
    counts = ear.parameter_counts()
    assert counts["encoder"] > 0 and len(counts["experts"]) + ear.reconfigured >= 2
    assert result.cl_metrics["ear"].average_accuracy_til > 0.8
    assert result.summary["dst"]["errors"] == 0 and result.summary["ear"]["errors"] == 0
    plain = build(_digits(split="class-incremental"), strategies="dst", epochs=1).build().learners[0].op
    plain.bind(_digits(split="class-incremental").schema())
    assert plain.task_source == "events"


def test_compare_merges_a_method_into_an_earlier_comparison(tmp_path: Path) -> None:
    out = tmp_path / "images"
    tiny = {"dataset": "digits", "seeds": "0", "inputs": "pixels", "train_per_class": 60, "test_per_class": None,
            "epochs": 1, "out": out}
    first = compare(**tiny, methods="naive")
    # a file written before invocations were recorded (the comparison run before dst and ear came)
    old = json.loads(out.with_suffix(".json").read_text())
    del old["invocations"]
    out.with_suffix(".json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"differs in more than the methods \(epochs: 1 there, 2 here\)"):
        compare(**{**tiny, "epochs": 2}, methods="dst", merge=True)
    with pytest.raises(ValueError, match="does not exist"):
        compare(**{**tiny, "out": tmp_path / "none"}, methods="dst", merge="true")
    merged = compare(**tiny, methods="dst", merge=True)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["protocol"]["methods"] == ["naive", "dst"] and set(saved["protocol"]["settings"]) == {"naive", "dst"}
    runs = {(r["scenario"], r["method"]): r for r in saved["runs"]}
    assert set(runs) == {(s, m) for s in ("class-IL", "task-IL") for m in ("naive", "dst")}
    # naive's runs are the first invocation's, untouched
    assert [r for r in saved["runs"] if r["method"] == "naive"] == [r for r in first["runs"]]
    assert runs[("task-IL", "dst")]["learner"]["task_source"] == "column"
    assert runs[("class-IL", "dst")]["learner"]["task_source"] == "events"
    assert runs[("task-IL", "dst")]["bwt_til"] == 0.0
    # each invocation keeps its time; the comparison's is their sum
    first_inv, second_inv = saved["invocations"]
    assert first_inv["seconds"] == first["seconds"] and second_inv["methods"] == ["dst"]
    assert saved["seconds"] == pytest.approx(first["seconds"] + second_inv["seconds"])
    assert saved["job_cpu_seconds"] == pytest.approx(sum(r["job_cpu_seconds"] for r in saved["runs"]))
    assert merged["command"] == ("tideflow compare images --set dataset=digits --set train_per_class=60 "
                                 "--set epochs=1 --set seeds=0 --set inputs=pixels --set methods=naive,dst")
    md = out.with_suffix(".md").read_text()
    assert "| pixels | class-IL | dst† |" in md and "| pixels | task-IL | dst |" in md
    assert "--set methods=dst --set merge=true" in md and "added up" in md and "dst†" in md.split("|")[-1]
    assert "FWT of dst:" in md  # it predicts no class before its first batch: its FWT starts from 0
    # a method run again replaces its earlier runs, and the invocation says so
    again = compare(**tiny, methods="naive", merge=True)
    assert len(again["runs"]) == 4 and again["invocations"][-1]["replaced"] == ["naive"]
