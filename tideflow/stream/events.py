"""What travels beside the rows: drift events and task boundaries.

A `DriftEvent` says that something changed at an offset of a stream: a detector
on a column fired (`tideflow.stream.drift.DetectDrift`), a detector on a
strategy's prequential error fired, or a strategy itself reported something
(an out-of-distribution batch, a capacity warning; ``StepReport.events``). The
``detector`` names the source of the event and ``statistic`` what it watched.

A `TaskBoundary` says that the stream moved from one task to the next: the
schema's ``task`` column changed value, the source marked the end of a task
(`tideflow.stream.batch.Batch.end_of_task`), or a drift event was configured to
count as one. A strategy receives it through ``on_task_boundary`` after it has
learned the last rows of the old task and before it learns the first rows of the
new one.

>>> DriftEvent("s", 10, "ADWIN", "error", "tree", 0.4).to_dict()["offset"]
10
>>> TaskBoundary("s", 100, previous=0, task=1, cause="task_column").to_dict()["cause"]
'task_column'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: what can make a task boundary
BOUNDARY_CAUSES = ("task_column", "end_of_task", "drift")


@dataclass(frozen=True)
class DriftEvent:
    """A detector fired: on which stream, at which offset, which detector, on what statistic."""

    stream_id: str
    offset: int
    detector: str
    statistic: str
    step: str = ""
    value: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskBoundary:
    """The stream moved from task ``previous`` to task ``task`` at ``offset`` (the first row of the
    new task; for an end-of-task mark, one past the last row of the old one)."""

    stream_id: str
    offset: int
    previous: Any = None
    task: Any = None
    cause: str = "task_column"
    step: str = ""

    def __post_init__(self) -> None:
        if self.cause not in BOUNDARY_CAUSES:
            raise ValueError(f"unknown task-boundary cause {self.cause!r}; known: {BOUNDARY_CAUSES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
