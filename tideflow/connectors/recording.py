"""Recordings: a stream captured to disk as data, replayed exactly.

A recording is one **Arrow IPC stream file** (conventionally ``*.arrows``):
the schema message, then one record batch message per written `Batch`, then
the 8-byte end-of-stream marker. Every row keeps its int64 ``offset`` column,
and offsets increase strictly across the whole file, so a replay can
``seek(offset)`` and a checkpoint taken against a live source resumes at the
same event against its recording.

The Arrow schema's metadata key ``b"tideflow"`` holds JSON (never a pickle, so
opening a recording cannot run code)::

    {"format": "tideflow-recording", "version": 1,
     "stream_id": "...",
     "schema": {"fields": [{"name", "type", "nullable", "allow_nonfinite"}, ...],
                "target": ..., "key": ..., "task": ..., "time": ...},
     "metadata": {...}}          # the source's metadata(): generator, seed, ...

Column types themselves come from the Arrow schema (the JSON field list is a
cross-check), which is what lets fixed-shape tensor columns (images) round-trip
through Arrow's canonical ``arrow.fixed_shape_tensor`` extension type.

The IPC *stream* format (rather than the random-access file format) is used
because a stream that was cut short (a crashed writer, a partial copy) still
holds every batch before the damage: `RecordingSource` yields those and then
raises `RecordingError`, instead of losing the whole file.

>>> import tempfile, os
>>> from tideflow.stream.batch import Batch
>>> from tideflow.stream.schema import Schema
>>> tmp = tempfile.TemporaryDirectory()
>>> path = os.path.join(tmp.name, "demo.arrows")
>>> schema = Schema({"x": "float64", "y": "int64"}, target="y")
>>> with RecordingWriter(path, schema, stream_id="demo", metadata={"seed": 0}) as w:
...     w.write(Batch.from_pydict({"x": [0.5, 1.5], "y": [0, 1]}, stream_id="demo"))
...     w.write(Batch.from_pydict({"x": [2.5], "y": [1]}, stream_id="demo", first_offset=2))
>>> src = RecordingSource(path)
>>> src.schema().target, src.stream_id, src.metadata(), src.num_rows
('y', 'demo', {'seed': 0}, 3)
>>> src.seek(1)
>>> [b.offsets.tolist() for b in src.batches()]
[[1], [2]]
>>> src.position
3
>>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.connectors.base import Sink, Source
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Field, Schema

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "RecordingError",
    "RecordingSink",
    "RecordingSource",
    "RecordingWriter",
    "record",
]

FORMAT = "tideflow-recording"
FORMAT_VERSION = 1
METADATA_KEY = b"tideflow"
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_ROLES = ("target", "key", "task", "time")
_EXTENSION_NAME_KEY = b"ARROW:extension:name"


class RecordingError(ValueError):
    """A recording file is truncated, corrupt, or not a tideflow recording."""


PathLike = str | os.PathLike[str]


# -- header (JSON in the Arrow schema metadata) ---------------------------------------


def _plain(value: Any) -> Any:
    """JSON fallback for the plain-data values sources put in metadata (numpy, paths)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not plain data")


def _header(schema: Schema, stream_id: str, metadata: dict[str, Any]) -> bytes:
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "stream_id": stream_id,
        "schema": {
            "fields": [
                {
                    "name": f.name,
                    "type": str(f.type),
                    "nullable": f.nullable,
                    "allow_nonfinite": f.allow_nonfinite,
                }
                for f in schema.fields.values()
            ],
            **{role: getattr(schema, role) for role in _ROLES},
        },
        "metadata": metadata,
    }
    try:
        # sort_keys: the same stream and metadata give the same bytes, so a
        # recording's hash can serve as its identity.
        return json.dumps(doc, default=_plain, sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"recording metadata must be plain JSON data: {exc}") from None


@dataclass(frozen=True)
class _Header:
    stream_id: str
    schema: Schema
    metadata: dict[str, Any]


