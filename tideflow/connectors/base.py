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

    def metadata(self) -> dict[str, Any]:
        """Plain-data description of the stream (written into recordings)."""
        return {"stream_id": self.stream_id, "source": type(self).__name__}

    def params(self) -> dict[str, Any]:
        return {}

    def snapshot(self) -> dict[str, Any]:
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.seek(int(state["position"]))

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __repr__(self) -> str:
        return self.describe()

    def close(self) -> None:
        """Release files or connections (default: nothing to release)."""


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
