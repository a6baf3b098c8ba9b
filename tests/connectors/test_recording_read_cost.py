"""What a replay costs per stored batch: a fixed, small number of Python calls.

The read checks every stored batch (structure, tag, offsets rising within and across batches)
with array operations and reads each batch's offsets once; the count of Python calls per
batch is what this pins, since it does not depend on the machine's speed. The rows are of a
shape the project's own streams do not have (a text column of station names, a nullable
float, irregular gaps between offsets), replayed as stored, re-chunked and after a seek.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import tideflow as tf
from tideflow.connectors.recording import RecordingSource, record

SCHEMA = tf.Schema({"station": "string", "rain": "float64", "level": "float64"}, target="level",
                   nullable=("rain",))


def _batches(n: int, rows: int) -> list[tf.Batch]:
    rng = np.random.default_rng(n)
    out, first = [], 0
    for _ in range(n):
        gaps = rng.integers(1, 4, size=rows)  # offsets with holes: not a contiguous numbering
        offsets = first + np.cumsum(gaps)
        rain = rng.gamma(1.0, 2.0, size=rows)
        cols = {"offset": offsets, "station": [f"st-{i % 7}" for i in range(rows)],
                "rain": pa.array(rain, mask=rng.random(rows) < 0.1), "level": rng.normal(size=rows)}
        out.append(tf.Batch.from_pydict(cols, stream_id="gauges"))
        first = int(offsets[-1])
    return out


def _calls(fn: Any) -> int:
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_a_stored_batch_costs_a_few_python_calls_and_replays_exactly(tmp_path: Path) -> None:
    per_batch = []
    for n in (10, 60):
        written = _batches(n, 300)
        path = tmp_path / f"g{n}.arrows"
        record(tf.MemorySource(written, SCHEMA), path, progress=False)
        src = RecordingSource(path)
        got: list[tf.Batch] = []
        per_batch.append(_calls(lambda: got.extend(src.batches())))
        assert [b.to_pylist() for b in got] == [b.to_pylist() for b in written]
        assert src.position == written[-1].last_offset + 1
    # the calls 50 more stored batches cost, per batch: reading the message, checking it,
    # making the Batch, handing it on (a reader that read each batch's offsets back from its
    # column, or checked them with numpy's Python-level helpers, made more than twice as many)
    assert (per_batch[1] - per_batch[0]) / 50 <= 16, per_batch


def test_seek_and_rechunk_keep_the_position_from_offsets_read_once(tmp_path: Path) -> None:
    written = _batches(6, 50)
    path = tmp_path / "g.arrows"
    record(tf.MemorySource(written, SCHEMA), path, progress=False)
    offsets = np.concatenate([b.offsets for b in written])
    target = int(offsets[123]) - 1 if offsets[123] - 1 > offsets[122] else int(offsets[123])
    src = RecordingSource(path, batch_size=40)
    src.seek(target)
    it = src.batches()
    first = next(it)
    assert first.offsets[0] == offsets[123] and len(first) == 40
    assert first.offsets[-1] == offsets[162] and src.position == offsets[163]
    state = src.snapshot()
    rest = list(it)
    assert np.array_equal(np.concatenate([first.offsets] + [b.offsets for b in rest]), offsets[123:])
    assert [len(b) for b in rest] == [40] * 3 + [17] and src.position == offsets[-1] + 1
    again = RecordingSource(path, batch_size=40)
    again.restore(state)
    assert [b.to_pylist() for b in again.batches()] == [b.to_pylist() for b in rest]


def test_a_recording_is_opened_once_for_its_construction_and_first_replay(tmp_path: Path) -> None:
    """The fixed cost of a replay: the file's stream reader, which reads the schema message
    and its JSON header, is made once; the first replay reads through the reader the source
    made when it was constructed, and a later one (or a copy sent elsewhere) opens its own."""
    import copy
    import pickle

    written = _batches(3, 40)
    path = tmp_path / "g.arrows"
    record(tf.MemorySource(written, SCHEMA), path, progress=False)
    opens = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal opens
        code = frame.f_code
        if event == "call" and code.co_name == "open_stream" and code.co_filename.endswith("pyarrow/ipc.py"):
            opens += 1

    sys.setprofile(count)
    try:
        src = RecordingSource(path)
        first = list(src.batches())
    finally:
        sys.setprofile(None)
    assert opens == 1  # the reader before this change opened the file twice
    assert [b.to_pylist() for b in first] == [b.to_pylist() for b in written]
    # the source keeps no open file beyond its first replay, and copies read on their own
    src.seek(0)
    assert [b.to_pylist() for b in src.batches()] == [b.to_pylist() for b in written]
    for twin in (pickle.loads(pickle.dumps(RecordingSource(path))), copy.deepcopy(RecordingSource(path))):
        assert twin._opened is None and [len(b) for b in twin.batches()] == [40, 40, 40]
    closed = RecordingSource(path)
    closed.close()
    assert [len(b) for b in closed.batches()] == [40, 40, 40]