def _parse_header(path: Path, arrow_schema: pa.Schema) -> _Header:
    raw = (arrow_schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise RecordingError(
            f"{path}: not a tideflow recording (no {METADATA_KEY.decode()!r} schema metadata)"
        )
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
        version = doc["version"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"format version {version!r}; this tideflow reads up to {FORMAT_VERSION}"
            )
        stream_id = doc["stream_id"]
        if not isinstance(stream_id, str):
            raise ValueError("stream_id is not a string")
        meta = doc.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
        sdoc = doc["schema"]
        declared = {f["name"]: f for f in sdoc["fields"]}
        roles = {role: sdoc.get(role) for role in _ROLES}
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordingError(f"{path}: unreadable tideflow header: {exc}") from None

    if OFFSET not in arrow_schema.names or arrow_schema.field(OFFSET).type != pa.int64():
        raise RecordingError(f"{path}: recording has no int64 {OFFSET!r} column")
    data_fields = [f for f in arrow_schema if f.name != OFFSET]
    if [f.name for f in data_fields] != list(declared):
        raise RecordingError(
            f"{path}: header fields {list(declared)} do not match the stored columns "
            f"{[f.name for f in data_fields]}"
        )
    spec: dict[str, Field] = {}
    for f in data_fields:
        if f.metadata and _EXTENSION_NAME_KEY in f.metadata:
            # pyarrow hands back the storage type when it does not know an
            # extension; tensors would then silently turn into flat lists.
            name = f.metadata[_EXTENSION_NAME_KEY].decode(errors="replace")
            raise RecordingError(
                f"{path}: column {f.name!r} uses Arrow extension type {name!r}, "
                f"which this pyarrow ({pa.__version__}) does not register"
            )
        d = declared[f.name]
        spec[f.name] = Field(
            f.name, f.type, nullable=bool(d.get("nullable", f.nullable)),
            allow_nonfinite=bool(d.get("allow_nonfinite", False)),
        )
    try:
        schema = Schema(spec, **roles)
    except ValueError as exc:
        raise RecordingError(f"{path}: header roles do not fit the columns: {exc}") from None
    return _Header(stream_id, schema, meta)


# -- writing ------------------------------------------------------------------------------


class RecordingWriter:
    """Writes batches of one stream to an Arrow IPC stream file (see module docstring).

    Checks what a replay relies on as it writes, because a bad recording is only
    discovered much later, far from the code that produced it: offsets increase
    strictly across the whole file, every batch has the file's columns and
    types, and non-nullable columns hold no nulls. Empty batches are skipped.
    """

    def __init__(
        self,
        path: PathLike,
        schema: Schema,
        *,
        stream_id: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.stream_id = stream_id
        self.metadata = dict(metadata or {})
        header = _header(schema, stream_id, self.metadata)
        self._arrow_schema = schema.arrow_schema().with_metadata({METADATA_KEY: header})
        self._file = pa.OSFile(str(self.path), "wb")
        try:
            self._writer = pa.ipc.new_stream(self._file, self._arrow_schema)
        except BaseException:
            self._file.close()
            raise
        self._last_offset: int | None = None
        self.rows = 0
        self.batches = 0
        self.first_offset: int | None = None
        self.closed = False

    @property
    def last_offset(self) -> int | None:
        return self._last_offset

    def _conform(self, batch: Batch) -> pa.RecordBatch:
        """The batch's data under the file's Arrow schema, or a ValueError saying why not.

        Column order and field nullability flags may differ (``pa.array`` marks
        every field nullable, a declared `Schema` usually does not); names and
        types may not.
        """
        want = self._arrow_schema
        got = batch.schema
        want_types = {f.name: f.type for f in want}
        got_types = {f.name: f.type for f in got}
        if want_types != got_types:
            missing = [n for n in want_types if n not in got_types]
            extra = [n for n in got_types if n not in want_types]
            wrong = [
                f"{n}: {got_types[n]} (file has {t})"
                for n, t in want_types.items()
                if n in got_types and got_types[n] != t
            ]
            problems = "; ".join(
                p for p in (
                    f"missing {missing}" if missing else "",
                    f"unexpected {extra}" if extra else "",
                    f"wrong types {wrong}" if wrong else "",
                ) if p
            )
            raise ValueError(
                f"recording {self.path}: batch schema does not match the file's: {problems}"
            )
        data = batch.data
        for f in want:
            if not f.nullable and data.column(f.name).null_count:
                raise ValueError(
                    f"recording {self.path}: column {f.name!r} is not nullable but holds nulls"
                )
        if got.remove_metadata().equals(want.remove_metadata()):
            return data
        return pa.RecordBatch.from_arrays([data.column(f.name) for f in want], schema=want)

    def write(self, batch: Batch) -> None:
        if self.closed:
            raise ValueError(f"recording {self.path} is closed")
        if batch.stream_id != self.stream_id:
            raise ValueError(
                f"recording {self.path} is of stream {self.stream_id!r}, "
                f"got a batch of {batch.stream_id!r}"
            )
        if not len(batch):
            return
        data = self._conform(batch)
        offsets = data.column(OFFSET)
        if offsets.null_count:
            raise ValueError(f"recording {self.path}: batch has null offsets")
        values = offsets.to_numpy(zero_copy_only=False)
        if len(values) > 1 and not np.all(np.diff(values) > 0):
            bad = int(np.argmin(np.diff(values) > 0))
            raise ValueError(
                f"recording {self.path}: offsets must increase strictly, but the batch has "
                f"{int(values[bad])} followed by {int(values[bad + 1])}"
            )
        first, last = int(values[0]), int(values[-1])
        if self._last_offset is not None and first <= self._last_offset:
            raise ValueError(
                f"recording {self.path}: offsets must increase strictly across batches, "
                f"but a batch starting at {first} follows offset {self._last_offset}"
            )
        self._writer.write_batch(data)
        if self.first_offset is None:
            self.first_offset = first
        self._last_offset = last
        self.rows += len(values)
        self.batches += 1

    def close(self) -> None:
        """Write the end-of-stream marker; a file without it reads as truncated."""
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.close()
        finally:
            self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordingSink(Sink):
    """A `Sink` that records what reaches it, so a pipeline can keep its output.

    The file is opened on the first batch: a sink is declared before anything
    runs, when the stream id and (without ``schema``) the columns are not known
    yet. Without ``schema`` it is inferred from the first batch, with no roles.
    If no batch ever arrives and no ``schema`` was given, no file is written.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        schema: Schema | None = None,
        stream_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self._schema = schema
        self._stream_id = stream_id
        self._metadata = dict(metadata or {})
        self.writer: RecordingWriter | None = None

    def _open(self, schema: Schema, stream_id: str) -> RecordingWriter:
        self.writer = RecordingWriter(
            self.path, schema, stream_id=stream_id, metadata=self._metadata
        )
        return self.writer

    def write(self, batch: Batch) -> None:
        writer = self.writer
        if writer is None:
            schema = self._schema if self._schema is not None else Schema.infer(batch.schema)
            writer = self._open(schema, self._stream_id or batch.stream_id)
        writer.write(batch)

    def close(self) -> None:
        if self.writer is None and self._schema is not None:
            self._open(self._schema, self._stream_id or "stream")
        if self.writer is not None:
            self.writer.close()

    def params(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def describe(self) -> str:
        return f"RecordingSink({str(self.path)!r})"


# -- reading ------------------------------------------------------------------------------


def _seconds(column: pa.Array) -> np.ndarray:
    """Event times as float seconds (NaN for nulls), for pacing a replay."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[t.unit]
        ints = column.cast(pa.int64())
    elif pa.types.is_date32(t):
        scale, ints = 86400.0, column.cast(pa.int32())
    elif pa.types.is_date64(t):
        scale, ints = 1e-3, column.cast(pa.int64())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        scale, ints = 1.0, column
    else:
        raise ValueError(f"cannot pace a replay by a time column of type {t}")
    filled = pc.fill_null(ints.cast(pa.float64()), float("nan"))
    return filled.to_numpy(zero_copy_only=False) * scale


def _pace_type_ok(t: pa.DataType) -> bool:
    return (
        pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_date(t)
        or pa.types.is_integer(t) or pa.types.is_floating(t)
    )


@contextmanager
def _open_stream(
    path: Path,
) -> Iterator[tuple[pa.MemoryMappedFile, pa.ipc.RecordBatchStreamReader, int]]:
    """(memory map, stream reader, file size) of a recording, errors named after the file."""
    try:
        mm = pa.memory_map(str(path), "r")
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise RecordingError(f"{path}: cannot open recording: {exc}") from None
    try:
        size = mm.size()
        try:
            reader = pa.ipc.open_stream(mm)
        except (pa.ArrowException, OSError) as exc:
            raise RecordingError(
                f"{path}: not a readable Arrow IPC stream "
                f"(empty, truncated or corrupt header): {exc}"
            ) from None
        yield mm, reader, size
    finally:
        # Batches already handed out keep their mapped region alive.
        mm.close()


@dataclass(frozen=True)
class _Entry:
    """One stored batch, as far as seeking needs to know it."""

    first: int
    last: int
    rows: int


class RecordingSource(Source):
    """Replays a recording as a `Source` (see module docstring).

    Args:
        path: the ``.arrows`` file.
        batch_size: re-chunk to this many rows per batch (the last may be
            shorter); None keeps the batches as they were written.
        speed: None replays as fast as possible; ``k`` replays at ``k`` times
            real time by the schema's ``time`` column (event time advances
            ``k`` times faster than wall time), to exercise a pipeline as a live
            stream would.

    The file is memory-mapped, so batches (tensor columns included) reach the
    pipeline without a copy, and skipping batches on a seek costs only their
    message headers. The file is assumed not to change while it is open.
    """

    kind = "recording"

    def __init__(
        self,
        path: PathLike,
        *,
        batch_size: int | None = None,
        speed: float | None = None,
    ) -> None:
        self.path = Path(path)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.batch_size = batch_size
        self.speed = speed
        with _open_stream(self.path) as (_, reader, _):
            self._arrow_schema = reader.schema
        header = _parse_header(self.path, self._arrow_schema)
        self.stream_id = header.stream_id
        self._schema = header.schema
        self._metadata = header.metadata
        if speed is not None:
            tcol = self._schema.time
            if tcol is None:
                raise ValueError(
                    f"{self.path}: speed={speed} needs a time column to pace by, "
                    f"but the recording's schema declares none"
                )
            if not _pace_type_ok(self._schema.fields[tcol].type):
                raise ValueError(
                    f"{self.path}: cannot pace a replay by time column {tcol!r} of type "
                    f"{self._schema.fields[tcol].type}"
                )
        # None: not sought yet, start at the beginning of the file.
        self._target: int | None = None
        self._epoch = 0
        self._index_cache: tuple[list[_Entry], RecordingError | None] | None = None

    # -- low-level reading --------------------------------------------------------
    def _stored(self) -> Iterator[pa.RecordBatch]:
        """Every stored record batch, checked; raises RecordingError at the first damage.

        The checks are what the writer guarantees, so a violation means the
        file was damaged or not written by tideflow; the batches before it are
        still yielded, because they are intact.
        """
        with _open_stream(self.path) as (mm, reader, size):
            if not reader.schema.equals(self._arrow_schema, check_metadata=True):
                raise RecordingError(f"{self.path}: the file changed since it was opened")
            last: int | None = None
            end_of_good = mm.tell()
            n = 0
            while True:
                try:
                    rb = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    raise RecordingError(
                        f"{self.path}: damaged after {n} complete batches "
                        f"(byte {end_of_good} of {size}): {exc}"
                    ) from None
                try:
                    rb.validate()
                except (pa.ArrowException, ValueError) as exc:
                    raise RecordingError(f"{self.path}: batch {n} is corrupt: {exc}") from None
                col = rb.column(OFFSET)
                if col.null_count:
                    raise RecordingError(f"{self.path}: batch {n} has null offsets")
                offs = col.to_numpy(zero_copy_only=False)
                backwards = last is not None and len(offs) and offs[0] <= last
                if backwards or (len(offs) > 1 and not np.all(np.diff(offs) > 0)):
                    raise RecordingError(
                        f"{self.path}: offsets do not increase strictly in batch {n}"
                    )
                if len(offs):
                    last = int(offs[-1])
                end_of_good = mm.tell()
                n += 1
                yield rb
            # A clean end of the reader is not proof of a complete file: a cut
            # that removes exactly the end-of-stream marker also reads as the end.
            if size - end_of_good != len(_EOS) or mm.tell() != size:
                raise RecordingError(
                    f"{self.path}: does not end with the end-of-stream marker after {n} complete "
                    f"batches (truncated, trailing bytes, or the writer was not closed)"
                )

    def _index(self) -> tuple[list[_Entry], RecordingError | None]:
        """(first, last, rows) of each intact stored batch, and the damage found, if any."""
        if self._index_cache is None:
            entries: list[_Entry] = []
            damage: RecordingError | None = None
            try:
                for rb in self._stored():
                    if rb.num_rows:
                        offs = rb.column(OFFSET)
                        first, last = int(offs[0].as_py()), int(offs[-1].as_py())
                        entries.append(_Entry(first, last, rb.num_rows))
            except RecordingError as exc:
                damage = exc
            self._index_cache = (entries, damage)
        return self._index_cache

    # -- Source contract ------------------------------------------------------------
    def schema(self) -> Schema:
        return self._schema

    def metadata(self) -> dict[str, Any]:
        """The metadata stored at recording time (the recorded source's ``metadata()``)."""
        return json.loads(json.dumps(self._metadata))

    def params(self) -> dict[str, Any]:
        return {"path": str(self.path), "batch_size": self.batch_size, "speed": self.speed}

    @property
    def num_rows(self) -> int:
        """Rows in the whole recording (a scan of batch headers; cached).

        Not ``__len__``: iterating a source yields batches, not rows, and
        ``list(source)`` would call ``__len__`` (and fail on a damaged file)
        before yielding the intact batches.
        """
        entries, damage = self._index()
        if damage is not None:
            raise damage
        return sum(e.rows for e in entries)

    def seek(self, offset: int) -> None:
        """Make the next batch start at the first row whose offset is >= ``offset``.

        Takes effect at once, also for an iterator from `batches` that is in use.
        """
        self._target = int(offset)
        self._epoch += 1

    @property
    def position(self) -> int:
        """The offset of the next row to be yielded (one past the last row at the end)."""
        entries, _ = self._index()
        target = self._target
        if not entries:
            return target if target is not None else 0
        if target is None:
            return entries[0].first
        i = bisect_left([e.last for e in entries], target)
        if i == len(entries):
            return max(target, entries[-1].last + 1)
        if target <= entries[i].first:
            return entries[i].first
        # Inside stored batch i, where offsets may have gaps: look at its rows.
        for j, rb in enumerate(self._stored()):
            if j == i:
                offs = rb.column(OFFSET).to_numpy(zero_copy_only=False)
                return int(offs[np.searchsorted(offs, target, side="left")])
        return target  # unreachable unless the file changed

    def batches(self) -> Iterator[Batch]:
        while True:
            epoch = self._epoch
            restarted = False
            replay = self._replay(self._target)
            try:
                for batch in replay:
                    # Position moves before the consumer sees the batch, so a
                    # snapshot taken while holding it resumes after it.
                    self._target = int(batch.last_offset) + 1  # type: ignore[arg-type]
                    yield batch
                    if self._epoch != epoch:
                        restarted = True
                        break
            finally:
                replay.close()
            if not restarted:
                return

    def _replay(self, target: int | None) -> Iterator[Batch]:
        """Batches from ``target`` on, re-chunked and paced; damage raises after the intact rows."""
        pending: list[Batch] = []
        pending_rows = 0
        pacer = _Pacer(self.speed, self._schema.time) if self.speed is not None else None
        size = self.batch_size

        def emit(parts: list[Batch]) -> Batch:
            out = parts[0] if len(parts) == 1 else Batch.concat(parts)
            if pacer is not None:
                pacer.wait(out)
            return out

        try:
            for rb in self._stored():
                batch = Batch(rb, self.stream_id)
                if target is not None and len(batch):
                    offs = rb.column(OFFSET)
                    if int(offs[-1].as_py()) < target:
                        continue
                    if int(offs[0].as_py()) < target:
                        values = offs.to_numpy(zero_copy_only=False)
                        start = int(np.searchsorted(values, target, side="left"))
                        batch = batch.slice(start)
                if not len(batch):
                    continue
                if size is None:
                    yield emit([batch])
                    continue
                while len(batch):
                    take = batch.slice(0, size - pending_rows)
                    pending.append(take)
                    pending_rows += len(take)
                    batch = batch.slice(len(take))
                    if pending_rows == size:
                        parts, pending, pending_rows = pending, [], 0
                        yield emit(parts)
        except RecordingError:
            if pending:
                yield emit(pending)
            raise
        if pending:
            yield emit(pending)


class _Pacer:
    """Sleeps so that event time advances ``speed`` times faster than wall time.

    A batch is released when its latest event would have happened: a live
    source cannot deliver a batch before its last row exists.
    """

    def __init__(self, speed: float, time_column: str | None) -> None:
        if time_column is None:
            raise ValueError("pacing needs a time column")
        self.speed = speed
        self.column = time_column
        self.t0: float | None = None
        self.e0: float | None = None

    def wait(self, batch: Batch) -> None:
        secs = _seconds(batch.column(self.column))
        if not len(secs) or np.all(np.isnan(secs)):
            return
        if self.t0 is None:
            self.t0 = time.monotonic()
            self.e0 = float(np.nanmin(secs))
        due = self.t0 + (float(np.nanmax(secs)) - self.e0) / self.speed  # type: ignore[operator]
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# -- recording a source -------------------------------------------------------------------


def record(
    source: Source,
    path: PathLike,
    *,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``source``'s batches (from its current position) to a recording at ``path``.

    Returns ``{"path", "rows", "batches", "first_offset", "last_offset"}``;
    the offsets are None when nothing was written. ``max_batches`` bounds an
    endless source (a generator, a live feed). Empty batches are not counted.
    """
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0, got {max_batches}")
    writer = RecordingWriter(
        path, source.schema(), stream_id=source.stream_id, metadata=source.metadata()
    )
    with writer:
        if progress:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            columns = [SpinnerColumn(), TextColumn("[bold]recording[/] {task.description}")]
            if max_batches is not None:
                columns.append(BarColumn())
            columns += [
                TextColumn("{task.completed} batches, {task.fields[rows]} rows"),
                TimeElapsedColumn(),
            ]
            with Progress(*columns, transient=False) as bar:
                task = bar.add_task(f"{source.stream_id} → {path}", total=max_batches, rows=0)
                def tick() -> None:
                    bar.update(task, completed=writer.batches, rows=writer.rows)

                _copy(source, writer, max_batches, tick)
        else:
            _copy(source, writer, max_batches, None)
    return {
        "path": str(writer.path),
        "rows": writer.rows,
        "batches": writer.batches,
        "first_offset": writer.first_offset,
        "last_offset": writer.last_offset,
    }


def _copy(
    source: Source,
    writer: RecordingWriter,
    max_batches: int | None,
    tick: Callable[[], None] | None,
) -> None:
    if max_batches == 0:
        return
    it = source.batches()
    try:
        for batch in it:
            writer.write(batch)
            if tick is not None:
                tick()
            if max_batches is not None and writer.batches >= max_batches:
                break
    finally:
        # Closing the generator releases what it holds (files, connections)
        # when max_batches stops an endless source.
        close = getattr(it, "close", None)
        if close is not None:
            close()
