"""Recordings keep what a task stream needs: end-of-task marks, held-out sets, unlabeled rows.

A replay must give a learner what the live stream gave it: the same batches with the same marks
(also re-chunked), the same held-out sets (so the engine evaluates the same accuracy matrix) and
the same unlabeled rows (a strategy's ``prepare``). Older (format 1) recordings still replay and
say what they lack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.connectors.base import MemorySource
from tideflow.connectors.images import ImageStream
from tideflow.connectors.recording import (
    LACKS_V1,
    METADATA_KEY,
    RecordingError,
    RecordingSource,
    RecordingWriter,
    record,
)
from tideflow.stream.batch import Batch
from tideflow.stream.schema import Schema

DATA = Path(__file__).parent / "data"


def _same(a: Batch, b: Batch) -> bool:
    """Same rows, same columns and types, same mark and stream (schema metadata aside: a replayed
    batch carries the recording's header)."""
    return (a.data.equals(b.data) and a.end_of_task == b.end_of_task and a.stream_id == b.stream_id
            and a.schema.remove_metadata().equals(b.schema.remove_metadata()))


def _marked(batches: list[Batch]) -> list[int]:
    return [int(b.last_offset) for b in batches if b.end_of_task]


# -- image streams: batches, marks, held-out sets, unlabeled rows ---------------------------------

@pytest.mark.parametrize("split", ["class-incremental", "task-incremental"])
def test_an_image_stream_replays_whole(tmp_path: Path, split: str) -> None:
    spec = dict(dataset="digits", split=split, tasks=5, seed=0)
    live = ImageStream(**spec)
    batches, held, unlabeled = list(live), live.held_out(), live.unlabeled()
    path = tmp_path / "d.arrows"
    info = record(ImageStream(**spec), path, progress=False)
    assert info["marks"] == sum(b.end_of_task for b in batches) == (4 if split == "class-incremental" else 0)
    assert info["held_out_rows"] == {t: len(b) for t, b in held.items()}
    assert info["unlabeled_rows"] == len(unlabeled) == live.num_rows

    before = pa.total_allocated_bytes()
    replay = RecordingSource(path)
    got = list(replay)
    assert len(got) == len(batches) and all(_same(a, b) for a, b in zip(batches, got))
    got_held = replay.held_out()
    assert list(got_held) == list(held) and all(type(t) is int for t in got_held)  # int stays int
    assert all(_same(held[t], got_held[t]) for t in held)
    got_unlabeled = replay.unlabeled()
    assert got_unlabeled.column_names == ["offset", "image"]  # no label (nor task) column
    assert _same(unlabeled, got_unlabeled)
    # memory-mapped: nothing of the rows was copied into Arrow's memory
    assert pa.total_allocated_bytes() - before < 64 * 1024
    assert replay.num_rows == live.num_rows and replay.lacks == ()

    # re-chunked: the same rows, each mark on the same row, no chunk across a task's end
    for size in (7, 100):
        chunks = list(RecordingSource(path, batch_size=size))
        assert Batch.concat(chunks).data.equals(Batch.concat(batches).data)
        assert _marked(chunks) == _marked(batches)
        assert all(len(c) == size or c.end_of_task or c is chunks[-1] for c in chunks)
    # a seek inside a task lands where asked; the task's mark comes with its last row
    replay.seek(250)
    assert replay.position == 250
    rest = list(replay)
    assert rest[0].first_offset == 250 and _marked(rest) == [m for m in _marked(batches) if m >= 250]
    # a recording of the recording is the same file, parts included
    record(RecordingSource(path), tmp_path / "again.arrows", progress=False)
    assert (tmp_path / "again.arrows").read_bytes() == path.read_bytes()


def test_tags_are_json(tmp_path: Path) -> None:
    """Nothing in a recording is unpickled: each batch's tag is JSON, read with plain pyarrow."""
    src = MemorySource(_stream(), SCHEMA, held_out={"spring": _held(0, "a"), 3: _held(1, "b")},
                       unlabeled=_unlabeled())
    record(src, tmp_path / "r.arrows", progress=False)
    tags = []
    with pa.ipc.open_stream(pa.memory_map(str(tmp_path / "r.arrows"))) as reader:
        while True:
            try:
                _, custom = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            tags.append(json.loads(custom[METADATA_KEY]))
    assert [t["part"] for t in tags] == ["unlabeled", "held_out", "held_out"] + ["stream"] * 6
    assert tags[0]["columns"] == ["offset", "x", "note", "at"]
    assert [t.get("task") for t in tags[1:3]] == ["spring", 3]
    assert [t["end_of_task"] for t in tags[3:]] == [False, True, False, True, True, False]


# -- the engine on a replay -------------------------------------------------------------------------

def _digits_pipeline(source: Any) -> tf.Pipeline:
    learner = tf.AvalancheStrategy("Naive", n_classes=10, hidden=32, seed=0)
    return tf.Pipeline("digits").source(source).validate().learn(learner, name="mlp")


def test_a_replay_gives_the_live_streams_accuracy_matrix(tmp_path: Path, ray_session: Any) -> None:
    spec = dict(dataset="digits", split="class-incremental", tasks=5, seed=0)
    path = tmp_path / "ci.arrows"
    record(ImageStream(**spec), path, progress=False)
    opts = dict(tracking=False, progress=False)
    live = _digits_pipeline(ImageStream(**spec)).run(runner="local", output_dir=str(tmp_path / "live"), **opts)
    m = live.cl_metrics["mlp"]
    assert len(m.matrix) == 5 and live.summary["mlp"]["task_boundaries"] == 4  # the marks made the rows
    local = _digits_pipeline(RecordingSource(path)).run(runner="local", output_dir=str(tmp_path / "l"), **opts)
    assert local.cl_metrics["mlp"].to_dict() == m.to_dict()
    assert local.evaluations == live.evaluations
    ray = _digits_pipeline(RecordingSource(path)).run(runner="ray", output_dir=str(tmp_path / "r"), **opts)
    assert ray.cl_metrics["mlp"].to_dict() == m.to_dict()


def test_record_and_replay_commands_keep_tasks(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """`tideflow record images:... -o d.arrow`, then `tideflow replay d.arrow --pipeline my.py` with
    --batch-size and --start-offset: the run is the live stream's with that batch size from there."""
    from tideflow.cli import main
    from tideflow.connectors.synthetic import source_from_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.py").write_text(
        "import tideflow as tf\n\n"
        "def build(source=None, **options):\n"
        "    learner = tf.AvalancheStrategy('Naive', n_classes=10, hidden=32, seed=0)\n"
        "    return tf.Pipeline('digits').source(source).validate().learn(learner, name='mlp')\n")
    assert main(["record", "images:dataset=digits,split=class-incremental,tasks=5,seed=1", "-o", "d.arrow",
                 "--no-progress"]) == 0
    assert main(["replay", "d.arrow", "--pipeline", "my.py", "--batch-size", "100", "--start-offset", "150",
                 "--runner", "local", "--no-tracking", "--no-progress", "--json", "replay.json"]) == 0
    doc = json.loads((tmp_path / "replay.json").read_text())
    # the recording's batches were 64 rows; re-chunked to 100 and cut at every mark, they are
    # the live stream's batches of 100 (which end at every task's end)
    live_src = ImageStream("digits", split="class-incremental", tasks=5, seed=1, batch_size=100)
    live_src.seek(150)
    live = _digits_pipeline(live_src).run(runner="local", tracking=False, progress=False,
                                          output_dir=str(tmp_path / "live"))
    assert doc["rows"] == live.rows == live_src.num_rows - 150
    assert doc["strategies"]["mlp"]["task_boundaries"] == 4
    assert doc["strategies"]["mlp"]["continual"] == json.loads(json.dumps(live.summary["mlp"]["continual"]))
    # a recording as a source spec (tideflow run --source, compare --source) is a replay too
    spec = source_from_spec("d.arrow:batch_size=100")
    assert isinstance(spec, RecordingSource) and spec.batch_size == 100
    assert {t: len(b) for t, b in spec.held_out().items()} == {t: len(b) for t, b in live_src.held_out().items()}


# -- older recordings -------------------------------------------------------------------------------

def test_a_format_1_recording_replays_and_says_what_it_lacks() -> None:
    """`data/recording_v1_digits.arrows` was written by tideflow's format 1 writer (see
    `data/make_recording_v1.py`): its batches replay; it warns that the marks and the held-out
    sets its source had are not in it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_recording_v1", DATA / "make_recording_v1.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    with pytest.warns(UserWarning, match=r"format version 1 .*end-of-task marks.*held-out sets for tasks"):
        old = RecordingSource(DATA / "recording_v1_digits.arrows")
    assert old.format_version == 1 and old.lacks == LACKS_V1
    assert old.held_out() is None and old.unlabeled() is None
    live = list(ImageStream(**maker.STREAM))
    got = list(old)
    assert [b.data.equals(a.data) for a, b in zip(live, got)] == [True] * len(live) == [True] * len(got)
    assert not any(b.end_of_task for b in got) and any(b.end_of_task for b in live)
    assert old.num_rows == 80 and old.metadata()["end_of_task_marks"] is True
    with pytest.warns(UserWarning, match="format version 1"):
        rechunked = RecordingSource(DATA / "recording_v1_digits.arrows", batch_size=32)
    chunks = list(rechunked)
    assert [len(c) for c in chunks] == [32, 32, 16]


# -- a stream of one's own: marks anywhere, parts of every kind ---------------------------------------

SCHEMA = Schema({"x": "float64", "y": "int64", "task": "string", "at": "timestamp[ms]",
                 "note": "string"}, target="y", task="task", time="at", nullable=("note",))


def _rows(first: int, n: int, task: str, *, step: int = 1) -> dict[str, Any]:
    offsets = np.arange(first, first + n * step, step, dtype=np.int64)
    return {"offset": offsets, "x": offsets / 7.0, "y": offsets % 3, "task": [task] * n,
            "at": pa.array(1_700_000_000_000 + offsets * 1000, pa.timestamp("ms")),
            "note": pa.array([None if o % 4 else f"n{o}" for o in offsets], pa.string())}


def _stream() -> list[Batch]:
    """Offsets with gaps (a filtered stream), marks where tasks end, and a marked batch without rows
    (a data path filtered a task's last rows away and kept the mark)."""
    def b(first: int, n: int, task: str, mark: bool = False, step: int = 1) -> Batch:
        return Batch(Batch.from_pydict(_rows(first, n, task, step=step), stream_id="own").data, "own", mark)

    empty = Batch(b(0, 1, "a").data.slice(0, 0), "own", True)
    return [b(0, 5, "a"), b(5, 4, "a", True, step=2), b(20, 3, "b"), empty, b(30, 6, "c", True),
            b(40, 2, "d")]


def _held(first: int, task: str) -> Batch:
    return Batch.from_pydict(_rows(first, 4, task), stream_id="own:test")


def _unlabeled() -> Batch:
    # rows without label or task column, offsets of their own, columns in an order of their own
    rows = _rows(0, 6, "-")
    return Batch.from_pydict({k: rows[k] for k in ("offset", "x", "note", "at")}, stream_id="own")


def test_marks_stay_on_their_rows_when_rechunked_and_sought(tmp_path: Path) -> None:
    path = tmp_path / "own.arrows"
    info = record(MemorySource(_stream(), SCHEMA, held_out={"spring": _held(0, "a"), np.int64(3): _held(1, "b")},
                               unlabeled=_unlabeled()), path, progress=False)
    assert (info["rows"], info["batches"], info["marks"]) == (20, 5, 3)
    src = RecordingSource(path)
    got = list(src)
    # the empty marked batch lends its mark to the rows before it: task b ends at offset 22
    assert _marked(got) == [11, 22, 35] and [len(b) for b in got] == [5, 4, 3, 6, 2]
    assert src.num_rows == 20 and src.position == 42  # held-out and unlabeled rows are not the stream's
    for size in (1, 3, 4, 100):
        chunks = list(RecordingSource(path, batch_size=size))
        assert _marked(chunks) == [11, 22, 35], size
        assert Batch.concat(chunks).data.equals(Batch.concat(got).data)
    # resuming after a task's last row does not hand its mark out again; resuming before it does
    src.seek(12)
    assert src.position == 20 and _marked(list(src)) == [22, 35]
    src.seek(23)
    assert src.position == 30 and _marked(list(src)) == [35]
    for at, first in ((22, ([22], True)), (21, ([21, 22], True))):
        again = RecordingSource(path, batch_size=2)
        again.seek(at)
        assert [(b.offsets.tolist(), b.end_of_task) for b in again][:2] == [first, ([30, 31], False)]
    # held-out task ids keep their type (a numpy int becomes an int); unlabeled rows keep their columns
    held = src.held_out()
    assert list(held) == ["spring", 3] and type(list(held)[1]) is int
    assert all(_same(Batch(h.data.cast(SCHEMA.arrow_schema()), "own:test"), held[t])
               for t, h in (("spring", _held(0, "a")), (3, _held(1, "b"))))
    assert _same(_unlabeled(), src.unlabeled())
    assert src.unlabeled().column("note").null_count == 4  # nulls of a column the rows had stay nulls


def test_paced_rechunked_replay_of_a_marked_stream(tmp_path: Path) -> None:
    path = tmp_path / "own.arrows"
    record(MemorySource(_stream(), SCHEMA), path, progress=False)
    start = time.monotonic()
    chunks = list(RecordingSource(path, batch_size=4, speed=100))
    assert time.monotonic() - start >= 0.35  # 41 s of event time at 100x
    assert _marked(chunks) == [11, 22, 35]


def test_what_does_not_fit_is_refused_clearly(tmp_path: Path) -> None:
    held = {"spring": _held(0, "a")}
    with RecordingWriter(tmp_path / "w.arrows", SCHEMA, stream_id="own") as w:
        with pytest.raises(ValueError, match="unlabeled rows.*unexpected \\['extra'\\]"):
            w.write_unlabeled(_unlabeled().with_column("extra", [1] * 6))
        with pytest.raises(ValueError, match="unlabeled rows.*wrong types"):
            w.write_unlabeled(_unlabeled().with_column("x", [1] * 6))
        with pytest.raises(ValueError, match="task ids must be"):
            w.write_held_out(("a", 1), _held(0, "a"))
        with pytest.raises(ValueError, match="task ids must be"):
            w.write_held_out(float("nan"), _held(0, "a"))
        with pytest.raises(ValueError, match="held-out set of task 'x'.*missing \\['y'\\]"):
            w.write_held_out("x", _held(0, "a").select(["x", "task", "at", "note"]))
        w.write_held_out("spring", held["spring"])
        with pytest.raises(ValueError, match="held-out set already"):
            w.write_held_out("spring", held["spring"])
        # the Arrow schema went out with the held-out set: no room for rows without y and task
        with pytest.raises(ValueError, match="without \\['y', 'task'\\] must be written before anything"):
            w.write_unlabeled(_unlabeled())
        w.write(_stream()[0])
        with pytest.raises(ValueError, match="before the stream's first batch"):
            w.write_held_out("autumn", held["spring"])
    assert list(RecordingSource(tmp_path / "w.arrows").held_out()) == ["spring"]

    class Broken(MemorySource):
        def unlabeled(self) -> Batch:
            return _unlabeled().with_column("x", ["text"] * 6)

    with pytest.raises(ValueError, match="wrong types"):
        record(Broken(_stream(), SCHEMA, held_out=held), tmp_path / "b.arrows", progress=False)
    assert not (tmp_path / "b.arrows").exists()  # no file that would replay as if it had no parts


def test_a_cut_file_keeps_its_parts_or_says_it_lost_them(tmp_path: Path) -> None:
    path = tmp_path / "own.arrows"
    record(MemorySource(_stream(), SCHEMA, held_out={"spring": _held(0, "a")}, unlabeled=_unlabeled()), path,
           progress=False)
    data = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[:-300])  # into the stream: the parts ahead of it are whole
    src = RecordingSource(cut)
    assert list(src.held_out()) == ["spring"] and len(src.unlabeled()) == 6
    got: list[Batch] = []
    with pytest.raises(RecordingError, match="cut.arrows"):
        for b in src:
            got.append(b)
    assert got and _marked(got) == [m for m in [11, 22, 35] if m <= got[-1].last_offset]
    cut.write_bytes(data[: data.index(b'"part": "unlabeled"') + 100])  # into the parts: say so
    with pytest.raises(RecordingError, match="cut.arrows"):
        RecordingSource(cut).held_out()
    with pytest.raises(RecordingError, match="cut.arrows"):
        RecordingSource(cut).unlabeled()
