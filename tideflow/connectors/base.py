"""The `Source` and `Sink` contracts: the outside world as batches with offsets.

A source yields `Batch`es whose offsets increase monotonically and can
``seek(offset)``: the next batch then starts at the first event whose offset is
at least ``offset``. That is what makes replay, checkpoint/resume and
comparisons across runners exact. Its state is its position (plain data).
"""

from __future__ import annotations

from typing import Any, Iterator

from tideflow.stream.batch import Batch
from tideflow.stream.schema import Schema


def as_bool(value: Any) -> bool:
    """A boolean option that may arrive as text from a source spec (``ecmp=true``)."""
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


class Source:
    """Base class of every source (see module docstring)."""

    kind = "source"
    stream_id: str = "stream"

    def schema(self) -> Schema:
        """The schema (with its roles: target, key, ...) of the batches this source yields."""
        raise NotImplementedError

    def batches(self) -> Iterator[Batch]:
        """Batches from the current position on; advances the position."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def seek(self, offset: int) -> None:
        raise NotImplementedError

    @property
    def position(self) -> int:
        """The offset the next batch will start at (or after)."""
        raise NotImplementedError

    def held_out(self) -> dict[Any, Batch] | None:
        """Held-out rows per task, not part of the stream (task streams: what a learn step
        evaluates at every task boundary, in the schema the learn steps see). Default: none."""
        return None

    def unlabeled(self) -> Batch | None:
        """Rows without their labels that cover the stream's input distribution, handed to every
        strategy's ``prepare`` before the first batch (e.g. the keys of a discrete key-value
        bottleneck are initialised on them). Default: none."""
        return None

    def metadata(self) -> dict[str, Any]:
        """Plain-data description of the stream (written into recordings)."""
        return {"stream_id": self.stream_id, "source": type(self).__name__}

    def params(self) -> dict[str, Any]:
        return {}

    def snapshot(self) -> dict[str, Any]:
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.seek(int(state["position"]))

    def commit(self, state: dict[str, Any]) -> None:
        """Everything before ``state`` (a `snapshot` of this source) is durably processed:
        a broker source acknowledges it now (default: nothing to do)."""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __repr__(self) -> str:
        return self.describe()

    def close(self) -> None:
        """Release files or connections (default: nothing to release)."""


class RowIndexedSource(Source):
    """A source whose offsets are the row numbers ``0 .. num_rows - 1`` and which can
    generate from any of them, so ``seek`` is just a jump."""

    _next: int = 0

    @property
    def num_rows(self) -> int:
        raise NotImplementedError

    @property
    def position(self) -> int:
        return self._next

    def seek(self, offset: int) -> None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self._next = min(int(offset), self.num_rows)


class Sink:
    """Receives the batches that leave the data path (after detection), in order."""

    kind = "sink"

    def write(self, batch: Batch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release (default: nothing to do)."""

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return type(self).__name__


class MemorySink(Sink):
    """Keeps every batch in memory (for tests and small replays)."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def write(self, batch: Batch) -> None:
        self.batches.append(batch)

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


class MemorySource(Source):
    """Batches held in memory (tests, small replays, hand-made malformed input).

    The batches are yielded as given, even when their offsets are out of order
    or their columns do not fit ``schema``: that is what a validate step is for.
    ``seek`` skips whole batches whose last offset is below the target.
    """

    def __init__(self, batches: list[Batch], schema: Schema, *, stream_id: str | None = None,
                 held_out: dict[Any, Batch] | None = None, unlabeled: Batch | None = None) -> None:
        self.batches_ = list(batches)
        self.held_out_ = dict(held_out) if held_out is not None else None
        self.unlabeled_ = unlabeled
        self.schema_ = schema
        self.stream_id = stream_id or (self.batches_[0].stream_id if self.batches_ else "memory")
        self._index = 0

    def schema(self) -> Schema:
        return self.schema_

    def held_out(self) -> dict[Any, Batch] | None:
        return self.held_out_

    def unlabeled(self) -> Batch | None:
        return self.unlabeled_

    def params(self) -> dict[str, Any]:
        return {"batches": len(self.batches_), "rows": sum(len(b) for b in self.batches_)}

    @property
    def num_rows(self) -> int:
        return sum(len(b) for b in self.batches_)

    @property
    def position(self) -> int:
        if self._index >= len(self.batches_):
            last = self.batches_[-1].last_offset if self.batches_ else None
            return (last + 1) if last is not None else 0
        return self.batches_[self._index].first_offset or 0

    def seek(self, offset: int) -> None:
        self._index = 0
        while self._index < len(self.batches_) and (self.batches_[self._index].last_offset or -1) < offset:
            self._index += 1

    def batches(self) -> Iterator[Batch]:
        while self._index < len(self.batches_):
            batch = self.batches_[self._index]
            self._index += 1
            yield batch
