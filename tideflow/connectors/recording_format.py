"""The recording file format: an Arrow IPC stream whose schema carries a JSON header.

A recording (`tideflow.connectors.recording`) is one **Arrow IPC stream file**
(conventionally ``*.arrows``): the schema message, then one record batch message
per written `Batch`, then the 8-byte end-of-stream marker. Every row keeps its
int64 ``offset`` column, and offsets increase strictly across the whole file.

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
holds every batch before the damage: a reader can yield those and then raise
`RecordingError`, instead of losing the whole file.

This module encodes and checks the header and opens the file; writing batches
is `tideflow.connectors.recording_writer`, replaying them
`tideflow.connectors.recording`.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import OFFSET
from tideflow.stream.schema import Field, Schema

FORMAT = "tideflow-recording"
FORMAT_VERSION = 1
METADATA_KEY = b"tideflow"
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The IPC end-of-stream marker: the last 8 bytes of every complete recording."""
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
    return Header(stream_id, schema, meta)


# -- opening a file ------------------------------------------------------------------------


@contextmanager
def open_stream(
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

