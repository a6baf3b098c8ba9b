"""Recordings: a stream captured to disk as data, replayed exactly.

`record` captures a source's batches into a recording file and
`RecordingSource` replays it as a source. A recording is one Arrow IPC stream
file (conventionally ``*.arrows``) whose schema metadata holds a JSON header
(stream id, schema with its roles, the recorded source's ``metadata()``); the
format is specified in `tideflow.connectors.recording_format`, and the writer
that checks it as it writes is `tideflow.connectors.recording_writer`. This
module re-exports both, so ``from tideflow.connectors.recording import ...``
reaches every public name of recordings.

Every row keeps its int64 ``offset`` column, and offsets increase strictly
across the whole file, so a replay can ``seek(offset)`` and a checkpoint taken
against a live source resumes at the same event against its recording. A file
that was cut short (a crashed writer, a partial copy) still replays: its intact
batches come first, then `RecordingError`.

A recording keeps what a task stream needs besides its rows: each batch's
end-of-task mark (`Batch.end_of_task`; a re-chunked replay ends a chunk at every
marked batch, so no mark is lost or moved), the held-out sets per task
(`RecordingSource.held_out`) and the unlabeled rows (`RecordingSource.unlabeled`).
`record` stores them when the source has them. A recording written before they
were kept (format version 1) still replays; it warns when its metadata shows that
its source had them, and `RecordingSource.lacks` names what it does not keep.

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
>>> src.held_out() is None, src.lacks
(True, ())
>>> tmp.cleanup()
"""

from __future__ import annotations

import json
import warnings
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import Source
from tideflow.connectors.pacing import Pacer, pace_type_ok
from tideflow.connectors.recording_format import (
    FORMAT,
    FORMAT_VERSION,
    LACKS_V1,
    METADATA_KEY,
    PathLike,
    RecordingError,
    Tag,
    batch_arrow_schema,
    open_reader,
    parse_header,
)
from tideflow.connectors.recording_read import stored_batches
from tideflow.connectors.recording_writer import RecordingSink, RecordingWriter
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LACKS_V1",
    "METADATA_KEY",
    "RecordingError",
    "RecordingSink",
    "RecordingSource",
    "RecordingWriter",
    "record",
]

# the pacer's name here before it moved to `pacing`; `tideflow.connectors.weather` imports it
_Pacer = Pacer



