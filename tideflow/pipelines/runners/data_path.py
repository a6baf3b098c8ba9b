"""The data path of one batch, shared by every runner.

`run_chain` passes a batch through the data-path operators (validation, detectors,
reducers) in order; every operator is drained after every batch, even when an
earlier one left nothing of the batch, so that side outputs (quarantined rows,
drift events) never wait for a later batch. A batch that carried the source's
end-of-task mark keeps it even when validation left no row of it (an empty batch
with the mark reaches the learn steps).

`Mailbox` holds the events strategies raise while learning (``StepReport.events``)
until they are due at the other learn steps: an event raised while learning batch
``k`` reaches them with batch ``k + lag``. The lag is fixed per run
(``RunOptions.event_lag``) and the same on both runners, so that local/Ray parity
holds while the Ray runner keeps batches in flight (it keeps at most ``lag`` in
flight when a graph has several learn steps).

`DataPath` is the chain plus the learn steps that run in the same process: the whole
graph on the local runner, the fused data path (and a chained lone learner) in the
Ray runner's source actor.
"""

from __future__ import annotations

from typing import Any

from tideflow.pipelines.learn_step import Learner, LearnResult
from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent
from tideflow.stream.operator import SideOutput


def held_out_sets(graph: Any) -> dict[Any, Any] | None:
    """The source's held-out rows per task, if it has any (`Source.held_out`)."""
    held = getattr(graph.source.op, "held_out", None)
    return held() if callable(held) else None


def unlabeled_rows(graph: Any) -> Any:
    """The source's unlabeled rows for the strategies' ``prepare``, if it has any (`Source.unlabeled`)."""
    rows = getattr(graph.source.op, "unlabeled", None)
    return rows() if callable(rows) else None


def run_chain(ops: list[Any], batch: Batch | None, events: list[DriftEvent]
              ) -> tuple[Batch | None, list[DriftEvent], SideOutput]:
    """One batch through data-path operators in order; every operator drains even when the batch is gone."""
    side = SideOutput()
    marked = batch is not None and batch.end_of_task
    original = batch
    for op in ops:
        if batch is not None and len(batch):
            batch = op.process(batch)
        part = op.drain()
        events = events + part.drift_events
        side.extend(part)
    if marked and (batch is None or not batch.end_of_task):
        # the mark is the source's: no operator may lose it
        assert original is not None
        batch = Batch(original.data.slice(0, 0), original.stream_id, True) if batch is None or not len(batch) \
            else Batch(batch.data, batch.stream_id, True)
    return batch, events, side


class Mailbox:
    """Events raised by strategies, held until they are due (see module docstring).

    ``take`` does not remove what it hands out: the Ray runner may go back to a
    checkpoint and submit the same batches again; ``snapshot(seq)`` keeps what is due
    after batch ``seq`` and drops what is older.
    """

    def __init__(self, lag: int) -> None:
        if lag < 1:
            raise ValueError(f"event lag must be >= 1, got {lag}")
        self.lag = lag
        self._due: dict[int, list[DriftEvent]] = {}

    def post(self, seq: int, events: list[DriftEvent]) -> None:
        if events:
            self._due.setdefault(seq + self.lag, []).extend(events)

    def take(self, seq: int) -> list[DriftEvent]:
        return list(self._due.get(seq, ()))

    def snapshot(self, seq: int) -> dict[int, list[dict[str, Any]]]:
        """What is due after batch ``seq`` (plain data); older entries are dropped."""
        for due in [d for d in self._due if d <= seq]:
            del self._due[due]
        return {due: [e.to_dict() for e in evs] for due, evs in self._due.items()}

    def restore(self, state: dict[Any, list[dict[str, Any]]] | None) -> None:
        self._due = {int(due): [DriftEvent(**e) for e in evs] for due, evs in (state or {}).items()}


class DataPath:
    """Data-path operators and the learn steps in this process, for one batch at a time.

    ``mailbox``: where the learners' raised events wait for the other learners (None: the
    caller delivers them, as the Ray driver does for learners in their own actors).
    """

    def __init__(self, ops: list[Any], learners: dict[str, Learner], mailbox: Mailbox | None = None) -> None:
        self.ops = ops
        self.learners = learners
        self.mailbox = mailbox

    def step(self, seq: int, batch: Batch | None) -> tuple[Batch | None, list[DriftEvent], SideOutput,
                                                             dict[str, LearnResult]]:
        """The chain on one batch, then every learner here: (batch out, events, side outputs, results)."""
        if self.ops:
            batch, events, side = run_chain(self.ops, batch, [])
        else:
            events, side = [], SideOutput()
        mail = self.mailbox.take(seq) if self.mailbox is not None else []
        results = {name: lrn.step(seq, batch, events + mail) for name, lrn in self.learners.items()}
        if self.mailbox is not None:
            for res in results.values():
                self.mailbox.post(seq, res.emitted)
        return batch, events, side, results

    def finish(self) -> dict[str, LearnResult]:
        return {name: lrn.finish() for name, lrn in self.learners.items()}
