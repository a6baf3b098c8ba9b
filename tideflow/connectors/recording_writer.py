"""Writing recordings: `RecordingWriter` and `RecordingSink`.

`RecordingWriter` writes one stream's batches to a recording file (the format
is `tideflow.connectors.recording_format`) and checks, as it writes, what a
replay will rely on; `RecordingSink` puts a writer at the end of a pipeline.
Replaying a recording is `tideflow.connectors.recording`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import Sink
from tideflow.connectors.recording_format import METADATA_KEY, PathLike, encode_header
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema


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
        header = encode_header(schema, stream_id, self.metadata)
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

