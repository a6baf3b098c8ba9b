"""The recording file format: an Arrow IPC stream whose schema carries a JSON header.

A recording (`tideflow.connectors.recording`) is one **Arrow IPC stream file**
(conventionally ``*.arrows``): the schema message, then one record batch message
per written part, then the 8-byte end-of-stream marker. Every row keeps its
int64 ``offset`` column.

The Arrow schema's metadata key ``b"tideflow"`` holds JSON (never a pickle, so
opening a recording cannot run code)::

    {"format": "tideflow-recording", "version": 2,
     "stream_id": "...",
     "schema": {"fields": [{"name", "type", "nullable", "allow_nonfinite"}, ...],
                "target": ..., "key": ..., "task": ..., "time": ...},
     "metadata": {...}}          # the source's metadata(): generator, seed, ...

Column types themselves come from the Arrow schema (the JSON field list is a
cross-check), which is what lets fixed-shape tensor columns (images) round-trip
through Arrow's canonical ``arrow.fixed_shape_tensor`` extension type. Which
columns may hold nulls is the JSON's word, not the Arrow schema's (below).

**Version 2** keeps what a task stream has besides its batches. Every record
batch message carries JSON under the same key in its own custom metadata, its
*tag*::

    {"part": "held_out", "task": 3, "stream_id": "...", "end_of_task": false}
    {"part": "unlabeled", "columns": ["offset", "image"], "nullable": [true, true],
     "stream_id": "...", "end_of_task": false}
    {"part": "stream", "end_of_task": true}

* ``held_out`` messages hold one task's held-out rows each (`Source.held_out`); the
  task id is a JSON scalar, so an int stays an int and a text stays a text.
* the one ``unlabeled`` message holds the rows without their labels
  (`Source.unlabeled`); ``columns`` are the columns those rows had, in their
  order, with their Arrow nullability flags, and the columns they lack are
  stored as nulls. Those columns (the target, the task column) are therefore
  nullable in the *Arrow* schema while the JSON header keeps each field's own
  nullability, which the writer enforces on the stream and the held-out rows
  and the reader puts back on every batch it hands out; the unlabeled rows
  are the file's first batch, since the Arrow schema goes out before it. One
  file rather than a sidecar: a recording stays one thing to copy, checksum
  and damage check, and every part of it is memory-mapped the same way.
* ``stream`` messages are the stream's batches with the source's end-of-task mark
  (`Batch.end_of_task`). A marked batch may have no rows (a data path can filter a
  task's last rows away and keep the mark); the mark then belongs to the rows before.

Unlabeled and held-out parts come before the first stream message, so a
recording cut short keeps them whole whenever it keeps any of the stream, and a
reader finds them without reading the stream. Offsets increase strictly across
the stream messages only: the parts have their own offsets.

**Version 1** files (no tags) hold stream batches only, without marks, held-out
sets or unlabeled rows; they still read (`LACKS_V1` says what they do not keep).

The IPC *stream* format (rather than the random-access file format) is used
because a stream that was cut short (a crashed writer, a partial copy) still
holds every batch before the damage: a reader can yield those and then raise
`RecordingError`, instead of losing the whole file.

This module encodes and checks the header and the tags and opens the file;
writing batches is `tideflow.connectors.recording_writer`, replaying them
`tideflow.connectors.recording`.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import OFFSET
from tideflow.stream.schema import Field, Schema

FORMAT = "tideflow-recording"
FORMAT_VERSION = 2
METADATA_KEY = b"tideflow"
"""The key of the JSON header in the schema's metadata and of the tag in each batch's."""
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The IPC end-of-stream marker: the last 8 bytes of every complete recording."""
_ROLES = ("target", "key", "task", "time")
_EXTENSION_NAME_KEY = b"ARROW:extension:name"


LACKS_V1 = ("end-of-task marks", "held-out sets", "unlabeled rows")
"""What a version 1 recording does not keep (its source may have had them)."""
PARTS = ("stream", "held_out", "unlabeled")


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