# -- reading ------------------------------------------------------------------------------


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
            shorter, and so is a chunk that ends at an end-of-task mark); None
            keeps the batches as they were written.
        speed: None replays as fast as possible; ``k`` replays at ``k`` times
            real time by the schema's ``time`` column (event time advances
            ``k`` times faster than wall time), to exercise a pipeline as a live
            stream would.

    The file is memory-mapped, so batches (tensor columns included), held-out
    sets and unlabeled rows reach the pipeline without a copy, and skipping
    batches on a seek costs only their message headers. The file is assumed not
    to change while it is open.
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
        # the reader stays open for the first replay, which then need not open the file again
        self._opened: tuple[pa.MemoryMappedFile, Any, int] | None = open_reader(self.path)
        self._arrow_schema = self._opened[1].schema
        try:
            header = parse_header(self.path, self._arrow_schema)
        except RecordingError:
            self.close()
            raise
        self.stream_id = header.stream_id
        self._schema = header.schema
        self._metadata = header.metadata
        self.format_version = header.version
        self._lacks = header.lacks
        # What batches carry: the header's nullability (a file with unlabeled rows stores the
        # columns they lack as nullable). Only those columns can hold nulls the header forbids.
        fields = self._schema.fields
        self._relabel = any(
            f.nullable != fields[f.name].nullable for f in self._arrow_schema if f.name != OFFSET
        )
        self._batch_schema = (batch_arrow_schema(self._arrow_schema, self._schema) if self._relabel
                              else self._arrow_schema)
        self._null_checks = [
            i for i, (stored, declared) in enumerate(zip(self._arrow_schema, self._batch_schema))
            if stored.nullable and not declared.nullable
        ] if self._relabel else []
        if speed is not None:
            tcol = self._schema.time
            if tcol is None:
                raise ValueError(
                    f"{self.path}: speed={speed} needs a time column to pace by, "
                    f"but the recording's schema declares none"
                )
            if not pace_type_ok(self._schema.fields[tcol].type):
                raise ValueError(
                    f"{self.path}: cannot pace a replay by time column {tcol!r} of type "
                    f"{self._schema.fields[tcol].type}"
                )
        # None: not sought yet, start at the beginning of the file.
        self._target: int | None = None
        self._epoch = 0
        self._index_cache: tuple[list[_Entry], RecordingError | None] | None = None
        if self._lacks:
            self._warn_of_losses()

    def _warn_of_losses(self) -> None:
        """Say so when an older recording's metadata shows that its source had what it lost.

        Without such evidence it stays silent (most older recordings are of streams that had
        none of it); `lacks` always names what the format does not keep.
        """
        meta = self._metadata
        lost = []
        if meta.get("end_of_task_marks"):
            lost.append("marked the end of each task (a replay has no task boundaries from marks)")
        held = meta.get("held_out_rows")
        if held:
            tasks = ", ".join(str(t) for t in held)
            lost.append(
                f"had held-out sets for tasks {tasks} (a replay evaluates nothing: no cl_metrics)"
            )
        if not lost:
            return
        kept = ", ".join(self._lacks[:-1]) + " or " + self._lacks[-1]
        warnings.warn(
            f"{self.path} is a format version {self.format_version} recording: it keeps no "
            f"{kept}. Its source ({meta.get('source', 'unknown')}) "
            f"{' and '.join(lost)}; record the source again with this tideflow to keep them.",
            UserWarning,
            stacklevel=3,
        )

    @property
    def lacks(self) -> tuple[str, ...]:
        """What this recording's format version does not keep, whether or not its source had
        it: ``()`` for the current format, `LACKS_V1` for a version 1 file."""
        return self._lacks

    # -- low-level reading --------------------------------------------------------
    def _stored(self) -> Iterator[tuple[pa.RecordBatch, Tag, np.ndarray | None]]:
        """Every stored record batch, its tag and (stream batches) its offsets as numpy,
        checked; raises RecordingError at the first damage after the intact batches before it
        (`tideflow.connectors.recording_read`)."""
        opened, self._opened = self._opened, None
        return stored_batches(self.path, opened or open_reader(self.path), self._arrow_schema,
                              self._batch_schema if self._relabel else None, self._null_checks,
                              tagged=self.format_version >= 2)

    def _parts(self) -> Iterator[tuple[pa.RecordBatch, Tag]]:
        """The held-out and unlabeled parts: the batches ahead of the stream's first. Damage
        before that point raises, since it may hide a part; damage after it cannot."""
        if self.format_version < 2:
            return
        stored = self._stored()
        try:
            for rb, tag, _ in stored:
                if tag.part == "stream":
                    return
                yield rb, tag
        finally:
            stored.close()

    def _index(self) -> tuple[list[_Entry], RecordingError | None]:
        """(first, last, rows) of each intact stored stream batch with rows, and the damage
        found, if any."""
        if self._index_cache is None:
            entries: list[_Entry] = []
            damage: RecordingError | None = None
            try:
                for _, tag, offs in self._stored():  # held-out and unlabeled data not touched
                    if tag.part == "stream" and len(offs):  # type: ignore[arg-type]
                        entries.append(_Entry(int(offs[0]), int(offs[-1]), len(offs)))
            except RecordingError as exc:
                damage = exc
            self._index_cache = (entries, damage)
        return self._index_cache

    def close(self) -> None:
        """Close the reader kept open since construction (batches handed out stay readable)."""
        opened, self._opened = self._opened, None
        if opened is not None:
            opened[0].close()

    def __getstate__(self) -> dict[str, Any]:
        # an open map is no part of the source (a copy opens the file when it reads)
        return {**self.__dict__, "_opened": None}

    # -- Source contract ------------------------------------------------------------
    def schema(self) -> Schema:
        return self._schema

    def metadata(self) -> dict[str, Any]:
        """The metadata stored at recording time (the recorded source's ``metadata()``)."""
        return json.loads(json.dumps(self._metadata))

    def params(self) -> dict[str, Any]:
        return {"path": str(self.path), "batch_size": self.batch_size, "speed": self.speed}

    def held_out(self) -> dict[Any, Batch] | None:
        """The recorded source's held-out rows per task, in the order they were recorded, task
        ids as they were (an int stays an int); None when it had none or the recording's
        format does not keep them (`lacks`). Memory-mapped, like the stream's batches."""
        out = {
            tag.task: Batch(
                rb, tag.stream_id if tag.stream_id is not None else self.stream_id, tag.end_of_task
            )
            for rb, tag in self._parts()
            if tag.part == "held_out"
        }
        return out or None

    def unlabeled(self) -> Batch | None:
        """The recorded source's unlabeled rows with the columns they had, as they had them
        (the columns they lacked are left out again); None when it had none or the
        recording's format does not keep them (`lacks`). Memory-mapped, like the stream's
        batches."""
        for rb, tag in self._parts():
            if tag.part != "unlabeled":
                continue
            names = list(tag.columns or ())
            unknown = [c for c in names if c not in rb.schema.names]
            if unknown or OFFSET not in names:
                raise RecordingError(
                    f"{self.path}: the unlabeled rows' tag names columns {names}, "
                    f"but the file has {rb.schema.names}"
                )
            fields = [
                self._batch_schema.field(c).with_nullable(flag)
                for c, flag in zip(names, tag.nullable or (True,) * len(names))
            ]
            schema = pa.schema(fields, metadata=self._batch_schema.metadata)
            data = pa.RecordBatch.from_arrays([rb.column(c) for c in names], schema=schema)
            stream_id = tag.stream_id if tag.stream_id is not None else self.stream_id
            return Batch(data, stream_id, tag.end_of_task)
        return None

    @property
    def num_rows(self) -> int:
        """Rows in the whole recorded stream (a scan of batch headers; cached; held-out and
        unlabeled rows are not part of the stream).

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
        with_rows = (offs for _, tag, offs in self._stored() if tag.part == "stream" and len(offs))
        for j, offs in enumerate(with_rows):
            if j == i:
                return int(offs[np.searchsorted(offs, target, side="left")])
        return target  # unreachable unless the file changed

    def batches(self) -> Iterator[Batch]:
        while True:
            epoch = self._epoch
            restarted = False
            replay = self._replay(self._target)
            try:
                for batch, last in replay:
                    # Position moves before the consumer sees the batch, so a
                    # snapshot taken while holding it resumes after it.
                    if last is not None:
                        self._target = last + 1
                    yield batch
                    if self._epoch != epoch:
                        restarted = True
                        break
            finally:
                replay.close()
            if not restarted:
                return

    def _replay(self, target: int | None) -> Iterator[tuple[Batch, int | None]]:
        """Batches from ``target`` on, re-chunked and paced, each with its last offset (None
        for a batch without rows); damage raises after the intact rows.

        Marks: a chunk ends at every marked batch's last row (`Batch.concat` keeps only the
        last part's mark, so a mark inside a chunk would be lost, and one carried to a later
        row would move the task's end). A stored marked batch without rows lends its mark to
        the stored batch before it, which is therefore held back until the next one is read;
        where the rows before it were sought past, its mark went with them.
        """
        pending: list[Batch] = []
        pending_rows = 0
        pending_last: int | None = None
        pacer = Pacer(self.speed, self._schema.time) if self.speed is not None else None
        size = self.batch_size

        def emit(parts: list[Batch], last: int | None) -> tuple[Batch, int | None]:
            out = parts[0] if len(parts) == 1 else Batch.concat(parts)
            if pacer is not None:
                pacer.wait(out)
            return out, last

        def chunks(batch: Batch, offs: np.ndarray) -> Iterator[tuple[Batch, int | None]]:
            # ``offs``: the batch's offsets, read once in `_stored` (no chunk reads them back)
            nonlocal pending, pending_rows, pending_last
            if size is None:
                yield emit([batch], int(offs[-1]))
                return
            start, n = 0, len(offs)
            while start < n:
                take = batch.slice(start, size - pending_rows)
                pending.append(take)
                pending_rows += len(take)
                start += len(take)
                pending_last = int(offs[start - 1])
                if pending_rows == size or take.end_of_task:
                    parts, pending, pending_rows = pending, [], 0
                    yield emit(parts, pending_last)

        held: tuple[Batch, np.ndarray] | None = None  # the last batch with rows, its offsets
        sought_past = False  # rows before ``target`` were skipped
        # as stored, unpaced: each held batch goes out as it is, without a chunking generator
        plain = size is None and pacer is None
        try:
            for rb, tag, offs in self._stored():
                if tag.part != "stream":
                    continue
                # every stream batch is read under the schema `_stored` checked against the
                # header, whose offset column `parse_header` checked: no check per batch
                batch = Batch.of_checked_schema(rb, self.stream_id, tag.end_of_task)
                if not len(offs):  # type: ignore[arg-type]
                    if not tag.end_of_task:
                        continue
                    if held is not None:
                        held = (Batch(held[0].data, held[0].stream_id, True), held[1])
                    elif not sought_past:  # a mark before any row: handed on as it is
                        yield emit([batch], None)
                    continue
                if target is not None and int(offs[0]) < target:
                    sought_past = True
                    if int(offs[-1]) < target:
                        continue
                    start = int(np.searchsorted(offs, target, side="left"))
                    batch, offs = batch.slice(start), offs[start:]
                if held is not None:
                    if plain:
                        yield held[0], int(held[1][-1])
                    else:
                        yield from chunks(*held)
                held = (batch, offs)  # type: ignore[assignment]
        except RecordingError:
            if held is not None:
                yield from chunks(*held)
            if pending:
                yield emit(pending, pending_last)
            raise
        if held is not None:
            yield from chunks(*held)
        if pending:
            yield emit(pending, pending_last)


# -- recording a source -------------------------------------------------------------------


def record(
    source: Source,
    path: PathLike,
    *,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``source``'s batches (from its current position) to a recording at ``path``,
    with their end-of-task marks, and the source's held-out sets and unlabeled rows, if it
    has any (stored ahead of the stream, whatever the position).

    Returns ``{"path", "rows", "batches", "first_offset", "last_offset", "marks",
    "held_out_rows", "unlabeled_rows"}``: the offsets are None when nothing was
    written, ``marks`` counts the end-of-task marks, ``held_out_rows`` is ``{task:
    rows}`` and ``unlabeled_rows`` None when the source has none. ``max_batches``
    bounds an endless source (a generator, a live feed). Empty batches are not
    counted (a marked one is stored, for its mark).
    """
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0, got {max_batches}")
    # asked before the file exists, so a source that cannot give them leaves no file behind
    held = source.held_out()
    unlabeled = source.unlabeled()
    writer = RecordingWriter(
        path, source.schema(), stream_id=source.stream_id, metadata=source.metadata()
    )
    try:
        if unlabeled is not None:  # first: the columns it lacks are nullable in the file
            writer.write_unlabeled(unlabeled)
        for task, rows in (held or {}).items():
            writer.write_held_out(task, rows)
    except BaseException:
        # nothing of the stream is written yet: a file without its parts would replay as if
        # the source had none, so none is left
        writer.close()
        writer.path.unlink(missing_ok=True)
        raise
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
        "marks": writer.marks,
        "held_out_rows": dict(writer.held_out_rows),
        "unlabeled_rows": writer.unlabeled_rows,
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
