"""Writing recordings: `RecordingWriter` and `RecordingSink`.

`RecordingWriter` writes one stream's batches, with their end-of-task marks, and
the stream's held-out sets and unlabeled rows to a recording file (the format is
`tideflow.connectors.recording_format`) and checks, as it writes, what a replay
will rely on; `RecordingSink` puts a writer at the end of a pipeline. Replaying
a recording is `tideflow.connectors.recording`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import Sink
from tideflow.connectors.recording_format import (
    PathLike,
    Tag,
    encode_header,
    encode_tag,
    file_arrow_schema,
    task_id,
)
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema


# a stream batch's tag is one of two: encoded once, not per batch
_STREAM_TAGS = {
    mark: pa.KeyValueMetadata(encode_tag(Tag("stream", mark))) for mark in (False, True)
}


class RecordingWriter:
    """Writes batches of one stream to an Arrow IPC stream file (see module docstring).

    Checks what a replay relies on as it writes, because a bad recording is only
    discovered much later, far from the code that produced it: offsets increase
    strictly across the stream's batches, every stream and held-out batch has the
    file's columns and types, and non-nullable columns hold no nulls. Empty
    batches are skipped, except a marked one: its mark is the source's word that
    a task ended, which a replay must not lose.

    `write_held_out` and `write_unlabeled` store the stream's held-out sets and
    unlabeled rows; they come before the first stream batch (the format keeps
    them there, so a file cut short keeps them whole), and unlabeled rows that
    lack some of the file's columns come first of all: the Arrow schema, which
    goes out with the first batch, must mark those columns nullable.
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
        self._header = encode_header(schema, stream_id, self.metadata)
        # the Arrow schema as it will be unless unlabeled rows lacking columns come first
        self._arrow_schema = file_arrow_schema(schema, self._header)
        self._declared = schema.arrow_schema()  # nullability as declared: what is enforced
        self._file = pa.OSFile(str(self.path), "wb")
        # opened with the first batch (or at close), when the schema's nullability is known
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._last_offset: int | None = None
        self.rows = 0
        self.batches = 0
        self.first_offset: int | None = None
        self.marks = 0
        self.held_out_rows: dict[Any, int] = {}
        self.unlabeled_rows: int | None = None
        self._stream_started = False
        self.closed = False

    @property
    def last_offset(self) -> int | None:
        return self._last_offset

    def _write(self, data: pa.RecordBatch, tag: Tag | pa.KeyValueMetadata) -> None:
        if self._writer is None:
            try:
                self._writer = pa.ipc.new_stream(self._file, self._arrow_schema)
            except BaseException:
                self.closed = True
                self._file.close()
                raise
        custom = tag if isinstance(tag, pa.KeyValueMetadata) else encode_tag(tag)
        self._writer.write_batch(data, custom_metadata=custom)

    def _conform(
        self,
        batch: Batch,
        what: str = "batch",
        *,
        partial: bool = False,
        want: pa.Schema | None = None,
    ) -> pa.RecordBatch:
        """The batch's data under the file's Arrow schema, or a ValueError saying why not.

        Column order and field nullability flags may differ (``pa.array`` marks
        every field nullable, a declared `Schema` usually does not); names and
        types may not. ``partial`` (unlabeled rows): columns of the file may be
        missing, and are stored as nulls; declared non-nullability is not enforced,
        since rows without labels are what such a part is. ``want``: the Arrow
        schema to conform to (default: the file's).
        """
        want = self._arrow_schema if want is None else want
        got = batch.schema
        want_types = {f.name: f.type for f in want}
        got_types = {f.name: f.type for f in got}
        if want_types != got_types:
            missing = [] if partial else [n for n in want_types if n not in got_types]
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
            if problems:
                raise ValueError(
                    f"recording {self.path}: {what} schema does not match the file's: {problems}"
                )
        data = batch.data
        if not partial:
            for f in self._declared:
                if not f.nullable and data.column(f.name).null_count:
                    raise ValueError(
                        f"recording {self.path}: column {f.name!r} is not nullable but holds "
                        f"nulls ({what})"
                    )
        if got.remove_metadata().equals(want.remove_metadata()):
            return data
        n = data.num_rows
        return pa.RecordBatch.from_arrays(
            [data.column(f.name) if f.name in got_types else pa.nulls(n, f.type) for f in want],
            schema=want,
        )

    @staticmethod
    def _offsets(data: pa.RecordBatch, path: Path, what: str) -> np.ndarray:
        offsets = data.column(OFFSET)
        if offsets.null_count:
            raise ValueError(f"recording {path}: {what} has null offsets")
        return offsets.to_numpy(zero_copy_only=False)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"recording {self.path} is closed")

    def write(self, batch: Batch) -> None:
        """Append one batch of the stream, with its end-of-task mark."""
        self._check_open()
        if batch.stream_id != self.stream_id:
            raise ValueError(
                f"recording {self.path} is of stream {self.stream_id!r}, "
                f"got a batch of {batch.stream_id!r}"
            )
        if not len(batch) and not batch.end_of_task:
            return
        data = self._conform(batch)
        values = self._offsets(data, self.path, "batch")
        if len(values) > 1 and not np.all(np.diff(values) > 0):
            bad = int(np.argmin(np.diff(values) > 0))
            raise ValueError(
                f"recording {self.path}: offsets must increase strictly, but the batch has "
                f"{int(values[bad])} followed by {int(values[bad + 1])}"
            )
        if len(values):
            first, last = int(values[0]), int(values[-1])
            if self._last_offset is not None and first <= self._last_offset:
                raise ValueError(
                    f"recording {self.path}: offsets must increase strictly across batches, "
                    f"but a batch starting at {first} follows offset {self._last_offset}"
                )
        self._write(data, _STREAM_TAGS[bool(batch.end_of_task)])
        self._stream_started = True
        self.marks += bool(batch.end_of_task)
        if not len(values):
            return
        if self.first_offset is None:
            self.first_offset = first
        self._last_offset = last
        self.rows += len(values)
        self.batches += 1

    def _before_stream(self, what: str) -> None:
        self._check_open()
        if self._stream_started:
            raise ValueError(
                f"recording {self.path}: {what} must be written before the stream's first batch "
                f"(a recording keeps them ahead of the stream)"
            )

    def write_held_out(self, task: Any, batch: Batch) -> None:
        """Store task ``task``'s held-out rows (`Source.held_out`): the file's columns and types,
        their own offsets; ``task`` an int, text, finite float, boolean or None (kept as such)."""
        key = task_id(task)
        self._before_stream(f"the held-out set of task {key!r}")
        if key in self.held_out_rows:
            raise ValueError(f"recording {self.path}: task {key!r} has a held-out set already")
        data = self._conform(batch, f"held-out set of task {key!r}")
        self._offsets(data, self.path, f"held-out set of task {key!r}")
        self._write(data, Tag("held_out", batch.end_of_task, key, batch.stream_id))
        self.held_out_rows[key] = data.num_rows

    def write_unlabeled(self, batch: Batch) -> None:
        """Store the stream's unlabeled rows (`Source.unlabeled`): any of the file's columns
        (the others are stored as nulls and left out again on reading), their own offsets.
        Rows that lack some of the file's columns are written first (see class docstring)."""
        self._before_stream("the unlabeled rows")
        if self.unlabeled_rows is not None:
            raise ValueError(f"recording {self.path}: it holds unlabeled rows already")
        lacking = [n for n in self.schema.fields if n not in batch.column_names]
        if self._writer is None:
            want = file_arrow_schema(self.schema, self._header, lacking)
        else:
            want = self._arrow_schema
            fixed = [n for n in lacking if not want.field(n).nullable]
            if fixed:
                raise ValueError(
                    f"recording {self.path}: unlabeled rows without {fixed} must be written "
                    f"before anything else (the file's Arrow schema, written with its first "
                    f"batch, marks the columns they lack nullable)"
                )
        data = self._conform(batch, "unlabeled rows", partial=True, want=want)
        self._offsets(data, self.path, "unlabeled rows")
        self._arrow_schema = want
        tag = Tag("unlabeled", batch.end_of_task, None, batch.stream_id, tuple(batch.column_names),
                  tuple(f.nullable for f in batch.schema))
        self._write(data, tag)
        self.unlabeled_rows = data.num_rows

    def close(self) -> None:
        """Write the end-of-stream marker; a file without it reads as truncated."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._writer is None:  # nothing was written: the schema still goes out
                self._writer = pa.ipc.new_stream(self._file, self._arrow_schema)
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
    End-of-task marks are kept with their batches; held-out sets and unlabeled
    rows are the source's, which a sink never sees (`record` keeps them).
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