def encode_header(schema: Schema, stream_id: str, metadata: dict[str, Any]) -> bytes:
    """The header JSON of a recording (see module docstring); ValueError if the metadata
    is not plain data."""
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
class Header:
    """A recording's header, checked against its Arrow schema."""

    stream_id: str
    schema: Schema
    metadata: dict[str, Any]
    version: int = FORMAT_VERSION

    @property
    def lacks(self) -> tuple[str, ...]:
        """What this recording's format does not keep (empty for the current format)."""
        return LACKS_V1 if self.version < 2 else ()


def parse_header(path: Path, arrow_schema: pa.Schema) -> Header:
    """The header of the recording at ``path`` whose Arrow schema is ``arrow_schema``.

    Raises `RecordingError` when the file is not a tideflow recording, is of a newer
    format version, or its header does not fit its stored columns.
    """
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
        known = isinstance(version, int) and not isinstance(version, bool)
        if not known or not 1 <= version <= FORMAT_VERSION:
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

    # one pass over the stored fields (each field read from Arrow costs a wrapper object)
    stored = [(f.name, f.type, f.nullable, f.metadata) for f in arrow_schema]
    if sum(name == OFFSET for name, *_ in stored) != 1 or arrow_schema.field(OFFSET).type != pa.int64():
        raise RecordingError(f"{path}: recording has no int64 {OFFSET!r} column")
    data_fields = [f for f in stored if f[0] != OFFSET]
    if [f[0] for f in data_fields] != list(declared):
        raise RecordingError(
            f"{path}: header fields {list(declared)} do not match the stored columns "
            f"{[f[0] for f in data_fields]}"
        )
    spec: dict[str, Field] = {}
    for name, type_, nullable, fmeta in data_fields:
        if fmeta and _EXTENSION_NAME_KEY in fmeta:
            # pyarrow hands back the storage type when it does not know an
            # extension; tensors would then silently turn into flat lists.
            ext = fmeta[_EXTENSION_NAME_KEY].decode(errors="replace")
            raise RecordingError(
                f"{path}: column {name!r} uses Arrow extension type {ext!r}, "
                f"which this pyarrow ({pa.__version__}) does not register"
            )
        d = declared[name]
        spec[name] = Field(
            name, type_, nullable=bool(d.get("nullable", nullable)),
            allow_nonfinite=bool(d.get("allow_nonfinite", False)),
        )
    try:
        schema = Schema(spec, **roles)
    except ValueError as exc:
        raise RecordingError(f"{path}: header roles do not fit the columns: {exc}") from None
    return Header(stream_id, schema, meta, version)


# -- Arrow schemas ---------------------------------------------------------------------------


def file_arrow_schema(
    schema: Schema, header: bytes, nullable: Iterable[str] = ()
) -> pa.Schema:
    """The Arrow schema a recording is written with: ``schema``'s, also ``nullable`` where
    the unlabeled rows lack a column (stored as nulls; the JSON header keeps the field's own
    nullability), with the header as schema metadata."""
    extra = set(nullable)
    return pa.schema(
        [pa.field(OFFSET, pa.int64(), nullable=False)]
        + [
            pa.field(f.name, f.type, nullable=f.nullable or f.name in extra)
            for f in schema.fields.values()
        ],
        metadata={METADATA_KEY: header},
    )


def batch_arrow_schema(stored: pa.Schema, schema: Schema) -> pa.Schema:
    """The stored Arrow schema with each data field's nullability as the header declares it:
    what the batches a reader hands out carry, so a replayed batch has the schema a live one
    had (a version 1 file already stores it so)."""
    return pa.schema(
        [
            f if f.name == OFFSET else f.with_nullable(schema.fields[f.name].nullable)
            for f in stored
        ],
        metadata=stored.metadata,
    )


# -- tags (JSON in each record batch's custom metadata, version 2) ----------------------------


