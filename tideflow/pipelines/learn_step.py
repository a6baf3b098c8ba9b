"""The learn step at run time: routing, prequential scoring, label delay, detectors, task boundaries.

One `Learner` runs one learn step of a graph, on every runner alike (in the
driver's process on the local runner, inside an actor on the Ray runner). For each
batch it

1. hands the events that reached the step (upstream detectors, and events other
   learn steps' strategies raised ``event_lag`` batches ago) to ``on_drift``;
2. splits the batch by routing key (one strategy instance per key value with a
   `Keyed` route; a Ray actor keeps its share of the keys), predicts every row with
   the model as it is and scores the predictions per (key, task) part;
3. feeds the per-row error to the step's error detector, if any (its events go to
   the instance whose error it watches);
4. queues the rows for learning; with a label delay of ``d`` batches the labels of
   batch ``i`` are learned after batch ``i + d`` has been predicted (the model
   meanwhile predicts without them);
5. queues a `TaskBoundary` where the task changes (the schema's task column changes
   value, the batch carries the source's end-of-task mark, or an accepted drift event
   when the step counts drift as a boundary), so that ``on_task_boundary`` is called
   after the old task's rows were learned, and evaluates the held-out sets of the
   source's tasks there (`evaluate`).

Everything it returns is a `LearnResult` of plain data, sent from actors to the
driver's collector (`tideflow.pipelines.collector`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tideflow.pipelines.evaluation import Scores, add_extra, by_task, combine, key_order, score, stable_hash
from tideflow.stream.batch import Batch
from tideflow.stream.drift import RiverDetector
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.stream.schema import Schema
from tideflow.strategies.base import ClassScores, Strategy


@dataclass
class LearnResult:
    """What one learn step did with one batch (plain data, sent from actors)."""

    seq: int
    #: partial scores per (routing key, task) part; task is None on streams without a task column
    parts: dict[tuple[Any, Any], Scores] = field(default_factory=dict)
    samples: int = 0
    fits: int = 0
    train_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # summed `StepReport.extra` counters
    skipped: dict[str, int] = field(default_factory=dict)  # summed `StepReport.skipped`: rows not used
    events: list[DriftEvent] = field(default_factory=list)  # the step's error detector fired
    emitted: list[DriftEvent] = field(default_factory=list)  # the strategy raised (StepReport.events)
    boundaries: list[TaskBoundary] = field(default_factory=list)
    #: held-out evaluations done at task boundaries (and at the end of the stream)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # strategy exceptions, one line each
    # (offsets, predictions, truth, keys, times) per scored part, when the run keeps predictions
    # (keys / times: the schema's key and time columns, None where it has none)
    predictions: list[tuple[list[Any], ...]] = field(default_factory=list)

    def merge(self, other: LearnResult) -> None:
        """Add another actor's share of the same batch (keyed steps spread over actors)."""
        self.parts.update(other.parts)
        self.samples += other.samples
        self.fits += other.fits
        self.train_seconds += other.train_seconds
        add_extra(self.extra, other.extra)
        _add_counts(self.skipped, other.skipped)
        self.events.extend(other.events)
        self.emitted.extend(other.emitted)
        # every shard sees every batch, so each reports the same boundaries: keep one copy
        for b in other.boundaries:
            if b not in self.boundaries:
                self.boundaries.append(b)
        _merge_evaluations(self.evaluations, other.evaluations)
        self.errors.extend(other.errors)
        self.predictions.extend(other.predictions)

    def combined(self) -> Scores:
        return combine(self.parts)

    def by_task(self) -> dict[Any, Scores]:
        return by_task(self.parts)


def _add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + int(v)


def _merge_evaluations(into: list[dict[str, Any]], more: list[dict[str, Any]]) -> None:
    """Evaluations of the same (boundary, task) from several shards: their partial sums add up."""
    index = {(e["point"], e["after_task"], e["offset"], e["task"]): e for e in into}
    for e in more:
        key = (e["point"], e["after_task"], e["offset"], e["task"])
        if key in index:
            index[key]["parts"].update(e["parts"])
            if "parts_til" in e:
                index[key].setdefault("parts_til", {}).update(e["parts_til"])
        else:
            copy = {**e, "parts": dict(e["parts"])}
            if "parts_til" in e:
                copy["parts_til"] = dict(e["parts_til"])
            into.append(copy)
            index[key] = copy


