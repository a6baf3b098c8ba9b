"""A recording's stored messages, read in order with the checks its format promises.

`stored_batches` is the one loop over a recording file's record batch messages
(`tideflow.connectors.recording_format` specifies them); `RecordingSource` replays,
seeks and finds its held-out and unlabeled parts through it. Every check is of
something the writer (`tideflow.connectors.recording_writer`) guarantees, so a
violation means the file was damaged, cut short or not written by tideflow; the batches
before the damage are yielded first, because they are intact, and then
`RecordingError` names the batch:

* each message reads as an Arrow record batch, and Arrow's structure check of it
  (``validate``: buffer sizes, offsets of variable-length columns) passes, so that no
  later read goes past a buffer;
* its tag (version 2) parses, and held-out and unlabeled parts come before the stream;
* the offset column has no nulls and, over the stream's batches, rises strictly
  within each batch and from one batch to the next: what seek's bisection over
  batches and rows, and exact resume, rely on. This check reads every offset, the one
  column of the file a plain memory-mapped read never touches;
* a column the header declares non-nullable holds no nulls where the Arrow schema had
  to allow them (files with unlabeled rows);
* the file ends with the end-of-stream marker right after the last batch (a cut that
  removes exactly the marker also reads as a clean end).

The file's one schema was checked when the source opened it (`parse_header`), and
every batch is read under it (the reader's schema is compared with it first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from tideflow.connectors.recording_format import EOS, METADATA_KEY, RecordingError, Tag, parse_tag
from tideflow.stream.batch import OFFSET

__all__ = ["stored_batches"]


def stored_batches(path: Path, opened: tuple[pa.MemoryMappedFile, Any, int], arrow_schema: pa.Schema,
                   batch_schema: pa.Schema | None, null_checks: list[int], *, tagged: bool
                   ) -> Iterator[tuple[pa.RecordBatch, Tag, np.ndarray | None]]:
    """Every stored record batch of the recording at ``path``, its tag and (stream batches) its
    offsets as numpy (a view of the mapped file), checked (module docstring).

    ``opened``: the file's (memory map, stream reader, size), closed at the end;
    ``batch_schema``: the schema stream and held-out batches are handed out with when the
    header's nullability differs from the stored one (None: as stored), ``null_checks`` the
    columns that may then hold nulls the header forbids; ``tagged``: a version 2 file.
    """
    mm, reader, size = opened
    try:
        if not reader.schema.equals(arrow_schema, check_metadata=True):
            raise RecordingError(f"{path}: the file changed since it was opened")
        at = arrow_schema.get_field_index(OFFSET)  # one offset column (parse_header)
        read, tell, count_nonzero = reader.read_next_batch_with_custom_metadata, mm.tell, np.count_nonzero
        last: int | None = None
        in_stream = False
        known: dict[bytes, Tag] = {}  # a stream batch's tag is one of two: parsed once
        untagged = Tag()
        end_of_good = tell()
        n = 0
        while True:
            try:
                rb, custom = read()
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                raise RecordingError(
                    f"{path}: damaged after {n} complete batches (byte {end_of_good} of {size}): {exc}"
                ) from None
            try:
                rb.validate()
            except (pa.ArrowException, ValueError) as exc:
                raise RecordingError(f"{path}: batch {n} is corrupt: {exc}") from None
            if tagged:
                raw = custom.get(METADATA_KEY) if custom is not None else None
                tag = known.get(raw) if raw is not None else None
                if tag is None:
                    tag = parse_tag(path, n, raw)
                    if tag.part == "stream":
                        known[raw] = tag  # type: ignore[index]
            else:
                tag = untagged
            col = rb.column(at)
            if col.null_count:
                raise RecordingError(f"{path}: batch {n} has null offsets")
            offs = None
            if tag.part == "stream":
                in_stream = True
                offs = col.to_numpy()  # int64 without nulls: a view of the mapped file
                if len(offs):
                    if (last is not None and offs[0] <= last) or count_nonzero(offs[1:] <= offs[:-1]):
                        raise RecordingError(f"{path}: offsets do not increase strictly in batch {n}")
                    last = int(offs[-1])
            elif in_stream:
                raise RecordingError(
                    f"{path}: batch {n} ({tag.part}) follows the stream's batches; "
                    f"a recording keeps its held-out and unlabeled rows ahead of them"
                )
            if batch_schema is not None and tag.part != "unlabeled":
                # null counts are in the message header: this reads no column data
                for i in null_checks:
                    if rb.column(i).null_count:
                        raise RecordingError(
                            f"{path}: batch {n} ({tag.part}): column "
                            f"{rb.schema.field(i).name!r} is not nullable but holds nulls"
                        )
                rb = pa.RecordBatch.from_arrays(rb.columns, schema=batch_schema)
            end_of_good = tell()
            n += 1
            yield rb, tag, offs
        # A clean end of the reader is not proof of a complete file: a cut
        # that removes exactly the end-of-stream marker also reads as the end.
        if size - end_of_good != len(EOS) or tell() != size:
            raise RecordingError(
                f"{path}: does not end with the end-of-stream marker after {n} complete "
                f"batches (truncated, trailing bytes, or the writer was not closed)"
            )
    finally:
        mm.close()  # batches already handed out keep their mapped region alive