@dataclass(frozen=True)
class Tag:
    """What one stored record batch is: a stream batch (with its end-of-task mark), one
    task's held-out rows, or the unlabeled rows (with the columns they had)."""

    part: str = "stream"
    end_of_task: bool = False
    task: Any = None
    stream_id: str | None = None
    columns: tuple[str, ...] | None = None
    nullable: tuple[bool, ...] | None = None


def task_id(task: Any) -> Any:
    """A held-out set's task id as the JSON scalar it is stored as (numpy scalars become
    Python ones); ValueError for what JSON would not give back as the same key."""
    if isinstance(task, np.generic):
        task = task.item()
    if task is None or isinstance(task, (bool, int, str)):
        return task
    if isinstance(task, float) and np.isfinite(task):
        return task
    raise ValueError(
        f"held-out task id {task!r} ({type(task).__name__}) cannot be stored in a recording: "
        f"task ids must be ints, texts, finite floats, booleans or None"
    )


def encode_tag(tag: Tag) -> dict[bytes, bytes]:
    """A record batch's custom metadata for ``tag``."""
    doc: dict[str, Any] = {"part": tag.part, "end_of_task": bool(tag.end_of_task)}
    if tag.part == "held_out":
        doc["task"] = task_id(tag.task)
    if tag.part != "stream":
        doc["stream_id"] = tag.stream_id
    if tag.part == "unlabeled":
        doc["columns"] = list(tag.columns or ())
        doc["nullable"] = [bool(v) for v in (tag.nullable or ())]
    return {METADATA_KEY: json.dumps(doc, sort_keys=True, allow_nan=False).encode()}


def parse_tag(path: Path, n: int, raw: bytes | None) -> Tag:
    """The tag of stored record batch ``n`` from the JSON in its custom metadata (version 2)."""
    if raw is None:
        raise RecordingError(f"{path}: batch {n} has no tideflow tag (not written by tideflow)")
    try:
        doc = json.loads(raw)
        part = doc["part"]
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}")
        end = doc.get("end_of_task", False)
        if not isinstance(end, bool):
            raise ValueError("end_of_task is not a boolean")
        stream_id = doc.get("stream_id")
        if stream_id is not None and not isinstance(stream_id, str):
            raise ValueError("stream_id is not a string")
        columns = nullable = None
        if part == "unlabeled":
            columns, nullable = doc["columns"], doc["nullable"]
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise ValueError("columns is not a list of names")
            if not isinstance(nullable, list) or len(nullable) != len(columns) or not all(
                isinstance(v, bool) for v in nullable
            ):
                raise ValueError("nullable is not one boolean per column")
            columns, nullable = tuple(columns), tuple(nullable)
        task = task_id(doc["task"]) if part == "held_out" else None
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordingError(f"{path}: batch {n} has an unreadable tag: {exc}") from None
    return Tag(part, end, task, stream_id, columns, nullable)


# -- opening a file ------------------------------------------------------------------------


def open_reader(path: Path) -> tuple[pa.MemoryMappedFile, pa.ipc.RecordBatchStreamReader, int]:
    """(memory map, stream reader, file size) of a recording, errors named after the file; the
    caller closes the map (`open_stream` does)."""
    try:
        mm = pa.memory_map(str(path), "r")
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise RecordingError(f"{path}: cannot open recording: {exc}") from None
    try:
        return mm, pa.ipc.open_stream(mm), mm.size()
    except (pa.ArrowException, OSError) as exc:
        mm.close()
        raise RecordingError(
            f"{path}: not a readable Arrow IPC stream "
            f"(empty, truncated or corrupt header): {exc}"
        ) from None


@contextmanager
def open_stream(
    path: Path,
) -> Iterator[tuple[pa.MemoryMappedFile, pa.ipc.RecordBatchStreamReader, int]]:
    """(memory map, stream reader, file size) of a recording, errors named after the file."""
    mm, reader, size = open_reader(path)
    try:
        yield mm, reader, size
    finally:
        # Batches already handed out keep their mapped region alive.
        mm.close()
