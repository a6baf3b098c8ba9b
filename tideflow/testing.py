"""Helpers for testing pipelines: comparing two runs, and a learner that marks a point for fault injection.

>>> comparable({"lin": [{"seq": 0, "mae": 0.5, "train_seconds": 0.013}]})
{'lin': [{'seq': 0, 'mae': 0.5}]}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tideflow.strategies.river_adapter import RiverStrategy

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
