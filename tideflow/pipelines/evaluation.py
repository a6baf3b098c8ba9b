"""Prequential (test-then-train) evaluation of strategies, shared by every runner.

For each batch a `Learner` first predicts every row with the model as it is,
scores the predictions, and only then learns from the batch; with a label
delay of ``d`` batches, the labels of batch ``i`` reach the learner after batch
``i + d`` has been predicted (the learner meanwhile predicts with a model that
has not seen them).

Scores are kept as exact partial sums per routing key (count, sum of absolute
errors, sum of squared errors, correct predictions) and combined in sorted key
order, so the local runner and the Ray runner, which spreads keys over several
actors, produce bit-identical metrics.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tideflow.stream.batch import Batch
from tideflow.stream.drift import DriftEvent, RiverDetector
from tideflow.stream.schema import Schema
from tideflow.strategies.base import Strategy


def stable_hash(value: Any) -> int:
    """A hash that is the same in every process (Python's ``hash`` of str is salted)."""
    return zlib.crc32(repr(value).encode())


def key_order(k: Any) -> tuple[str, Any]:
    return (type(k).__name__, k if k is not None else 0)


@dataclass
class Scores:
    """Exact partial sums of one strategy on some rows."""

    n: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    correct: int = 0
    ape_sum: float = 0.0  # sum of |error| / |truth| over rows whose truth is not 0
    ape_n: int = 0

    def add(self, other: Scores) -> None:
        self.n += other.n
        self.abs_sum += other.abs_sum
        self.sq_sum += other.sq_sum
        self.correct += other.correct
        self.ape_sum += other.ape_sum
        self.ape_n += other.ape_n

    def metrics(self, task: str) -> dict[str, float]:
        if self.n == 0:
            return {"rows_scored": 0}
        if task == "classification":
            return {"rows_scored": self.n, "accuracy": self.correct / self.n}
        out = {"rows_scored": self.n, "mae": self.abs_sum / self.n, "rmse": math.sqrt(self.sq_sum / self.n)}
        if self.ape_n:
            out["mape"] = 100.0 * self.ape_sum / self.ape_n  # percent, rows with a zero truth left out
        return out


def score(task: str, predictions: Any, truth: np.ndarray) -> tuple[Scores, np.ndarray]:
    """Partial sums for one batch and the per-row error (absolute, or 0/1 misclassified)."""
    if task == "classification":
        pred = np.array(predictions.to_pylist(), dtype=object)
        true = np.array(truth.tolist(), dtype=object)
        wrong = np.array([p is None or p != t for p, t in zip(pred, true)], dtype=float)
        return Scores(n=len(true), correct=int(len(true) - wrong.sum())), wrong
    pred = predictions.to_numpy(zero_copy_only=False).astype(np.float64)
    true = truth.astype(np.float64)
    err = pred - true
    abs_err = np.abs(err)
    nonzero = true != 0
    ape = float((abs_err[nonzero] / np.abs(true[nonzero])).sum())
    return Scores(n=len(err), abs_sum=float(abs_err.sum()), sq_sum=float((err * err).sum()),
                  ape_sum=ape, ape_n=int(nonzero.sum())), abs_err


def add_extra(total: dict[str, float], more: dict[str, float]) -> None:
    """Sum a strategy's extra counters (``StepReport.extra``) into ``total``."""
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + float(v)


@dataclass
class LearnResult:
    """What one learn step did with one batch (plain data, sent from actors)."""

    seq: int
    parts: dict[Any, Scores] = field(default_factory=dict)
    samples: int = 0
    fits: int = 0
    train_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # summed `StepReport.extra` counters
    events: list[DriftEvent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # strategy exceptions, one line each
    # (offsets, predictions, truth) per scored part, when the run keeps predictions
    predictions: list[tuple[list[int], list[Any], list[Any]]] = field(default_factory=list)

    def merge(self, other: LearnResult) -> None:
        self.parts.update(other.parts)
        self.samples += other.samples
        self.fits += other.fits
        self.train_seconds += other.train_seconds
        add_extra(self.extra, other.extra)
        self.events.extend(other.events)
        self.errors.extend(other.errors)
        self.predictions.extend(other.predictions)

    def combined(self) -> Scores:
        total = Scores()
        for k in sorted(self.parts, key=key_order):
            total.add(self.parts[k])
        return total


class Learner:
    """One learn step: its strategy instance(s), error detectors and label-delay queue.

    Args:
        name: the step name.
        strategy: a strategy already bound to the schema; with a keyed route it
            is the template each key's instance is cloned from.
        schema: the schema arriving at the step.
        key: the key column for keyed routing, or None (broadcast).
        shard: ``(index, count)``: this learner handles the keys whose stable
            hash modulo ``count`` is ``index`` (the Ray runner's actors).
        detector / detector_params: River detector on the prequential error.
        accept_events_from: detect steps whose events reach this strategy.
        label_delay: batches between a prediction and learning from its labels.
    """

    def __init__(self, name: str, strategy: Strategy, schema: Schema, *, key: str | None = None,
                 shard: tuple[int, int] = (0, 1), detector: str | None = None,
                 detector_params: dict[str, Any] | None = None,
                 accept_events_from: set[str] | None = None, label_delay: int = 0,
                 keep_predictions: bool = False) -> None:
        self.name = name
        self.template = strategy
        self.schema = schema
        self.key = key
        self.shard = shard
        self.detector = detector
        self.detector_params = dict(detector_params or {})
        self.accept_events_from = accept_events_from
        self.label_delay = label_delay
        self.keep_predictions = keep_predictions
        self.problem = strategy.problem
        self.instances: dict[Any, Strategy] = {}
        self.detectors: dict[Any, RiverDetector] = {}
        self._pending: deque[tuple[int, Any, Batch]] = deque()
        if key is None:
            self.instances[None] = strategy

    def _instance(self, k: Any) -> Strategy:
        inst = self.instances.get(k)
        if inst is None:
            inst = self.template.clone()  # type: ignore[assignment]
            inst.bind(self.schema)  # type: ignore[attr-defined]
            self.instances[k] = inst  # type: ignore[assignment]
        return inst  # type: ignore[return-value]

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

    def step(self, seq: int, batch: Batch | None, events: list[DriftEvent] = ()) -> LearnResult:  # type: ignore[assignment]
        result = LearnResult(seq)
        for e in events:
            if self.accept_events_from is None or e.step in self.accept_events_from:
                for inst in self.instances.values():
                    inst.on_drift(e)
        if batch is None or not len(batch):
            return result
        assert self.template.target is not None
        parts = self._split(batch)
        for k, part in parts:
            inst = self._instance(k)
            try:
                preds = inst.predict(part)
            except Exception as exc:  # noqa: BLE001 - a long-lived job must survive one bad batch
                result.errors.append(f"predict on offsets {part.first_offset}..{part.last_offset}: "
                                     f"{type(exc).__name__}: {exc}")
                continue
            truth = part.numpy(self.template.target)
            scores, errors = score(self.problem, preds, truth)
            result.parts[k] = scores
            if self.keep_predictions:
                result.predictions.append((part.offsets.tolist(), preds.to_pylist(), truth.tolist()))
            det = self._detector(k)
            if det is not None:
                try:
                    fired = det.update(errors, offsets=part.offsets, stream_id=part.stream_id)
                    for e in fired:
                        inst.on_drift(e)
                except Exception as exc:  # noqa: BLE001 - a long-lived job must survive it
                    fired = []
                    result.errors.append(f"drift detector on offsets {part.first_offset}..{part.last_offset}: "
                                         f"{type(exc).__name__}: {exc}")
                result.events.extend(fired)
            self._pending.append((seq, k, part))
        # labels arrive label_delay batches after the prediction
        while self._pending and self._pending[0][0] <= seq - self.label_delay:
            _, k, part = self._pending.popleft()
            self._learn(k, part, result)
        return result

    def _learn(self, k: Any, part: Batch, result: LearnResult) -> None:
        try:
            report = self._instance(k).learn(part)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the job goes on
            result.errors.append(f"learn on offsets {part.first_offset}..{part.last_offset}: "
                                 f"{type(exc).__name__}: {exc}")
            return
        result.samples += report.samples
        result.fits += report.fits
        result.train_seconds += report.train_seconds
        add_extra(result.extra, report.extra)

    def finish(self) -> LearnResult:
        """Learn from labels still queued when the stream ends (no scoring left to do)."""
        result = LearnResult(-1)
        while self._pending:
            _, k, part = self._pending.popleft()
            self._learn(k, part, result)
        return result

    def snapshot(self) -> dict[str, Any]:
        """Models, error detectors and the rows still waiting for their labels (plain data + batches)."""
        return {
            "instances": [[k, inst.snapshot()] for k, inst in self.instances.items()],
            "detectors": [[k, d.snapshot()] for k, d in self.detectors.items()],
            "pending": [[seq, k, part] for seq, k, part in self._pending],
        }

    def restore(self, state: dict[str, Any]) -> None:
        for k, s in state["instances"]:
            self._instance(k).restore(s)
        for k, s in state["detectors"]:
            det = self._detector(k)
            assert det is not None
            det.restore(s)
        self._pending = deque((seq, k, part) for seq, k, part in state.get("pending", []))
