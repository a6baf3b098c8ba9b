"""Per-event learning for `tideflow.strategies.river_adapter.RiverStrategy` (``per_event=True``).

Transport size is not learning size: the engine moves batches of hundreds of rows, while
a River model learns one event at a time. This module holds the per-event pass that
gives a batch of any size the predictions of a batch size of 1.

By default a batch is predicted with the model as it was before the batch, then
learned (batch-prequential). With ``per_event=True`` every row of a batch is
predicted by the model that has learned the rows before it, then learned, as River's
``progressive_val_score`` does one event at a time: the engine moves batches of any
size and the predictions (so every metric) are those of a batch size of 1. ``predict``
runs that pass on copies of the models (the active one, and the background model
while one runs) and keeps them with their predictions; ``learn`` of the same rows
adopts the copies instead of learning the rows a second time, so ``predict`` changes
no model the strategy holds, and predicting the same rows again gives the same
answer. A ``learn`` whose rows were not so predicted (a part of a batch cut at a task
change, ``learn`` without ``predict``) makes the same pass itself, so the models
learn the same rows in the same order either way. The drift policy's errors are the
per-event ones; a drift decided in a batch that replaces the active model has the new
model learn the whole batch, as in the default mode.

The pass needs each row's label while the batch is predicted, which holds when labels
come with their rows (the engine's ``label_delay=0``, its default). It is made for the
rows of the stream being learned that come after every row seen so far, and not for
rows whose per-class scores were just asked for (the engine's held-out evaluation
asks for them first); those are predicted by the model as it is. When the next rows
of a stream are predicted while the previous ones still wait for their ``learn``,
labels come later than predictions (a label delay): the strategy then warns once and
predicts every later batch with the model as it is, which is what per-event learning
means when no label of a batch is known while it is predicted; the batch predicted
before that was noticed did see its own labels. ``StepReport.extra["per_event_rows"]``
counts the rows learned with per-event predictions, so the run's summary tells which
semantics ran. ``describe()`` names the mode; the default leaves a graph's description
and fingerprint as they were.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np

from tideflow.stream.batch import Batch

__all__: list[str] = []


def errors_of(problem: str, preds: list[Any], ys: list[Any], use: list[int]) -> np.ndarray:
    """The engine's per-row error of rows ``use``: 0/1 misclassified (no prediction is wrong), or
    the absolute error (no prediction counts as 0.0, as ``predict`` answers it)."""
    # one list into one array: float() rounds a value to float64 as numpy's conversion does, and
    # Python's float subtraction and abs are the IEEE operations numpy's are
    if problem == "classification":
        return np.array([0.0 if preds[i] is not None and preds[i] == ys[i] else 1.0 for i in use],
                        dtype=np.float64)
    return np.array([abs((0.0 if preds[i] is None else float(preds[i])) - float(ys[i])) for i in use],
                    dtype=np.float64)


def is_missing(value: Any) -> bool:
    """A value River cannot learn from: None, or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Pass:
    """One per-event pass over a batch's rows, made on copies of the models (module docstring,
    above).

    ``model`` / ``rival`` are the copies after the pass, ``preds`` / ``rival_preds`` each
    row's prediction by them just before they learned it (``rival_preds`` is None without a
    background model). ``stop`` is the index of the first row not predicted and learned in
    full (``len(rows)`` when the pass went through), ``failure`` why it stopped there (an
    exception from ``predict_one`` or ``learn_one``, None when it went through). The pass is
    the strategy's to adopt only while ``version`` and ``background`` still describe its
    models: every change of the active model moves the version, and a new background model
    is a new object.
    """

    __slots__ = ("version", "background", "stream_id", "offsets", "model", "rival", "preds", "rival_preds",
                 "learned", "stop", "failure")

    def __init__(self, version: int, background: Any, batch: Batch, model: Any,
                 rival: Any) -> None:
        self.version = version
        self.background = background
        self.stream_id = batch.stream_id
        self.offsets = batch.offsets
        self.model = model
        self.rival = rival
        self.preds: list[Any] = []
        self.rival_preds: list[Any] | None = None if rival is None else []
        self.learned: list[int] = []  # rows the copies learned (those with a label), in order
        self.stop = 0
        self.failure: tuple[str, BaseException] | None = None

    def run(self, rows: list[dict[str, Any]], ys: list[Any] | None) -> _Pass:
        """Predict each row, then learn it when it has a label (``ys`` None: predict only)."""
        model, rival = self.model, self.rival
        predict_one, learn_one = model.predict_one, model.learn_one
        preds, rival_preds, learned = self.preds, self.rival_preds, self.learned
        i, step = 0, "predict"
        try:
            for i, x in enumerate(rows):
                step = "predict"
                preds.append(predict_one(x))
                if rival_preds is not None:
                    rival_preds.append(rival.predict_one(x))
                y = None if ys is None else ys[i]
                if not is_missing(y):
                    step = "learn"
                    learn_one(x, y)
                    learned.append(i)
                    if rival is not None:
                        rival.learn_one(x, y)
            self.stop = len(rows)
        except Exception as exc:  # noqa: BLE001 - reported by predict and learn (they name the row)
            # rows before ``stop`` are done; so is row i when the active copy learned it (only
            # the background copy failed), as the default mode counts it then
            self.stop = i + 1 if learned and learned[-1] == i else i
            self.failure = (step, exc)
            del preds[self.stop:]
            if rival_preds is not None:
                del rival_preds[self.stop:]
        return self

    def covers(self, batch: Batch, version: int, background: Any) -> bool:
        return (self.version == version and self.background is background and self.stream_id == batch.stream_id
                and np.array_equal(self.offsets, batch.offsets))


