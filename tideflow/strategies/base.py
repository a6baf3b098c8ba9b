"""The `Strategy` contract: a continual learner that learns from and predicts on batches.

A strategy is a `Stateful` stage (``snapshot``/``restore`` of plain data, constructor
parameters as its configuration) with these methods (docs/architecture.md, "Contracts"):

* ``learn(batch) -> StepReport``: one update on a batch; the report counts compute and
  may carry events the strategy raises itself (``StepReport.events``: an
  out-of-distribution batch, a capacity warning), which the engine logs and hands to
  the other learn steps;
* ``predict(batch) -> pa.Array``: one prediction per row, no side effects;
* ``predict_scores(batch) -> ClassScores``: classifiers that can, one score per class
  and row (what task-incremental evaluation masks to a task's classes);
* ``on_drift(event)``: optional reaction to a drift event from elsewhere; its own error
  detector's events (and warnings) arrive at ``on_error_drift`` (default: ``on_drift``) and
  ``on_error_warning``;
* ``prepare(unlabeled)``: optional, before the first batch, on unlabeled rows that cover the
  stream's inputs (the source's ``unlabeled()``);
* ``on_task_boundary(boundary)``: optional reaction to the end of a task (the schema's
  task column changed, the source marked the end of a task, or a drift event was
  configured to count as one); called after the old task's last rows were learned.

``problem`` ("regression" or "classification") picks the prequential metrics; it is
not the task of a task-incremental stream, which is the schema's ``task`` role.

A strategy knows its ``target`` column and its ``features``; either may be left
unset and is then taken from the pipeline's schema by ``bind``. A strategy that
ends up without a target is a graph error, reported before anything runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch, is_tensor_type
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.stream.operator import Stateful
from tideflow.stream.schema import Schema


#: keys of `StepReport.extra` whose running sum is logged per batch as ``cum_<key>``: the compute
#: counters, and levels a strategy reports as changes so that the sum is the level
#: (``network_share``: the share of a sparse network some task holds)
COMPUTE_EXTRA = frozenset({"train_rows", "flops", "fit_windows", "examples", "network_share"})


@dataclass
class StepReport:
    """What one ``learn`` call did, for compute accounting."""

    samples: int = 0
    fits: int = 0
    train_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    #: events the strategy raises while learning (see module docstring)
    events: list[DriftEvent] = field(default_factory=list)
    #: rows of the batch the strategy could not use, per reason (``"time_not_after_newest"``,
    #: ``"null_target"``, ...): the engine counts them in the summary and MLflow and warns
    #: once per reason, so that no row is left out in silence
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClassScores:
    """Per-class scores of some rows: ``scores[i, j]`` is row i's score for ``classes[j]``
    (higher = more likely; probabilities or logits, as the strategy has them)."""

    scores: np.ndarray
    classes: list[Any]

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[1] != len(self.classes):
            raise ValueError(f"scores of shape {self.scores.shape} for {len(self.classes)} classes")

    def argmax(self, allowed: list[Any] | None = None) -> list[Any]:
        """The best class per row, among ``allowed`` classes only when given (task-IL masking);
        None for every row when none of them has a score (a model that has seen none of them)."""
        scores = self.scores
        classes = self.classes
        if allowed is not None:
            keep = [j for j, c in enumerate(classes) if c in set(allowed)]
            scores, classes = scores[:, keep], [classes[j] for j in keep]
        if not len(classes):
            return [None] * len(scores)
        return [classes[j] for j in np.argmax(scores, axis=1)]


class SchemaError(ValueError):
    """A batch or schema does not fit what a strategy needs."""


class Strategy(Stateful):
    """Base class of every continual learner (see module docstring)."""

    kind = "strategy"
    checkable = False
    #: "regression" or "classification": picks the prequential metrics (not the task of a
    #: task-incremental stream, which is the schema's ``task`` role)
    problem: ClassVar[str] = "regression"
    #: whether the strategy learns from rows in any order (a selection stage may then hand it
    #: rows of its choosing); False for time-series forecasters, whose rows must come in order
    unordered_rows: ClassVar[bool] = True

    target: str | None
    features: list[str] | None

    # -- schema binding -------------------------------------------------------------
    def bind(self, schema: Schema) -> None:
        """Take target and features from ``schema`` where the strategy left them unset."""
        if self.target is None:
            self.target = schema.target
        if self.target is None:
            raise SchemaError(f"{type(self).__name__} has no target column and the schema declares none")
        if self.target not in schema.fields:
            raise SchemaError(
                f"{type(self).__name__}: target column {self.target!r} is not in the schema ({schema.names})"
            )
        target_type = schema.fields[self.target].type
        if self.problem == "classification" and (pa.types.is_floating(target_type) or is_tensor_type(target_type)):
            raise SchemaError(
                f"{type(self).__name__} is a classifier but target {self.target!r} is {target_type}; "
                "classification needs integer, boolean or string labels"
            )
        if self.features is None:
            self.features = [n for n in schema.feature_names if n != self.target]
        missing = [f for f in self.features if f not in schema.fields]
        if missing:
            raise SchemaError(f"{type(self).__name__}: feature columns {missing} are not in the schema")

    def _check_columns(self, batch: Batch, need_target: bool) -> None:
        if self.target is None or self.features is None:
            raise SchemaError(f"{type(self).__name__} is not bound to a schema: call bind(schema) first")
        need = list(self.features) + ([self.target] if need_target else [])
        missing = [c for c in need if c not in batch.column_names]
        if missing:
            raise SchemaError(
                f"{type(self).__name__}: batch lacks columns {missing}; it has {batch.column_names}"
            )

    # -- the contract -------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        raise NotImplementedError

    def predict(self, batch: Batch) -> pa.Array:
        raise NotImplementedError

    def predict_scores(self, batch: Batch) -> ClassScores:
        """Per-class scores of every row, no side effects (classifiers that have them)."""
        raise NotImplementedError(f"{type(self).__name__} gives labels only, no per-class scores")

    def on_drift(self, event: DriftEvent) -> None:
        """React to a drift event from elsewhere (a detector on a column, another learn step's
        strategy); the default ignores it."""

    def on_error_drift(self, event: DriftEvent) -> None:
        """The learn step's own error detector (``learn(..., detector=...)``) found drift in this
        strategy's prequential error; the default treats it as any drift event (``on_drift``)."""
        self.on_drift(event)

    def on_error_warning(self, event: DriftEvent) -> None:
        """The own error detector entered its warning zone (detectors that have one: DDM, EDDM,
        HDDM_A, HDDM_W); the default ignores it."""

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        """React to the end of a task; the default ignores it."""

    def prepare(self, unlabeled: Batch) -> None:
        """Before the first batch: rows without labels that cover the stream's inputs (the
        source's ``unlabeled()``, or what the user passed); the default ignores them. Called
        once per run; a strategy restored from a snapshot is not prepared again."""


def timed_report(samples: int, start: float, fits: int = 1) -> StepReport:
    return StepReport(samples=samples, fits=fits if samples else 0, train_seconds=time.perf_counter() - start)


def labels(batch: Batch, target: str) -> np.ndarray:
    return batch.numpy(target)


def class_labels(batch: Batch, target: str, n_classes: int, who: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Integer labels of ``batch``'s ``target`` column, the mask of rows a classifier can learn
    and the count of each kind left out (``null_target``, ``label_out_of_range``: rows, not the
    batch, so one bad label costs one row); a column that is not integers is a `SchemaError`
    naming ``who`` and the column."""
    col = batch.column(target)
    if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        raise SchemaError(f"{who} needs integer labels 0..{n_classes - 1} in {target!r}; it holds {col.type}")
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    y = np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)
    skipped: dict[str, int] = {}
    if (~valid).any():
        skipped["null_target"] = int((~valid).sum())
    out = valid & ((y < 0) | (y >= n_classes))
    if out.any():
        skipped["label_out_of_range"] = int(out.sum())
    return y, valid & ~out, skipped
