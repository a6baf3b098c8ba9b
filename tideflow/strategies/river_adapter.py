"""Any River estimator as a tideflow strategy, with a policy for drift.

Rows are handed to the estimator one at a time with ``learn_one`` (River's
``learn_many`` is a different, mini-batch update for the few estimators that
have it, so using it would change what "the same River model" means). The
estimator's state is snapshotted as plain data through
`tideflow.stream.state.to_plain`, never pickled.

Missing values
    River models take a row as a dict and treat a key that is absent as a missing
    value (its scalers, linear models, trees and Bayes models all accept that). So a
    null in a feature (and NaN in a float feature) leaves that key out of the row's
    dict; the row is learned and predicted with the features it has. A row whose
    target is null (or NaN) cannot be learned: it is counted as
    ``StepReport.skipped["null_target"]`` and predicted like any other row.
A failure in the middle of a batch
    Every row of a batch is converted (features to dicts, targets checked) and, unless
    the drift policy is ``"ignore"``, predicted (see below) before the first
    ``learn_one``, so a batch that cannot be converted or predicted fails before the
    model has changed, and the error names the row. If ``learn_one`` itself raises on a
    row, the rows before it stay learned (River updates in place and has no undo) and
    the error says at which offset it stopped and how many rows were learned; the
    engine records the error and goes on with the next batch.
Drift (``drift_policy``)
    What the strategy does when a drift event reaches it:

    * ``"background"`` (default): a fresh model starts learning beside the active one
      (every row the active model learns, it learns too) at the start of a warning
      zone of the learn step's own error detector (detectors that have one: DDM,
      EDDM, HDDM_A, HDDM_W; a new warning zone restarts it), or at a drift when none
      is running (every drift of ADWIN, PageHinkley or KSWIN, which have no warning
      zone, and every event from elsewhere). It becomes the active model once it
      predicts better: on the last `DUEL_ROWS` rows both predicted, its error is
      lower by more than two standard errors of the mean difference (checked after
      every batch and at every drift). One that has not done so after
      `CHALLENGE_ROWS` rows is dropped (the active model kept up with the change).
      River's drift-retraining wrapper swaps at the drift whatever the background
      model is worth; we do not, because a fresh model can stay worse than the one
      that adapts for a long while after a drift (a Hoeffding tree on River's
      Agrawal stream: ``tests/strategies/test_river_adapter.py`` pins it).
    * ``"reset"``: the model is replaced at the drift by a fresh one, whatever it
      is worth.
    * ``"ignore"``: events are logged by the engine and change nothing here.

    A fresh model is River's ``clone()`` of the estimator: its constructor
    parameters, untrained. A model the user trained before the run (which the run's
    copy keeps) is not what a drift restarts from: what it learned belongs to the
    concept that just ended.

    ``react_to`` says which events count: ``"own"`` (default) only the learn step's
    own error detector (``learn(..., detector="ADWIN")``), which watches this very
    model's error; events of detect steps and other learn steps reaching
    ``on_drift`` are logged by the engine and counted here in ``events_ignored`` (a
    shift in a feature need not hurt this model). ``"any"`` reacts to those too.
Only a rise of the error is a drift to react to
    ADWIN, Page-Hinkley and KSWIN watch the error's mean in both directions, so they
    also fire when it *falls*: while a model is still learning, and again after every
    fresh start, which would then restart a model each time it gets better. So the
    strategy keeps the active model's own prequential errors (0/1 misclassified, or
    the absolute error; each row predicted by the model as it was before the batch,
    as the engine predicted it) and decides when it learns the row at the event's
    offset: it reacts when the mean error of the last `RECENT_ROWS` rows up to that
    row exceeds the mean of the model's errors before them; otherwise the event is
    counted in ``drifts_dismissed``. A model with fewer than twice `RECENT_ROWS`
    errors recorded has no reference yet and does not react either. With label delay
    the decision waits for the labels of the event's row, as learning does. The
    errors come from the predictions ``predict`` made just before ``learn`` (the same
    rows, no learning between); where there are none (label delay, ``learn`` without
    ``predict``) the rows are predicted once more, so the cost of the policy is one
    extra prediction per row at most, and a second model's prediction and update per
    row while a background model runs. ``"ignore"`` costs nothing.
Per-event learning (``per_event=True``)
    Every row of a batch predicted by the model that has learned the rows before it, as
    River's ``progressive_val_score`` does: `tideflow.strategies.river_per_event`.
State
    The background model, the error record, a drift waiting for its decision and the
    counters (`COUNTERS`: ``resets``, ``swaps``, ``background_starts``,
    ``backgrounds_dropped``, ``events_ignored``, ``drifts_dismissed``) are part of the
    snapshot, so a restored strategy goes on exactly as the original would (with
    ``per_event=True`` also whether a label delay turned the per-event pass off).

>>> from river import linear_model, preprocessing
>>> from tideflow.stream.batch import Batch
>>> s = RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression(), target="y")
>>> s.features = ["x"]
>>> b = Batch.from_pydict({"x": [0.0, 1.0, None], "y": [0.0, 2.0, 4.0]})
>>> s.learn(b).samples
3
>>> len(s.predict(b))
3
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.events import DriftEvent
from tideflow.stream.state import from_plain, to_plain
from tideflow.strategies.base import ClassScores, StepReport, Strategy
from tideflow.strategies.river_per_event import PerEventMixin, errors_of, is_missing
from tideflow.strategies.river_rows import RowPlan

__all__ = ["DRIFT_POLICIES", "REACT_TO", "RiverStrategy"]

#: what a drift event does to the model (module docstring)
DRIFT_POLICIES = ("background", "reset", "ignore")
#: which events the policy reacts to
REACT_TO = ("own", "any")

#: what the strategy counts about drift (snapshotted, module docstring)
COUNTERS = ("resets", "swaps", "background_starts", "backgrounds_dropped", "events_ignored", "drifts_dismissed")


def _is_classifier(estimator: Any) -> bool:
    from river import base

    return isinstance(estimator, base.Classifier)


class _ErrorRecord:
    """The active model's prequential errors since it started: their sum and count, and the
    last ``recent`` of them (what the rise test of the module docstring compares)."""

    def __init__(self, recent: int) -> None:
        self.last: deque[float] = deque(maxlen=recent)
        self.total = 0.0
        self.n = 0

    def extend(self, errors: np.ndarray) -> None:
        values = errors.tolist()
        self.last.extend(values)
        # numpy's sum of one value is that value: the same total without the array call
        self.total += values[0] if len(values) == 1 else float(errors.sum())
        self.n += len(values)

    def rose(self) -> bool | None:
        """Whether the last errors are worse than the ones before them (None: too few to tell)."""
        size = self.last.maxlen or 0
        if self.n < 2 * size:
            return None
        recent = sum(self.last)
        return recent / size > (self.total - recent) / (self.n - size)

    def to_plain(self) -> dict[str, Any]:
        return {"last": list(self.last), "total": self.total, "n": self.n}

    @classmethod
    def from_plain(cls, state: dict[str, Any] | None, recent: int) -> _ErrorRecord:
        record = cls(recent)
        if state:
            record.last.extend(float(e) for e in state["last"])
            record.total, record.n = float(state["total"]), int(state["n"])
        return record


class _Background:
    """A model learning beside the active one, since a warning zone started or since a drift no
    warning preceded (``since``); ``duel`` holds the active model's error minus its own on the
    last rows both predicted."""

    def __init__(self, model: Any, since: str, recent: int) -> None:
        self.model = model
        self.since = since
        self.rows = 0
        self.duel: deque[float] = deque(maxlen=recent)

    def won(self) -> bool:
        """Whether it predicted better on the last rows, by more than two standard errors of the
        mean difference (so that two equally good models do not swap on noise)."""
        n = len(self.duel)
        if n < (self.duel.maxlen or 0):
            return False
        d = np.fromiter(self.duel, dtype=np.float64, count=n)
        return float(d.mean()) > 2.0 * float(d.std()) / math.sqrt(n)

    def to_plain(self) -> dict[str, Any]:
        return {"model": to_plain(self.model), "since": self.since, "rows": self.rows, "duel": list(self.duel)}

    @classmethod
    def from_plain(cls, state: Any, recent: int) -> _Background | None:
        if state is None:
            return None
        bkg = cls(from_plain(state["model"]), state["since"], recent)
        bkg.rows = int(state["rows"])
        bkg.duel.extend(float(d) for d in state["duel"])
        return bkg


class RiverStrategy(PerEventMixin, Strategy):
    """Adapter over a River estimator (regressor or classifier); see the module docstring.

    Args:
        estimator: a River estimator or pipeline; it is copied as it is (a model the user
            trained before keeps what it learned), so the object passed in stays untouched.
        target: label column (default: the schema's target).
        features: feature columns (default: the schema's features).
        drift_policy: ``"background"``, ``"reset"`` or ``"ignore"``: what a drift does.
        react_to: ``"own"`` (the learn step's error detector only) or ``"any"`` event.
        per_event: predict each row of a batch with the model that has learned the rows
            before it (River's progressive validation inside a batch of any size); False
            (default): every row with the model from before the batch.
    """

    #: rows of recent error the rise test compares with the model's earlier error
    RECENT_ROWS = 200
    #: rows after which a background model that never predicted better is dropped (the
    #: active model kept up with the change)
    CHALLENGE_ROWS = 20 * RECENT_ROWS
    #: rows over which a background model must predict better than the active one to take over:
    #: longer than RECENT_ROWS because right after a drift the active model is at its worst
    #: while it adapts, and a fresh model that wins only that moment can stay worse for long
    #: (a Hoeffding tree on Agrawal: tests/strategies/test_river_adapter.py)
    DUEL_ROWS = 5 * RECENT_ROWS

    def __init__(self, estimator: Any, *, target: str | None = None, features: list[str] | None = None,
                 drift_policy: str = "background", react_to: str = "own", per_event: bool = False) -> None:
        if drift_policy not in DRIFT_POLICIES:
            raise ValueError(f"drift_policy must be one of {DRIFT_POLICIES}, got {drift_policy!r}")
        if react_to not in REACT_TO:
            raise ValueError(f"react_to must be one of {REACT_TO}, got {react_to!r}")
        self.estimator = estimator
        self.target = target
        self.features = list(features) if features is not None else None
        self.drift_policy = drift_policy
        self.react_to = react_to
        self.per_event = bool(per_event)
        # a copy, not River's clone(): clone() rebuilds from the parameters and would drop
        # what a warm-started estimator learned (for a fresh estimator the two are the same)
        self._model = copy.deepcopy(estimator)
        self._background: Any = None
        self.problem = "classification" if _is_classifier(estimator) else "regression"  # type: ignore[misc]
        self.n_learned = 0
        self.resets = 0
        self.swaps = 0
        self.background_starts = 0
        self.events_ignored = 0
        self.drifts_dismissed = 0
        self.backgrounds_dropped = 0
        self._errors = _ErrorRecord(self.RECENT_ROWS)
        self._pending: DriftEvent | None = None  # a drift waiting for the labels of its row
        # True only while on_error_drift hands an event to on_drift (see on_error_drift)
        self._own_event = False
        # bumped whenever the active model changes: cached predictions of an older one are stale
        self._version = 0
        # per_event: the pass `predict` made, waiting for `learn` of the same rows; the newest
        # offset seen per stream (a pass is for rows after it); the rows whose per-class scores
        # were asked for last (a held-out evaluation); why the pass is off (None: it is on)
        self._pass = None
        self._newest: dict[str, int] = {}
        self._scored: tuple[str, np.ndarray] | None = None
        self.per_event_off: str | None = None

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        from river import linear_model, preprocessing

        # react_to="any": the suite's on_drift check then goes through a drift decision
        return {"estimator": preprocessing.StandardScaler() | linear_model.LinearRegression(), "react_to": "any"}

    # -- rows ------------------------------------------------------------------------
    def _check_columns(self, batch: Batch, need_target: bool) -> None:
        # the base class's check reads the batch's column names once per column; this one
        # once per Arrow schema: a batch with the schema of the last batch that passed (same
        # columns, same types) passes too; every failure goes to the base class for its message
        schema = batch.data.schema
        ok = getattr(self, "_columns_ok", None)  # (schema, features, target, target present)
        if (ok is not None and (ok[0] is schema or ok[0].equals(schema)) and ok[1] == self.features
                and ok[2] == self.target and (ok[3] or not need_target)):
            return
        if self.target is not None and self.features is not None:
            have = set(schema.names)
            if all(f in have for f in self.features) and (not need_target or self.target in have):
                self._columns_ok = (schema, list(self.features), self.target, self.target in have)
                return
        super()._check_columns(batch, need_target)

    def _rows(self, batch: Batch) -> list[dict[str, Any]]:
        """The batch's feature rows as River dicts, a missing value's key left out
        (`tideflow.strategies.river_rows`).

        Prequential evaluation predicts and then learns on the same batch: the rows are
        converted once (River's progressive_val_score also hands the same dict to
        predict_one and learn_one). The cache holds the table itself, so an identity match
        cannot be a recycled id. The conversion's plan is kept per Arrow schema.
        """
        assert self.features is not None
        cached = getattr(self, "_row_cache", None)
        if cached is not None and cached[0] is batch.data and cached[1] == self.features:
            return cached[2]
        data = batch.data
        plan = getattr(self, "_plan", None)
        if not (plan is not None and plan.fits(data.schema, self.features, self.target)):
            plan = self._plan = RowPlan(data.schema, self.features, self.target)
        rows, ys = plan.convert(data)
        self._row_cache = (data, list(self.features), rows, ys, self.target)
        return rows

    def _targets(self, batch: Batch) -> list[Any]:
        """The batch's target values (None or NaN where missing): from the rows' conversion when
        it took them along, else from the column."""
        cached = getattr(self, "_row_cache", None)
        if cached is not None and cached[0] is batch.data and cached[3] is not None and cached[4] == self.target:
            return cached[3]
        return batch.column(self.target).to_pylist()

    def _predictions(self, batch: Batch, rows: list[dict[str, Any]]) -> list[Any]:
        """The active model's raw predictions of the batch's rows (None where it has none).

        The predictions ``predict`` just made are reused when they are of the same rows
        (stream and offsets) by the same model version; otherwise the rows are predicted
        again. Either way the answer is the same, so calling ``predict`` changes nothing.
        """
        cached = getattr(self, "_pred_cache", None)
        if (cached is not None and cached[0] == self._version and cached[1] == batch.stream_id
                and (cached[2] is batch.data or cached[2].column(OFFSET).equals(batch.data.column(OFFSET)))):
            return cached[3]
        return _predict_rows(self._model, rows, batch, "the active model")

    # -- the contract ---------------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        start = time.perf_counter()
        if not len(batch):
            return StepReport()
        self._check_columns(batch, need_target=True)
        assert self.target is not None
        # everything is converted before the first learn_one (module docstring)
        rows = self._rows(batch)
        ys = self._targets(batch)
        use = [i for i, y in enumerate(ys) if not is_missing(y)]
        per_event = self._per_event_on()
        if per_event:
            last = int(batch.offsets[-1])
            self._newest[batch.stream_id] = max(last, self._newest.get(batch.stream_id, last))
        if per_event and len(batch) > 1:
            done = self._learn_per_event(batch, rows, ys, use)
        else:
            # one row: predicted by the model from before it either way
            done = self._learn_batch(batch, rows, ys, use)
        report = StepReport(samples=len(batch), fits=1, train_seconds=time.perf_counter() - start)
        if len(use) < len(batch):
            report.skipped["null_target"] = len(batch) - len(use)
        if self.per_event:
            report.extra["per_event_rows"] = done if per_event else 0
        return report

    def _learn_batch(self, batch: Batch, rows: list[dict[str, Any]], ys: list[Any], use: list[int]) -> int:
        """The default mode's learning (module docstring): errors and a waiting drift decided on
        the batch's predictions, then every labelled row learned; returns the rows learned."""
        if self.drift_policy != "ignore" and use:
            self._record_errors(batch, rows, ys, use)
        return self._learn_rows(batch, rows, ys, use)

    def _learn_rows(self, batch: Batch, rows: list[dict[str, Any]], ys: list[Any], use: list[int]) -> int:
        """``learn_one`` of rows ``use`` by the active model (and the background one)."""
        learn_one = self._model.learn_one
        background = None if self._background is None else self._background.model
        done = 0  # rows the active model has learned
        i = use[0] if use else 0
        try:
            for i in use:
                x, y = rows[i], ys[i]
                learn_one(x, y)
                done += 1
                if background is not None:
                    background.learn_one(x, y)
        except Exception as exc:
            self.n_learned += done
            self._version += 1
            raise RuntimeError(
                f"RiverStrategy: learning failed on the row at offset {int(batch.offsets[i])}; the active "
                f"model had learned {done} of the batch's {len(use)} learnable rows (those stay learned, "
                f"the rest were not): {type(exc).__name__}: {exc}") from exc
        self._learned(done)
        return done

    def _learned(self, done: int) -> None:
        self.n_learned += done
        self._version += 1
        if self._background is not None:
            self._background.rows += done

    def _record_errors(self, batch: Batch, rows: list[dict[str, Any]], ys: list[Any], use: list[int]) -> None:
        """Add the active model's errors on the rows about to be learned, deciding a waiting
        drift at the row of its offset, and let a background model take over once it predicts
        better (module docstring)."""
        errors = errors_of(self.problem, self._predictions(batch, rows), ys, use)
        rival = None
        if self._background is not None:
            rival = errors_of(self.problem, _predict_rows(self._background.model, rows, batch, "the background model"),
                            ys, use)
        self._account(batch, use, errors, rival)

    def _account(self, batch: Batch, use: list[int], errors: np.ndarray, rival: np.ndarray | None) -> None:
        """The errors of rows ``use`` (and the background model's, ``rival``) into the record and
        the duel; a waiting drift decided at the row of its offset; a background model that
        predicts better takes over, one that never did is dropped (module docstring)."""
        challenger = self._background
        if challenger is not None and rival is not None:
            challenger.duel.extend((errors - rival).tolist())
        pending = self._pending
        if pending is not None:
            reached = np.flatnonzero(batch.offsets[use] >= pending.offset)
            if len(reached):
                at = int(reached[0]) + 1
                self._errors.extend(errors[:at])
                self._pending = None
                if self._decide(pending):
                    return  # the rest of the batch was predicted by the replaced model
                errors = errors[at:]
        self._errors.extend(errors)
        if challenger is not None and challenger is self._background:
            if challenger.won():
                self._replace(challenger.model)
                self.swaps += 1
            elif challenger.rows >= self.CHALLENGE_ROWS:
                self._background = None
                self.backgrounds_dropped += 1

    def predict(self, batch: Batch) -> pa.Array:
        if not len(batch):
            return pa.array([], type=pa.int64() if self.problem == "classification" else pa.float64())
        self._check_columns(batch, need_target=False)
        preds = self._per_event_predictions(batch) if self._per_event_on() and len(batch) > 1 else None
        if preds is None:
            predict_one = self._model.predict_one
            preds = [predict_one(x) for x in self._rows(batch)]
            if self.drift_policy != "ignore":
                # the rows themselves (Arrow data does not change): the same table object is the
                # same rows at once, another one is compared by its offsets
                self._pred_cache = (self._version, batch.stream_id, batch.data, preds)
        if self.problem == "classification":
            return pa.array(preds)
        # through numpy: the same float64 values, and Arrow takes the array without converting
        # each Python float (which costs more than the prediction of a small batch)
        return pa.array(np.array([float(p) if p is not None else 0.0 for p in preds], dtype=np.float64))

    def predict_scores(self, batch: Batch) -> ClassScores:
        """River's ``predict_proba_one`` per row; the classes are every label any row has a
        probability for (sorted), a missing one scoring 0."""
        if self.per_event:
            # what the engine's held-out evaluation asks for first: those rows get no per-event pass
            self._scored = (batch.stream_id, batch.offsets)
        if self.problem != "classification":
            raise NotImplementedError("per-class scores are for classifiers; this estimator is a regressor")
        self._check_columns(batch, need_target=False)
        probas = [self._model.predict_proba_one(x) for x in self._rows(batch)] if len(batch) else []
        classes = sorted({c for p in probas for c in p}, key=lambda c: (type(c).__name__, c))
        scores = np.array([[p.get(c, 0.0) for c in classes] for p in probas], dtype=np.float64)
        return ClassScores(scores.reshape(len(probas), len(classes)), classes)

    # -- drift ------------------------------------------------------------------------------
    def on_error_drift(self, event: DriftEvent) -> None:
        """The learn step's own error detector fired: it counts whatever ``react_to`` says. It
        goes through ``on_drift``, as the base class promises, so a subclass that overrides
        ``on_drift`` still sees every event."""
        self._own_event = True
        try:
            self.on_drift(event)
        finally:
            self._own_event = False

    def on_drift(self, event: DriftEvent) -> None:
        """A drift event: if it counts (``drift_policy``, ``react_to``), it waits for the labels of
        its row, where the rise test decides (module docstring); one waiting event at a time."""
        if self.drift_policy == "ignore" or (not self._own_event and self.react_to == "own"):
            self.events_ignored += 1
            return
        if self._pending is None:
            self._pending = event

    def on_error_warning(self, event: DriftEvent) -> None:
        """The own error detector entered its warning zone: with ``drift_policy="background"``
        a fresh background model starts learning (a running one is replaced)."""
        if self.drift_policy == "background":
            self._background = _Background(self._fresh(), "warning", self.DUEL_ROWS)
            self.background_starts += 1

    def _decide(self, event: DriftEvent) -> bool:
        """Apply the policy if the error rose; returns whether the active model changed."""
        if not self._errors.rose():
            self.drifts_dismissed += 1
            return False
        if self.drift_policy == "reset":
            self._replace(self._fresh())
            self.resets += 1
            return True
        bkg = self._background
        if bkg is not None and bkg.won():
            self._replace(bkg.model)
            self.swaps += 1
            return True
        if bkg is None:  # no warning before this drift: a background model starts here
            self._background = _Background(self._fresh(), "drift", self.DUEL_ROWS)
            self.background_starts += 1
        return False

    def _replace(self, model: Any) -> None:
        """Make ``model`` the active one: no background left, a new error record."""
        self._model = model
        self._background = None
        self._errors = _ErrorRecord(self.RECENT_ROWS)
        self._version += 1

    def _fresh(self) -> Any:
        """A new, untrained model: River's clone() of the estimator (its constructor parameters)."""
        return self.estimator.clone()

    # -- state ------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # a batch's rows and predictions are no part of the strategy
        for name in ("_row_cache", "_pred_cache", "_columns_ok", "_plan"):
            state.pop(name, None)
        state["_pass"] = None
        state["_scored"] = None
        return state

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": to_plain(self._model),
            "n_learned": self.n_learned,
            "background": None if self._background is None else self._background.to_plain(),
            "errors": self._errors.to_plain(),
            "pending": None if self._pending is None else self._pending.to_dict(),
            **{name: getattr(self, name) for name in COUNTERS},
            # only with per_event, so that the default's snapshots keep their keys
            **({"per_event_off": self.per_event_off, "newest": dict(self._newest)} if self.per_event else {}),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._model = from_plain(state["model"])
        self.n_learned = state["n_learned"]
        # snapshots written before the drift policy existed hold only the model and n_learned
        self._background = _Background.from_plain(state.get("background"), self.DUEL_ROWS)
        self._errors = _ErrorRecord.from_plain(state.get("errors"), self.RECENT_ROWS)
        pending = state.get("pending")
        self._pending = None if pending is None else DriftEvent(**pending)
        for name in COUNTERS:
            setattr(self, name, int(state.get(name, 0)))
        self.per_event_off = state.get("per_event_off")
        self._pass = None
        self._newest = {str(k): int(v) for k, v in (state.get("newest") or {}).items()}
        self._version += 1

    def params(self) -> dict[str, Any]:
        # per_event only when set: the default leaves every existing graph's parameters, and
        # so its fingerprint (checkpoints are valid for the same graph only), as they were
        out = super().params()
        if not self.per_event:
            out.pop("per_event", None)
        return out

    def describe(self) -> str:
        policy = "" if (self.drift_policy, self.react_to) == ("background", "own") else \
            f", drift_policy={self.drift_policy!r}, react_to={self.react_to!r}"
        mode = ", per_event=True" if self.per_event else ""
        return f"RiverStrategy({self.estimator}{policy}{mode})"


def _predict_rows(model: Any, rows: list[dict[str, Any]], batch: Batch, who: str) -> list[Any]:
    """``predict_one`` of every row; a failure names the row and says that nothing was learned
    (``learn`` predicts before its first ``learn_one``)."""
    predict_one = model.predict_one
    out = []
    for i, x in enumerate(rows):
        try:
            out.append(predict_one(x))
        except Exception as exc:
            raise RuntimeError(
                f"RiverStrategy: {who} could not predict the row at offset {int(batch.offsets[i])}, so nothing "
                f"of the batch was learned: {type(exc).__name__}: {exc}") from exc
    return out