class PerEventMixin:
    """The per-event half of `RiverStrategy` (module docstring). It works on the strategy's
    models, version, background model and drift record, and reaches its batch-mode pieces
    (``_learn_rows``, ``_learned``, ``_account``, ``_rows``) by name."""

    _pass: _Pass | None
    _newest: dict[str, int]
    _scored: tuple[str, np.ndarray] | None
    per_event: bool
    per_event_off: str | None

    def _learn_per_event(self, batch: Batch, rows: list[dict[str, Any]], ys: list[Any], use: list[int]) -> int:
        """Learning with per-event predictions (module docstring): the pass ``predict`` made for
        these rows, or one made now, is adopted unless the drift decision replaced the model."""
        done_pass, self._pass = self._pass, None
        if done_pass is None or not done_pass.covers(batch, self._version, self._background):
            if self.drift_policy == "ignore":
                # no errors to record: learning the rows in place is what the pass would do
                return self._learn_rows(batch, rows, ys, use)
            done_pass = self._make_pass(batch, rows, ys)
        learned = done_pass.learned
        version, background = self._version, self._background
        if self.drift_policy != "ignore" and learned:
            errors = errors_of(self.problem, done_pass.preds, ys, learned)
            rival = None if done_pass.rival_preds is None else errors_of(self.problem, done_pass.rival_preds, ys,
                                                                       learned)
            self._account(batch, learned, errors, rival)
        if self._version != version:
            # the decision replaced the active model: it learns the rows, as in the default mode
            self._learn_rows(batch, rows, ys, learned)
        else:
            self._model = done_pass.model
            if self._background is not None:
                if self._background is background and done_pass.rival is not None:
                    self._background.model = done_pass.rival
                else:  # started by this batch's drift decision: it learns the rows, as in the default mode
                    bkg = self._background.model
                    for i in learned:
                        bkg.learn_one(rows[i], ys[i])
            self._learned(len(learned))
        if done_pass.failure is not None:
            step, exc = done_pass.failure
            raise RuntimeError(
                f"RiverStrategy: per-event learning stopped at the row at offset "
                f"{int(batch.offsets[done_pass.stop])} ({step}_one failed); the active model learned the "
                f"{len(learned)} learnable rows before it (those stay learned; of the batch's {len(use)} "
                f"learnable rows the rest were not): {type(exc).__name__}: {exc}") from exc
        return len(learned)

    def _make_pass(self, batch: Batch, rows: list[dict[str, Any]], ys: list[Any] | None) -> _Pass:
        """A per-event pass over the rows on copies of the active (and background) model."""
        bkg = self._background if self.drift_policy != "ignore" else None
        return _Pass(self._version, self._background, batch, copy.deepcopy(self._model),
                     None if bkg is None else copy.deepcopy(bkg.model)).run(rows, ys)

    def _per_event_on(self) -> bool:
        return self.per_event and self.per_event_off is None

    def _per_event_predictions(self, batch: Batch) -> list[Any] | None:
        """The per-event predictions of the rows (module docstring), or None where they are to be
        predicted by the model as it is."""
        done_pass = self._pass
        if done_pass is not None and done_pass.covers(batch, self._version, self._background):
            return self._pass_predictions(batch, done_pass)  # the same rows again: the same answer
        scored, self._scored = self._scored, None
        if scored is not None and scored[0] == batch.stream_id and np.array_equal(scored[1], batch.offsets):
            return None  # a held-out evaluation: the engine asked for the rows' scores first
        newest = self._newest.get(batch.stream_id)
        offsets = batch.offsets
        if self.target not in batch.column_names or (newest is not None and int(offsets[0]) <= newest):
            return None  # no labels, or not the stream's next rows
        if done_pass is not None and done_pass.stream_id == batch.stream_id:
            # the stream's previous rows were predicted and never learned: labels come later
            self._pass = None
            self._stop_per_event("label_delay", batch, done_pass)
            return None
        rows = self._rows(batch)
        ys = self._targets(batch)  # type: ignore[attr-defined]
        self._pass = self._make_pass(batch, rows, ys)
        self._newest[batch.stream_id] = int(offsets[-1])
        return self._pass_predictions(batch, self._pass)

    @staticmethod
    def _pass_predictions(batch: Batch, done_pass: _Pass) -> list[Any]:
        if done_pass.failure is not None:
            step, exc = done_pass.failure
            raise RuntimeError(
                f"RiverStrategy: per-event prediction stopped at the row at offset "
                f"{int(batch.offsets[done_pass.stop])} ({step}_one failed); no model the strategy holds "
                f"has changed yet: {type(exc).__name__}: {exc}") from exc
        return done_pass.preds

    def _stop_per_event(self, why: str, batch: Batch, done_pass: _Pass) -> None:
        self.per_event_off = why
        warnings.warn(
            f"RiverStrategy(per_event=True): rows {int(done_pass.offsets[0])}..{int(done_pass.offsets[-1])} of "
            f"stream {batch.stream_id!r} were predicted and not learned before its next rows were: their labels "
            f"come later than the predictions (a label delay). Per-event learning needs each row's label while "
            f"its batch is predicted; from here on every batch is predicted by the model as it is (which is what "
            f"per-event learning gives when no label of a batch is known yet). Run with label_delay=0 for "
            f"per-event predictions.", UserWarning, stacklevel=3)
