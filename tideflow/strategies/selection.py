"""The selection contract: what trains a strategy when the raw batch should not.

A `Selector` keeps rows of its own (a pool of past and new rows) and, at its selection
points, hands the strategy it feeds a training set in place of the incoming batch (Adapt-∞,
Maharana et al., ICLR 2025, selects a budgeted, skill-balanced set from such a pool). The
learn step (`tideflow.pipelines.learn_step`) scores every incoming batch before anything is
learned, as always, and then asks the selector what to train on:

* ``select(batch, strategy) -> Selection``: the rows to learn (a `Batch`, or None: learn
  nothing now) and a report of plain numbers (pool size, rows per cluster, seconds, ...)
  that the engine sums into the step's ``extra`` counters and logs;
* ``on_drift(event)`` / ``on_task_boundary(boundary)``: a selection point may be asked for;
* ``snapshot()`` / ``restore(state)``: the pool and whatever else the selector keeps, as
  plain data, in the learn step's checkpoint.

The selector runs in the process of the strategy it feeds (the same Ray actor), so that it
can use that strategy's model. It is for strategies that learn from unordered rows
(``Strategy.unordered_rows``): a time-series forecaster, whose rows must arrive in time
order, refuses it when the pipeline is declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.stream.operator import Stateful


@dataclass
class Selection:
    """What a selector hands the strategy: rows to learn (None: nothing now) and its report."""

    rows: Batch | None
    report: dict[str, float] = field(default_factory=dict)


class Selector(Stateful):
    """Base of the selection stages (see module docstring). The default selects the batch itself."""

    kind = "selector"
    checkable = False

    def select(self, batch: Batch, strategy: Any) -> Selection:
        return Selection(batch)

    def on_drift(self, event: DriftEvent) -> None:
        """A drift event reached the learn step (a selection point may follow)."""

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        """A task ended (a selection point may follow)."""
