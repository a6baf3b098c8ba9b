"""Any River estimator as a tideflow strategy.

Rows are handed to the estimator one at a time with ``learn_one`` (River's
``learn_many`` is a different, mini-batch update for the few estimators that
have it, so using it would change what "the same River model" means). The
estimator's state is snapshotted as plain data through
`tideflow.stream.state.to_plain`, never pickled.

>>> from river import linear_model, preprocessing
>>> from tideflow.stream.batch import Batch
>>> s = RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression(), target="y")
>>> s.features = ["x"]
>>> b = Batch.from_pydict({"x": [0.0, 1.0, 2.0], "y": [0.0, 2.0, 4.0]})
>>> s.learn(b).samples
3
>>> len(s.predict(b))
3
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.state import from_plain, to_plain
from tideflow.strategies.base import ClassScores, StepReport, Strategy


def _is_classifier(estimator: Any) -> bool:
    from river import base

    return isinstance(estimator, base.Classifier)


class RiverStrategy(Strategy):
    """Adapter over a River estimator (regressor or classifier).

    Args:
        estimator: a River estimator or pipeline; it is copied as it is (a model the user
            trained before keeps what it learned), so the object passed in stays untouched.
        target: label column (default: the schema's target).
        features: feature columns (default: the schema's features).
    """

    def __init__(self, estimator: Any, *, target: str | None = None, features: list[str] | None = None) -> None:
        self.estimator = estimator
        self.target = target
        self.features = list(features) if features is not None else None
        # a copy, not River's clone(): clone() rebuilds from the parameters and would drop
        # what a warm-started estimator learned (for a fresh estimator the two are the same)
        self._model = copy.deepcopy(estimator)
        self.problem = "classification" if _is_classifier(estimator) else "regression"  # type: ignore[misc]
        self.n_learned = 0

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        from river import linear_model, preprocessing

        return {"estimator": preprocessing.StandardScaler() | linear_model.LinearRegression()}

    def _rows(self, batch: Batch) -> list[dict[str, Any]]:
        # prequential evaluation predicts and then learns on the same batch: the rows
        # are converted to dicts once (River's progressive_val_score also hands the
        # same dict to predict_one and learn_one). The cache holds the table itself,
        # so an identity match cannot be a recycled id.
        assert self.features is not None
        cached = getattr(self, "_row_cache", None)
        if cached is not None and cached[0] is batch.data and cached[1] == self.features:
            return cached[2]
        rows = batch.data.select(self.features).to_pylist()
        self._row_cache = (batch.data, list(self.features), rows)
        return rows

    def learn(self, batch: Batch) -> StepReport:
        start = time.perf_counter()
        if not len(batch):
            return StepReport()
        self._check_columns(batch, need_target=True)
        assert self.target is not None
        ys = batch.column(self.target).to_pylist()
        learn_one = self._model.learn_one
        for x, y in zip(self._rows(batch), ys):
            learn_one(x, y)
        self.n_learned += len(batch)
        return StepReport(samples=len(batch), fits=1, train_seconds=time.perf_counter() - start)

    def predict(self, batch: Batch) -> pa.Array:
        if not len(batch):
            return pa.array([], type=pa.int64() if self.problem == "classification" else pa.float64())
        self._check_columns(batch, need_target=False)
        predict_one = self._model.predict_one
        preds = [predict_one(x) for x in self._rows(batch)]
        if self.problem == "classification":
            return pa.array(preds)
        return pa.array([float(p) if p is not None else 0.0 for p in preds], type=pa.float64())

    def predict_scores(self, batch: Batch) -> ClassScores:
        """River's ``predict_proba_one`` per row; the classes are every label any row has a
        probability for (sorted), a missing one scoring 0."""
        if self.problem != "classification":
            raise NotImplementedError("per-class scores are for classifiers; this estimator is a regressor")
        self._check_columns(batch, need_target=False)
        probas = [self._model.predict_proba_one(x) for x in self._rows(batch)] if len(batch) else []
        classes = sorted({c for p in probas for c in p}, key=lambda c: (type(c).__name__, c))
        scores = np.array([[p.get(c, 0.0) for c in classes] for p in probas], dtype=np.float64)
        return ClassScores(scores.reshape(len(probas), len(classes)), classes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_row_cache", None)  # a batch's rows are no part of the strategy
        return state

    def snapshot(self) -> dict[str, Any]:
        return {"model": to_plain(self._model), "n_learned": self.n_learned}

    def restore(self, state: dict[str, Any]) -> None:
        self._model = from_plain(state["model"])
        self.n_learned = state["n_learned"]

    def describe(self) -> str:
        return f"RiverStrategy({self.estimator})"