@dataclass
class Evaluation:
    """An evaluation-only pass over some rows: no learning, no prequential bookkeeping."""

    parts: dict[tuple[Any, Any], Scores]
    offsets: list[int]
    predictions: list[Any]
    #: per-class scores of each key part, in `offsets` order (None: the strategy gives labels only)
    class_scores: list[ClassScores] | None

    def combined(self) -> Scores:
        return combine(self.parts)


class Learner:
    """One learn step: its strategy instance(s), error detectors, label-delay queue, task tracking.

    Args:
        name: the step name.
        strategy: a strategy already bound to the schema; with a keyed route it
            is the template each key's instance is cloned from.
        schema: the schema arriving at the step.
        key: the key column for keyed routing, or None (broadcast).
        shard: ``(index, count)``: this learner handles the keys whose stable
            hash modulo ``count`` is ``index`` (the Ray runner's actors).
        detector / detector_params: River detector on the prequential error.
        accept_events_from: steps whose events reach this strategy (detect steps and the
            other learn steps; None: all).
        label_delay: batches between a prediction and learning from its labels.
        boundaries: what counts as a task boundary: ``"task_column"``, ``"end_of_task"``,
            ``"drift"`` (every accepted drift event).
        held_out: held-out rows per task (the source's), evaluated before the first batch (the
            untrained model: the reference of forward transfer), at every task boundary and at
            the end of the stream; on a stream with task ids, each task's rows also with the
            prediction masked to that task's classes (task-incremental accuracy).
    """

    def __init__(self, name: str, strategy: Strategy, schema: Schema, *, key: str | None = None,
                 shard: tuple[int, int] = (0, 1), detector: str | None = None,
                 detector_params: dict[str, Any] | None = None,
                 accept_events_from: set[str] | None = None, label_delay: int = 0,
                 keep_predictions: bool = False, boundaries: tuple[str, ...] = ("task_column", "end_of_task"),
                 held_out: dict[Any, Batch] | None = None, unlabeled: Batch | None = None,
                 select: Any = None) -> None:
        self.name = name
        # the selection stage's template; each key's instance gets its own copy (`_selector`)
        self.select = select
        self.selectors: dict[Any, Any] = {}
        self.template = strategy
        self.schema = schema
        self.key = key
        self.shard = shard
        self.detector = detector
        self.detector_params = dict(detector_params or {})
        self.accept_events_from = accept_events_from
        self.label_delay = label_delay
        self.keep_predictions = keep_predictions
        self.boundaries = tuple(boundaries)
        self.held_out = dict(held_out or {})
        # a task's classes: the labels of its held-out rows (what task-IL masking allows)
        self.task_classes = {t: sorted(set(b.column(strategy.target).to_pylist()), key=key_order)
                             for t, b in self.held_out.items()} if strategy.target else {}
        self._evaluated_start = False
        self._learned_since_eval = False
        self.unlabeled = unlabeled
        self._prepared = unlabeled is None
        self.problem = strategy.problem
        self.task_column = schema.task
        self.instances: dict[Any, Strategy] = {}
        self.detectors: dict[Any, RiverDetector] = {}
        # (batch seq, key, rows) to learn, or (batch seq, None, None, boundary) to signal, in order
        self._pending: deque[tuple[Any, ...]] = deque()
        self._task: Any = None  # the task of the newest row seen (task column)
        self._marked = False  # the previous batch carried the end-of-task mark
        self._next = 0  # one past the newest row seen, up to `_newest_batch` (`_next_offset`)
        self._newest_batch: Batch | None = None
        if key is None:
            self.instances[None] = strategy

    @property
    def _next_offset(self) -> int:
        """One past the newest row seen. Read from the newest batch only when asked (an end of
        task, a snapshot): a batch's last offset goes through an Arrow scalar, a per-batch cost
        that the batches of a small-batch stream mostly never need."""
        if self._newest_batch is not None:
            self._next = int(self._newest_batch.last_offset) + 1  # type: ignore[arg-type]
            self._newest_batch = None
        return self._next

    @_next_offset.setter
    def _next_offset(self, value: int) -> None:
        self._next, self._newest_batch = value, None

    # -- instances ------------------------------------------------------------------
    def _instance(self, k: Any) -> Strategy:
        inst = self.instances.get(k)
        if inst is None:
            # each key starts from a copy of the step's strategy as given (a warm-started
            # model included), never from one rebuilt from its constructor parameters
            inst = copy.deepcopy(self.template)
            inst.bind(self.schema)
            if self.unlabeled is not None and k is not None:
                inst.prepare(self.unlabeled)  # a key that appears later starts prepared too
            self.instances[k] = inst
        return inst

    def _detector(self, k: Any) -> RiverDetector | None:
        if self.detector is None:
            return None
        d = self.detectors.get(k)
        if d is None:
            d = RiverDetector(self.detector, params=self.detector_params,
                              statistic="error" if k is None else f"error[{k}]", step=self.name)
            self.detectors[k] = d
        return d

    def _split(self, batch: Batch) -> list[tuple[Any, Batch]]:
        if self.key is None:
            return [(None, batch)]
        keys = batch.column(self.key).to_pylist()
        groups: dict[Any, list[int]] = {}
        index, count = self.shard
        for i, k in enumerate(keys):
            if count == 1 or stable_hash(k) % count == index:
                groups.setdefault(k, []).append(i)
        return [(k, batch.take(groups[k])) for k in sorted(groups, key=key_order)]

    def strategies(self) -> Strategy | dict[Any, Strategy]:
        """The trained strategy (unkeyed), or one per key value this learner holds."""
        return self.instances[None] if self.key is None else dict(self.instances)

    # -- the batch step ---------------------------------------------------------------
    def accepts(self, event: DriftEvent) -> bool:
        return event.step != self.name and (self.accept_events_from is None or event.step in self.accept_events_from)

    def step(self, seq: int, batch: Batch | None, events: list[DriftEvent] = ()) -> LearnResult:  # type: ignore[assignment]
        result = LearnResult(seq)
        if not self._prepared:
            self._prepared = True
            for inst in self.instances.values():
                try:
                    inst.prepare(self.unlabeled)  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - counted and reported, the job goes on
                    result.errors.append(f"prepare: {type(exc).__name__}: {exc}")
        if self.held_out and not self._evaluated_start:
            self._evaluated_start = True
            self._evaluate_held_out(None, -1, result, point="start")
        for e in events:
            if self.accepts(e):
                for inst in self.instances.values():
                    inst.on_drift(e)
                for sel in self.selectors.values():
                    sel.on_drift(e)
                if "drift" in self.boundaries:
                    self._queue_boundary(seq, TaskBoundary(e.stream_id, e.offset, self._task, self._task,
                                                           "drift", self.name))
        if batch is None or not len(batch):
            # an empty batch does not move the label clock (nothing new was predicted)
            if batch is not None and batch.end_of_task:
                self._mark_end(seq, batch)
            return result
        assert self.template.target is not None
        tasks = self._tasks(batch)
        for k, part in self._split(batch):
            inst = self._instance(k)
            try:
                preds = inst.predict(part)
            except Exception as exc:  # noqa: BLE001 - a long-lived job must survive one bad batch
                result.errors.append(f"predict on offsets {part.first_offset}..{part.last_offset}: "
                                     f"{type(exc).__name__}: {exc}")
                continue
            truth = part.numpy(self.template.target)
            part_scores, errors = score(self.problem, preds, truth)
            if tasks is None:
                result.parts[(k, None)] = part_scores
            else:
                result.parts.update(self._task_parts(k, part, preds, truth))
            if self.keep_predictions:
                result.predictions.append((part.offsets.tolist(), preds.to_pylist(), truth.tolist(),
                                           self._column(part, self.schema.key), self._column(part, self.schema.time)))
            det = self._detector(k)
            if det is not None:
                try:
                    fired = det.update(errors, offsets=part.offsets, stream_id=part.stream_id)
                    for w in det.take_warnings():
                        inst.on_error_warning(w)
                    for e in fired:
                        inst.on_error_drift(e)
                except Exception as exc:  # noqa: BLE001 - a long-lived job must survive it
                    fired = []
                    result.errors.append(f"drift detector on offsets {part.first_offset}..{part.last_offset}: "
                                         f"{type(exc).__name__}: {exc}")
                result.events.extend(fired)
                if "drift" in self.boundaries:
                    for e in fired:
                        self._queue_boundary(seq, TaskBoundary(e.stream_id, e.offset, self._task, self._task,
                                                               "drift", self.name))
        self._queue_learning(seq, batch, tasks)
        self._drain_queue(seq, result)
        return result

    @staticmethod
    def _column(batch: Batch, name: str | None) -> list[Any] | None:
        return batch.column(name).to_pylist() if name is not None and name in batch.column_names else None

    def _tasks(self, batch: Batch) -> np.ndarray | None:
        if self.task_column is None or self.task_column not in batch.column_names:
            return None
        return np.asarray(batch.column(self.task_column).to_pylist(), dtype=object)

    def _task_parts(self, k: Any, part: Batch, preds: Any, truth: np.ndarray) -> dict[tuple[Any, Any], Scores]:
        tasks = np.asarray(part.column(self.task_column).to_pylist(), dtype=object)
        out = {}
        for t in sorted(set(tasks.tolist()), key=key_order):
            idx = np.flatnonzero(tasks == t)
            out[(k, t)] = score(self.problem, preds.take(idx), truth[idx])[0]
        return out

    def _queue_learning(self, seq: int, batch: Batch, tasks: np.ndarray | None) -> None:
        """The batch's rows to learn, cut where the task changes, with the boundaries between."""
        start = 0
        if tasks is not None:
            prev = self._task
            told = "task_column" in self.boundaries
            for i, t in enumerate(tasks.tolist()):
                # a change right after the source's end-of-task mark was signalled by the mark;
                # on a task-free stream (the strategy is not told) the held-out sets are still
                # evaluated where the task changes, so that the accuracy matrix has its rows
                if prev is not None and t != prev and not (i == 0 and self._marked) and (told or self.held_out):
                    if i > start:
                        self._enqueue_rows(seq, batch.slice(start, i - start))
                    self._queue_boundary(seq, TaskBoundary(batch.stream_id, int(batch.offsets[i]), prev, t,
                                                           "task_column", self.name), tell=told)
                    start = i
                prev = t
            self._task = prev
        self._marked = False
        self._enqueue_rows(seq, batch.slice(start) if start else batch)
        self._newest_batch = batch  # `_next_offset` reads its last offset when asked
        if batch.end_of_task:
            self._mark_end(seq, batch)

    def _enqueue_rows(self, seq: int, rows: Batch) -> None:
        for k, part in self._split(rows):
            self._pending.append((seq, k, part))

    def _mark_end(self, seq: int, batch: Batch) -> None:
        if "end_of_task" in self.boundaries:
            self._queue_boundary(seq, TaskBoundary(batch.stream_id, self._next_offset, self._task, None,
                                                   "end_of_task", self.name))
            self._marked = True

    def _queue_boundary(self, seq: int, boundary: TaskBoundary, *, tell: bool = True) -> None:
        """A boundary in the learning queue; ``tell=False``: only an evaluation point (the strategy
        is not told, the run does not count it as a boundary)."""
        self._pending.append((seq, None, None, boundary) if tell else (seq, None, None, boundary, False))

    def _drain_queue(self, seq: int, result: LearnResult) -> None:
        # labels arrive label_delay batches after the prediction
        while self._pending and self._pending[0][0] <= seq - self.label_delay:
            self._do(self._pending.popleft(), result)

    def _do(self, item: tuple[Any, ...], result: LearnResult) -> None:
        if len(item) == 5:  # an evaluation point the strategy is not told of
            self._evaluate_held_out(item[3].previous, item[3].offset, result, point="boundary")
        elif len(item) == 4:
            self._boundary(item[3], result)
        else:
            self._learn(item[1], item[2], result)

    def _selector(self, k: Any) -> Any:
        sel = self.selectors.get(k)
        if sel is None:
            sel = self.selectors[k] = copy.deepcopy(self.select)
        return sel

    def _learn(self, k: Any, part: Batch, result: LearnResult) -> None:
        if self.select is not None:
            try:
                chosen = self._selector(k).select(part, self._instance(k))
            except Exception as exc:  # noqa: BLE001 - counted and reported, the job goes on
                result.errors.append(f"select on offsets {part.first_offset}..{part.last_offset}: "
                                     f"{type(exc).__name__}: {exc}")
                return
            add_extra(result.extra, {f"select.{n}": v for n, v in chosen.report.items()})
            if chosen.rows is None or not len(chosen.rows):
                return
            part = chosen.rows
        try:
            report = self._instance(k).learn(part)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the job goes on
            result.errors.append(f"learn on offsets {part.first_offset}..{part.last_offset}: "
                                 f"{type(exc).__name__}: {exc}")
            return
        self._learned_since_eval = True
        result.samples += report.samples
        result.fits += report.fits
        result.train_seconds += report.train_seconds
        add_extra(result.extra, report.extra)
        _add_counts(result.skipped, report.skipped)
        for e in report.events:
            result.emitted.append(e if e.step else dataclasses.replace(e, step=self.name))

    def _boundary(self, boundary: TaskBoundary, result: LearnResult) -> None:
        result.boundaries.append(boundary)
        for sel in self.selectors.values():
            sel.on_task_boundary(boundary)
        for inst in self.instances.values():
            try:
                inst.on_task_boundary(boundary)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the job goes on
                result.errors.append(f"on_task_boundary at offset {boundary.offset}: {type(exc).__name__}: {exc}")
        self._evaluate_held_out(boundary.previous, boundary.offset, result, point="boundary")

    def _evaluate_held_out(self, after_task: Any, offset: int, result: LearnResult, point: str) -> None:
        if point != "start":
            self._learned_since_eval = False
        task_ids = self.task_column is not None
        for task in sorted(self.held_out, key=key_order):
            rows = self.held_out[task]
            try:
                ev = self.evaluate(rows)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the job goes on
                result.errors.append(f"evaluate on task {task!r}: {type(exc).__name__}: {exc}")
                continue
            record = {"point": point, "after_task": after_task, "offset": int(offset), "task": task,
                      "parts": ev.parts}
            if task_ids and ev.class_scores is not None:
                try:
                    masked = self.evaluate(rows, allowed_classes=self.task_classes.get(task))
                    record["parts_til"] = masked.parts
                except Exception as exc:  # noqa: BLE001 - the unmasked evaluation stands; reported
                    result.errors.append(f"task-IL evaluate on task {task!r}: {type(exc).__name__}: {exc}")
            result.evaluations.append(record)

    def finish(self) -> LearnResult:
        """Learn from labels still queued when the stream ends (no scoring left to do), then
        evaluate the held-out sets once more (after the last task)."""
        result = LearnResult(-1)
        while self._pending:
            self._do(self._pending.popleft(), result)
        # after the last task, unless its boundary evaluation already saw the final model
        if self.held_out and (self._learned_since_eval or not self._evaluated_start):
            self._evaluate_held_out(self._task, -1, result, point="end")
        return result

    # -- evaluation only -----------------------------------------------------------------
    def evaluate(self, batch: Batch, *, allowed_classes: list[Any] | None = None) -> Evaluation:
        """Predict on held-out rows: no learning, no prequential bookkeeping, no instance created.

        Rows of a key this learner has no instance for are predicted by a fresh, untrained
        clone of the template (not kept). With ``allowed_classes`` (task-incremental
        evaluation) each row's label is the best-scoring class among those, which needs a
        strategy with ``predict_scores``.
        """
        assert self.template.target is not None
        parts: dict[tuple[Any, Any], Scores] = {}
        offsets: list[int] = []
        predictions: list[Any] = []
        class_scores: list[ClassScores] | None = []
        for k, part in self._split(batch):
            inst = self.instances.get(k)
            if inst is None:
                inst = copy.deepcopy(self.template)
                inst.bind(self.schema)
            try:
                cs = inst.predict_scores(part)
            except NotImplementedError:
                cs = None
            if allowed_classes is not None:
                if cs is None:
                    raise ValueError(f"learn step {self.name!r}: task-aware evaluation needs per-class scores, "
                                     f"which {type(inst).__name__} does not give (predict_scores)")
                import pyarrow as pa

                preds = pa.array(cs.argmax(allowed_classes))
            else:
                preds = inst.predict(part)
            if class_scores is not None:
                if cs is None:
                    class_scores = None
                else:
                    class_scores.append(cs)
            truth = part.numpy(self.template.target)
            tasks = self._tasks(part)
            if tasks is None:
                parts[(k, None)] = score(self.problem, preds, truth)[0]
            else:
                parts.update(self._task_parts(k, part, preds, truth))
            offsets.extend(part.offsets.tolist())
            predictions.extend(preds.to_pylist())
        return Evaluation(parts, offsets, predictions, class_scores)

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Models, error detectors, the rows still waiting for their labels and task tracking."""
        pending = []
        for item in self._pending:
            if len(item) >= 4:
                pending.append([item[0], None, None, item[3].to_dict(), *item[4:]])
            else:
                pending.append([item[0], item[1], item[2]])
        return {
            "instances": [[k, inst.snapshot()] for k, inst in self.instances.items()],
            "selectors": [[k, sel.snapshot()] for k, sel in self.selectors.items()],
            "detectors": [[k, d.snapshot()] for k, d in self.detectors.items()],
            "pending": pending,
            "task": self._task,
            "marked": self._marked,
            "next_offset": self._next_offset,
            "evaluated_start": self._evaluated_start,
            "prepared": self._prepared,
            "learned_since_eval": self._learned_since_eval,
        }

    def restore(self, state: dict[str, Any]) -> None:
        for k, s in state["instances"]:
            self._instance(k).restore(s)
        for k, s in state.get("selectors", []):
            self._selector(k).restore(s)
        for k, s in state["detectors"]:
            det = self._detector(k)
            assert det is not None
            det.restore(s)
        pending: deque[tuple[Any, ...]] = deque()
        for item in state.get("pending", []):
            if len(item) >= 4:
                pending.append((item[0], None, None, TaskBoundary(**item[3]), *item[4:]))
            else:
                pending.append((item[0], item[1], item[2]))
        self._pending = pending
        self._task = state.get("task")
        self._marked = bool(state.get("marked", False))
        self._next_offset = int(state.get("next_offset", 0))
        self._evaluated_start = bool(state.get("evaluated_start", False))
        self._prepared = bool(state.get("prepared", self._prepared))
        self._learned_since_eval = bool(state.get("learned_since_eval", False))


def make_learner(graph: Any, name: str, schema: Schema, *, label_delay: int, shard: tuple[int, int] = (0, 1),
                 strategy: Strategy | None = None, keep_predictions: bool = False,
                 held_out: dict[Any, Batch] | None = None, unlabeled: Batch | None = None) -> Learner:
    """The `Learner` of learn step ``name`` of ``graph`` (``strategy``: the instance it trains,
    default the step's own operator)."""
    step = graph.step(name)
    senders = {d.name for d in graph.chain if d.kind == "detect" and (d.to is None or name in d.to)}
    senders |= {s.name for s in graph.learners if s.name != name}  # what other strategies raise
    return Learner(
        name,
        strategy if strategy is not None else step.op,
        schema,
        key=step.route.key if step.route else None,
        shard=shard,
        detector=step.detector,
        detector_params=step.detector_params,
        accept_events_from=senders,
        label_delay=label_delay,
        keep_predictions=keep_predictions,
        boundaries=step.boundaries,
        held_out=held_out,
        unlabeled=unlabeled,
        select=step.select,
    )


__all__ = ["Evaluation", "LearnResult", "Learner", "make_learner"]
