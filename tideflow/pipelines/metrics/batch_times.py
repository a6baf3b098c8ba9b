"""When each batch was done: throughput over time, steady state, time to the first batch.

Both runners hand every finished batch to the collector in the driver, in stream
order; the time it was recorded there is the batch's completion time on either
runner, which is what the bench scripts compare runners by.

>>> bt = BatchTimes()
>>> bt.on_start(None)
>>> from tideflow.pipelines.metrics.base import BatchRecord
>>> for i in range(20):
...     bt.on_batch(BatchRecord(i, 100, None, {}, False, bt.t0 + 0.1 * (i + 1)))
>>> round(bt.result()["steady_eps"])
1000
"""

from __future__ import annotations

import math
import time
from typing import Any

from tideflow.pipelines.metrics.base import BatchRecord, Observer


def steady_state(ts: list[tuple[float, int]]) -> float | None:
    """Events/s over the batches after the first ``max(3, 10 %)`` (None when too few)."""
    k = max(3, math.ceil(len(ts) * 0.1))
    if len(ts) <= k:
        return None
    span = ts[-1][0] - ts[k - 1][0]
    rows = sum(r for _, r in ts[k:])
    return rows / span if span > 0 else None


class BatchTimes(Observer):
    """Per batch: (completion time, rows read); ``t0`` is when the run started feeding batches."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.perf_counter()
        self.ts: list[tuple[float, int]] = []
        self._seqs: list[int] = []

    def on_start(self, graph: Any) -> None:
        self.t0 = time.perf_counter()
        self.ts, self._seqs = [], []

    def on_batch(self, record: BatchRecord) -> None:
        self.ts.append((record.time, record.rows))
        self._seqs.append(record.seq)

    def on_rollback(self, seq: int) -> None:
        keep = [i for i, s in enumerate(self._seqs) if s <= seq]
        self.ts = [self.ts[i] for i in keep]
        self._seqs = [self._seqs[i] for i in keep]

    def result(self) -> dict[str, Any]:
        return {"t0": self.t0, "ts": list(self.ts), "batches": len(self.ts),
                "steady_eps": steady_state(self.ts) if self.ts else None,
                "first_batch_s": (self.ts[0][0] - self.t0) if self.ts else None}
