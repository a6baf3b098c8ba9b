"""Helpers for testing pipelines: comparing two runs, learners that mark a point for fault
injection, log what the engine tells them or raise events, and held-out rows of a toy task stream.

They live in the package (not in a test module) so that Ray workers can import them.

>>> comparable({"lin": [{"seq": 0, "mae": 0.5, "train_seconds": 0.013}]})
{'lin': [{'seq': 0, 'mae': 0.5}]}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.strategies.base import StepReport
from tideflow.strategies.river_adapter import RiverStrategy
from tideflow.strategies.selection import Selection, Selector

#: per-batch record fields that measure wall-clock time, which no two runs share
WALL_CLOCK_FIELDS = frozenset({"train_seconds"})


def comparable(per_batch: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`RunResult.per_batch` without its wall-clock fields: what must be equal between an
    interrupted-and-recovered run and an uninterrupted one on the same stream."""
    return {name: [{k: v for k, v in rec.items() if k not in WALL_CLOCK_FIELDS} for rec in recs]
            for name, recs in per_batch.items()}


class PauseOnce(RiverStrategy):
    """A River strategy that, after its ``at``-th learn call (0-based, counted in this
    instance), writes ``marker`` and sleeps ``pause_s`` seconds, once per marker file.

    A test thread waits for the file and then kills the learner's actor (or its node)
    while the run is at that point; a restored learner finds the file and goes on.
    """

    def __init__(self, estimator: Any, *, marker: str, at: int, pause_s: float = 2.0, **kwargs: Any) -> None:
        super().__init__(estimator, **kwargs)
        self.marker = str(marker)
        self.at = at
        self.pause_s = pause_s
        self._calls = 0

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        # the check suite's configuration: never pauses (at=-1)
        return {**RiverStrategy._unit_test_params(), "marker": "tideflow-check-never-written", "at": -1}

    def clone(self) -> PauseOnce:
        return PauseOnce(self.estimator, marker=self.marker, at=self.at, pause_s=self.pause_s,
                         target=self.target, features=self.features)

    def learn(self, batch: Any) -> Any:
        report = super().learn(batch)
        self._calls += 1
        if self._calls == self.at + 1 and not Path(self.marker).exists():
            Path(self.marker).write_text("reached")
            time.sleep(self.pause_s)
        return report


def task_held_out(tasks: int = 3, rows: int = 40, seed: int = 1) -> dict[Any, Batch]:
    """Held-out rows per task of a toy task stream: columns x0, x1, y (task t's labels are 2t
    and 2t + 1, split by a line at angle 1.1 t) and task."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for t in range(tasks):
        x = rng.normal(size=(rows, 2))
        angle = t * 1.1
        y = ((x[:, 0] * np.cos(angle) + x[:, 1] * np.sin(angle)) > 0).astype(np.int64) + 2 * t
        out[t] = Batch.from_pydict({"x0": x[:, 0], "x1": x[:, 1], "y": y, "task": np.full(rows, t)},
                                   stream_id="held-out", first_offset=0)
    return out


class Recorder(RiverStrategy):
    """Logs what the engine tells it: learned offsets, drift events, task boundaries (in order)."""

    def __init__(self, estimator: Any, **kwargs: Any) -> None:
        super().__init__(estimator, **kwargs)
        self.log: list[tuple[Any, ...]] = []

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return RiverStrategy._unit_test_params()

    def learn(self, batch: Batch) -> StepReport:
        if len(batch):
            self.log.append(("learn", int(batch.first_offset), int(batch.last_offset)))
        return super().learn(batch)

    def on_drift(self, event: DriftEvent) -> None:
        self.log.append(("drift", event.step, event.detector, int(event.offset)))

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        self.log.append(("boundary", boundary.cause, int(boundary.offset), boundary.previous, boundary.task))

    def prepare(self, unlabeled: Batch) -> None:
        self.log.append(("prepare", len(unlabeled), self.target in unlabeled.column_names))


class Emitter(RiverStrategy):
    """Raises an out-of-distribution event while learning a batch that holds one of ``at``
    (offsets; the event is at that offset). It depends on the data only, so a learner
    restored from a checkpoint raises exactly what the uninterrupted one raised."""

    def __init__(self, estimator: Any, *, at: tuple[int, ...] = (299, 699), **kwargs: Any) -> None:
        super().__init__(estimator, **kwargs)
        self.at = tuple(at)

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return RiverStrategy._unit_test_params()

    def learn(self, batch: Batch) -> StepReport:
        report = super().learn(batch)
        if len(batch):
            for off in sorted(set(self.at) & set(batch.offsets.tolist())):
                report.events.append(DriftEvent(batch.stream_id, int(off), "ood", "score", "", 0.9))
        return report


class KeepAll(Selector):
    """A selection stage for tests: a pool that keeps every row, handed whole to the strategy
    every ``every`` batches (nothing learned in between)."""

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self._pool: list[Batch] = []

    def select(self, batch: Batch, strategy: Any) -> Selection:
        self._pool.append(batch)
        pooled = sum(len(b) for b in self._pool)
        if len(self._pool) % self.every:
            return Selection(None, {"pool": float(pooled)})
        return Selection(Batch.concat(self._pool), {"pool": float(pooled), "selected": float(pooled)})

    def snapshot(self) -> dict[str, Any]:
        return {"pool": list(self._pool)}

    def restore(self, state: dict[str, Any]) -> None:
        self._pool = list(state["pool"])
