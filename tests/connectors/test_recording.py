"""Recordings: exact round trips, seeking, damage handling and paced replay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pytest

from tideflow.connectors.base import Source
from tideflow.connectors.recording import (
    METADATA_KEY,
    RecordingError,
    RecordingSink,
    RecordingSource,
    RecordingWriter,
    record,
)
from tideflow.stream.batch import Batch
from tideflow.stream.schema import Field, Schema, Tensor

SCHEMA = Schema({"x": "float64", "y": "int64", "link": "string"}, target="y", key="link")
_HEADER = {
    "format": "tideflow-recording",
    "version": 1,
    "stream_id": "s",
    "schema": {"fields": [{"name": "x"}]},
}


def _batch(first: int, n: int, *, stream_id: str = "s", step: int = 1) -> Batch:
    offsets = np.arange(first, first + n * step, step, dtype=np.int64)
    return Batch.from_pydict(
        {
            "offset": offsets,
            "x": offsets.astype(np.float64) / 10,
            "y": offsets % 3,
            "link": [f"l{o % 2}" for o in offsets],
        },
        stream_id=stream_id,
    )


def _write(path: Path, batches: list[Batch], schema: Schema = SCHEMA, **kw: Any) -> Path:
    kw.setdefault("stream_id", "s")
    with RecordingWriter(path, schema, **kw) as w:
        for b in batches:
            w.write(b)
    return path


def _rows(batches: list[Batch]) -> list[dict[str, Any]]:
    return [r for b in batches for r in b.to_pylist()]


@pytest.fixture
def four(tmp_path: Path) -> tuple[Path, list[Batch]]:
    """Four stored batches of 5 rows, offsets 100..119."""
    batches = [_batch(100 + 5 * i, 5) for i in range(4)]
    path = _write(tmp_path / "four.arrows", batches, metadata={"generator": "test", "seed": 7})
    return path, batches


class ListSource(Source):
    """A tiny in-memory source for `record` (offsets from the batches themselves)."""

    def __init__(self, batches: list[Batch], schema: Schema, *, stream_id: str = "s") -> None:
        self._batches = batches
        self._schema = schema
        self.stream_id = stream_id
        self._pos = batches[0].first_offset if batches else 0

    def schema(self) -> Schema:
        return self._schema

    def batches(self) -> Iterator[Batch]:
        for b in self._batches:
            if not len(b):
                yield b  # sources may yield empty batches (an idle poll)
                continue
            if b.last_offset < self._pos:
                continue
            self._pos = b.last_offset + 1
            yield b

    def seek(self, offset: int) -> None:
        self._pos = offset

    @property
    def position(self) -> int:
        return self._pos

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "generator": "list", "seed": np.int64(3)}


# -- round trip ---------------------------------------------------------------------------


def test_round_trip_values_offsets_metadata_roles(four: tuple[Path, list[Batch]]) -> None:
    path, written = four
    src = RecordingSource(path)
    assert src.stream_id == "s"
    assert src.metadata() == {"generator": "test", "seed": 7}
    schema = src.schema()
    assert (schema.target, schema.key, schema.task, schema.time) == ("y", "link", None, None)
    assert schema.names == ["x", "y", "link"]
    assert schema.fields["x"].type == pa.float64() and schema.fields["link"].type == pa.string()
    assert schema.to_dict() == SCHEMA.to_dict()
    got = list(src.batches())
    assert [len(b) for b in got] == [5, 5, 5, 5]  # stored chunking is kept
    assert all(b.stream_id == "s" for b in got)
    assert _rows(got) == _rows(written)
    assert src.position == 120
    assert src.num_rows == 20
    assert list(src.batches()) == []  # exhausted: nothing more from the current position


def test_header_is_json_not_pickle(four: tuple[Path, list[Batch]]) -> None:
    path, _ = four
    with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
        doc = json.loads(reader.schema.metadata[METADATA_KEY])
    assert doc["format"] == "tideflow-recording" and doc["version"] == 2
    assert doc["stream_id"] == "s"
    assert doc["schema"]["target"] == "y" and doc["schema"]["key"] == "link"
    assert [f["name"] for f in doc["schema"]["fields"]] == ["x", "y", "link"]
    assert doc["metadata"] == {"generator": "test", "seed": 7}


def test_field_flags_survive(tmp_path: Path) -> None:
    schema = Schema(
        {"x": Field("x", pa.float64(), allow_nonfinite=True), "y": "int64", "t": "timestamp[ms]"},
        target="y",
        time="t",
        nullable=("y",),
    )
    b = Batch.from_pydict(
        {
            "x": [np.nan, 1.0],
            "y": pa.array([None, 1], pa.int64()),
            "t": pa.array([0, 1000], pa.timestamp("ms")),
        },
        stream_id="s",
    )
    src = RecordingSource(_write(tmp_path / "f.arrows", [b], schema))
    got = src.schema()
    assert got.fields["x"].allow_nonfinite and not got.fields["y"].allow_nonfinite
    assert got.fields["y"].nullable and not got.fields["x"].nullable
    assert got.time == "t" and got.fields["t"].type == pa.timestamp("ms")
    (out,) = list(src.batches())
    assert out.column("y").to_pylist() == [None, 1]
    assert np.isnan(out.numpy("x")[0])


def test_tensor_column_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=10)
    schema = Schema({"image": Tensor((4, 4)), "label": "int64"}, target="label")
    batches = [
        Batch.from_pydict(
            {"image": images[i : i + 5], "label": labels[i : i + 5]},
            stream_id="img",
            first_offset=i,
        )
        for i in (0, 5)
    ]
    path = _write(tmp_path / "img.arrows", batches, schema, stream_id="img")
    src = RecordingSource(path)
    assert isinstance(src.schema().fields["image"].type, pa.FixedShapeTensorType)
    assert src.schema().fields["image"].type.shape == [4, 4]
    got = list(src.batches())
    del src  # the batches must stay valid after the memory map is closed
    arr = np.concatenate([b.tensor("image") for b in got])
    assert arr.dtype == np.float32 and arr.shape == (10, 4, 4)
    np.testing.assert_array_equal(arr, images)
    np.testing.assert_array_equal(np.concatenate([b.numpy("label") for b in got]), labels)

    # A seek into the middle of a stored batch slices tensors along with the rows.
    src = RecordingSource(path, batch_size=4)
    src.seek(3)
    got = list(src.batches())
    assert [len(b) for b in got] == [4, 3]
    np.testing.assert_array_equal(np.concatenate([b.tensor("image") for b in got]), images[3:])


# -- seek, position, re-chunking, snapshot --------------------------------------------------


def test_seek_forwards_backwards_and_inside_a_batch(four: tuple[Path, list[Batch]]) -> None:
    path, _ = four
    src = RecordingSource(path)
    assert src.position == 100

    src.seek(112)  # inside the third stored batch (110..114)
    assert src.position == 112
    got = list(src.batches())
    assert [b.offsets.tolist() for b in got] == [[112, 113, 114], list(range(115, 120))]

    src.seek(103)  # backwards
    first = next(iter(src.batches()))
    assert first.offsets.tolist() == [103, 104]
    assert src.position == 105

    src.seek(110)  # exactly a batch boundary: no slicing
    assert next(iter(src.batches())).offsets.tolist() == list(range(110, 115))

    src.seek(0)  # before the first offset: from the start
    assert src.position == 100
    assert list(src.batches())[0].first_offset == 100

    src.seek(500)  # past the end
    assert list(src.batches()) == []
    assert src.position == 500


def test_seek_into_a_gap_between_offsets(tmp_path: Path) -> None:
    # Offsets 0, 3, 6, ... (a filtered stream keeps its original offsets).
    path = _write(tmp_path / "gaps.arrows", [_batch(0, 4, step=3), _batch(12, 4, step=3)])
    src = RecordingSource(path)
    src.seek(4)
    assert src.position == 6  # the next offset that exists, not the one asked for
    assert next(iter(src.batches())).offsets.tolist() == [6, 9]
    src.seek(10)  # between stored batches (last 9, next first 12)
    assert src.position == 12
    assert next(iter(src.batches())).first_offset == 12


def test_seek_takes_effect_in_a_running_iterator(four: tuple[Path, list[Batch]]) -> None:
    path, _ = four
    src = RecordingSource(path)
    it = src.batches()
    assert next(it).first_offset == 100
    src.seek(117)
    assert next(it).offsets.tolist() == [117, 118, 119]
    src.seek(101)
    assert next(it).offsets.tolist() == [101, 102, 103, 104]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 20, 64])
def test_rechunking_keeps_rows(four: tuple[Path, list[Batch]], batch_size: int) -> None:
    path, written = four
    got = list(RecordingSource(path, batch_size=batch_size).batches())
    assert _rows(got) == _rows(written)
    sizes = [len(b) for b in got]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    assert sum(sizes) == 20


def test_snapshot_restore_resumes_at_the_same_row(four: tuple[Path, list[Batch]]) -> None:
    path, _ = four
    src = RecordingSource(path, batch_size=3)
    it = src.batches()
    seen = [next(it), next(it)]  # offsets 100..105; position is inside stored batch 2
    state = src.snapshot()
    assert state == {"position": 106}
    assert json.loads(json.dumps(state)) == state  # plain data
    rest = list(it)

    other = RecordingSource(path, batch_size=3)
    other.restore(state)
    resumed = list(other.batches())
    assert _rows(resumed) == _rows(rest)
    assert _rows(seen + resumed) == _rows(list(RecordingSource(path).batches()))


# -- writer checks --------------------------------------------------------------------------


def test_writer_rejects_non_increasing_offsets(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "o.arrows", SCHEMA, stream_id="s") as w:
        w.write(_batch(0, 5))
        with pytest.raises(ValueError, match="increase strictly"):
            w.write(_batch(4, 3))  # overlaps the last offset
        with pytest.raises(ValueError, match="increase strictly"):
            w.write(_batch(0, 3))  # goes back
        unordered = Batch.from_pydict(
            {"offset": [10, 12, 11], "x": [0.0] * 3, "y": [0] * 3, "link": ["a"] * 3}, stream_id="s"
        )
        with pytest.raises(ValueError, match="12 followed by 11"):
            w.write(unordered)
        w.write(_batch(5, 2))  # the rejected batches left no trace
    got = list(RecordingSource(tmp_path / "o.arrows").batches())
    assert [b.offsets.tolist() for b in got] == [[0, 1, 2, 3, 4], [5, 6]]


def test_writer_rejects_wrong_schema_stream_and_nulls(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "w.arrows", SCHEMA, stream_id="s") as w:
        with pytest.raises(ValueError, match="missing \\['link'\\]"):
            w.write(Batch.from_pydict({"x": [1.0], "y": [1]}, stream_id="s"))
        with pytest.raises(ValueError, match="wrong types"):
            w.write(Batch.from_pydict({"x": [1], "y": [1], "link": ["a"]}, stream_id="s"))
        with pytest.raises(ValueError, match="stream 's'"):
            w.write(_batch(0, 2, stream_id="other"))
        with pytest.raises(ValueError, match="not nullable"):
            w.write(
                Batch.from_pydict(
                    {"x": [None, 1.0], "y": [1, 2], "link": ["a", "b"]}, stream_id="s"
                )
            )
        # Column order may differ from the declaration; the file keeps its own order.
        reordered = {"link": ["a"], "y": [1], "x": [2.0]}
        w.write(Batch.from_pydict(reordered, stream_id="s", first_offset=9))
    (b,) = list(RecordingSource(tmp_path / "w.arrows").batches())
    assert b.column_names == ["offset", "x", "y", "link"]
    assert b.to_pylist() == [{"offset": 9, "x": 2.0, "y": 1, "link": "a"}]


def test_metadata_must_be_plain_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain JSON data"):
        RecordingWriter(tmp_path / "m.arrows", SCHEMA, stream_id="s", metadata={"model": object()})
    assert not (tmp_path / "m.arrows").exists()


# -- damaged files ----------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [8, 4, 20, 200])
def test_truncated_file_yields_intact_batches_then_raises(
    four: tuple[Path, list[Batch]], tmp_path: Path, cut: int
) -> None:
    path, written = four
    data = path.read_bytes()
    damaged = tmp_path / "cut.arrows"
    damaged.write_bytes(data[:-cut])
    src = RecordingSource(damaged)  # the header is intact: opening works
    got: list[Batch] = []
    with pytest.raises(RecordingError, match="cut.arrows"):
        for b in src.batches():
            got.append(b)
    # Cutting 8 or 4 bytes removes (part of) the end marker only: every batch is intact.
    # Cutting into the last batch's body loses that batch, not the ones before it.
    intact = 4 if cut <= 8 else 3
    assert _rows(got) == _rows(written[:intact])
    with pytest.raises(RecordingError):
        src.num_rows
    assert src.position == (120 if intact == 4 else 115)


def test_truncated_file_with_rechunking_keeps_every_intact_row(
    four: tuple[Path, list[Batch]], tmp_path: Path
) -> None:
    path, written = four
    damaged = tmp_path / "cut.arrows"
    damaged.write_bytes(path.read_bytes()[:-200])
    got: list[Batch] = []
    with pytest.raises(RecordingError):
        for b in RecordingSource(damaged, batch_size=4).batches():
            got.append(b)
    assert _rows(got) == _rows(written[:3])  # 15 rows: 4+4+4 and the remaining 3


def test_garbage_metadata_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage.arrows"
    schema = pa.schema(
        [("offset", pa.int64()), ("x", pa.float64())], metadata={METADATA_KEY: b"{not json"}
    )
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, schema) as w:
        w.write_batch(pa.record_batch([pa.array([0], pa.int64()), pa.array([1.0])], schema=schema))
    with pytest.raises(RecordingError, match="garbage.arrows.*header"):
        RecordingSource(path)


@pytest.mark.parametrize(
    "header",
    [
        None,  # a plain Arrow stream, not a recording
        {**_HEADER, "version": 99},  # written by a newer tideflow
        {**_HEADER, "schema": {"fields": [{"name": "z"}]}},  # fields do not match the columns
        {**_HEADER, "schema": {"fields": [{"name": "x"}], "target": "nope"}},  # role of no field
        {**_HEADER, "stream_id": 5},
    ],
)
def test_wrong_headers_raise(tmp_path: Path, header: dict[str, Any] | None) -> None:
    path = tmp_path / "h.arrows"
    meta = None if header is None else {METADATA_KEY: json.dumps(header).encode()}
    schema = pa.schema([("offset", pa.int64()), ("x", pa.float64())], metadata=meta)
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, schema):
        pass
    with pytest.raises(RecordingError, match="h.arrows"):
        RecordingSource(path)


def test_unregistered_extension_type_is_refused(tmp_path: Path) -> None:
    # What an unknown extension looks like to pyarrow: storage type plus field
    # metadata. Reading it as a plain column would silently change its meaning.
    path = tmp_path / "ext.arrows"
    header = _HEADER
    field = pa.field("x", pa.float64(), metadata={b"ARROW:extension:name": b"acme.unknown"})
    schema = pa.schema(
        [("offset", pa.int64()), field], metadata={METADATA_KEY: json.dumps(header).encode()}
    )
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, schema):
        pass
    with pytest.raises(RecordingError, match="acme.unknown"):
        RecordingSource(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"definitely not arrow" * 50])
def test_not_arrow_at_all_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.arrows"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match="junk.arrows"):
        RecordingSource(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RecordingSource(tmp_path / "nope.arrows")


# -- paced replay -------------------------------------------------------------------------------


def _timed(tmp_path: Path, span_s: float, n_batches: int = 5, per: int = 4) -> Path:
    schema = Schema({"t": "timestamp[ms]", "v": "float64"}, time="t")
    n = n_batches * per
    ts = np.linspace(0, span_s * 1000, n).astype(np.int64) + 1_700_000_000_000
    batches = [
        Batch.from_pydict(
            {
                "t": pa.array(ts[i : i + per], pa.timestamp("ms")),
                "v": np.arange(i, i + per, dtype=np.float64),
            },
            stream_id="t",
            first_offset=i,
        )
        for i in range(0, n, per)
    ]
    return _write(tmp_path / "timed.arrows", batches, schema, stream_id="t")


def test_speed_paces_by_event_time(tmp_path: Path) -> None:
    path = _timed(tmp_path, span_s=2.0)
    start = time.monotonic()
    got = list(RecordingSource(path, speed=10).batches())
    elapsed = time.monotonic() - start
    assert sum(len(b) for b in got) == 20
    assert 0.12 <= elapsed <= 1.0, elapsed  # 2 s of events at 10x: about 0.2 s


def test_no_speed_is_as_fast_as_possible(tmp_path: Path) -> None:
    path = _timed(tmp_path, span_s=600.0)
    start = time.monotonic()
    assert sum(len(b) for b in RecordingSource(path).batches()) == 20
    assert time.monotonic() - start < 1.0


def test_speed_without_time_column_is_refused(four: tuple[Path, list[Batch]]) -> None:
    path, _ = four
    with pytest.raises(ValueError, match="time column"):
        RecordingSource(path, speed=2.0)
    with pytest.raises(ValueError, match="positive"):
        RecordingSource(path, speed=0)


# -- record() and the sink -------------------------------------------------------------------------


def test_record_counts_and_metadata(tmp_path: Path) -> None:
    batches = [_batch(0, 5), _batch(5, 0), _batch(5, 3), _batch(10, 4)]
    out = record(ListSource(batches, SCHEMA), tmp_path / "r.arrows", progress=False)
    assert out == {
        "path": str(tmp_path / "r.arrows"),
        "rows": 12,
        "batches": 3,
        "first_offset": 0,
        "last_offset": 13,
        "marks": 0,
        "held_out_rows": {},
        "unlabeled_rows": None,
    }
    src = RecordingSource(tmp_path / "r.arrows")
    meta = src.metadata()
    assert meta == {"stream_id": "s", "source": "ListSource", "generator": "list", "seed": 3}
    assert src.num_rows == 12

    capped = record(
        ListSource(batches, SCHEMA), tmp_path / "c.arrows", max_batches=2, progress=True
    )
    assert (capped["rows"], capped["batches"], capped["last_offset"]) == (8, 2, 7)

    empty = record(ListSource([], SCHEMA), tmp_path / "e.arrows", progress=False)
    counts = (empty["rows"], empty["batches"], empty["first_offset"], empty["last_offset"])
    assert counts == (0, 0, None, None)
    assert list(RecordingSource(tmp_path / "e.arrows").batches()) == []


def test_re_recording_a_recording_gives_the_same_bytes(
    four: tuple[Path, list[Batch]], tmp_path: Path
) -> None:
    path, _ = four
    out = record(RecordingSource(path), tmp_path / "again.arrows", progress=False)
    assert out["rows"] == 20 and out["batches"] == 4
    assert (tmp_path / "again.arrows").read_bytes() == path.read_bytes()


def test_recording_sink_opens_lazily_and_infers_the_schema(tmp_path: Path) -> None:
    sink = RecordingSink(tmp_path / "sink.arrows", metadata={"run": "abc"})
    assert not (tmp_path / "sink.arrows").exists()
    sink.write(_batch(0, 3, stream_id="live"))
    sink.write(_batch(3, 2, stream_id="live"))
    sink.close()
    src = RecordingSource(tmp_path / "sink.arrows")
    assert src.stream_id == "live" and src.metadata() == {"run": "abc"}
    assert src.schema().names == ["x", "y", "link"]
    assert src.num_rows == 5

    # With a declared schema the roles are kept, and an idle sink still leaves a valid file.
    idle = RecordingSink(tmp_path / "idle.arrows", schema=SCHEMA, stream_id="s")
    idle.close()
    assert RecordingSource(tmp_path / "idle.arrows").schema().target == "y"

    never = RecordingSink(tmp_path / "never.arrows")
    never.close()
    assert not (tmp_path / "never.arrows").exists()


def test_a_replay_stops_after_max_batches_with_a_progress_bar(tmp_path: Path) -> None:
    # a recording's batches have no fixed size: the progress total must not need one
    import tideflow as tf
    from river import linear_model

    path = tmp_path / "rec.arrows"
    tf.connectors.recording.record(tf.SyntheticSource("friedman-drift", n=500, batch_size=100), path,
                                   progress=False)
    result = (tf.Pipeline("r").source(RecordingSource(path)).learn(tf.RiverStrategy(linear_model.LinearRegression()))
              .run(runner="local", tracking=False, progress=True, max_batches=2, output_dir=str(tmp_path / "out")))
    assert result.batches == 2 and result.rows == 200
