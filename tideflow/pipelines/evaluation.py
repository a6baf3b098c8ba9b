"""Scoring: exact partial sums of a strategy's errors, and the metrics made from them.

The learn step (`tideflow.pipelines.learn_step`) scores every batch before it
learns from it (prequential, test-then-train) and scores held-out rows when asked
to evaluate. Scores are kept as exact partial sums per (routing key, task) part
(count, sum of absolute errors, sum of squared errors, correct predictions) and
combined in sorted part order (`part_order`), so the local runner and the Ray
runner, which spreads keys over several actors, produce bit-identical metrics.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np


def stable_hash(value: Any) -> int:
    """A hash that is the same in every process (Python's ``hash`` of str is salted)."""
    return zlib.crc32(repr(value).encode())


def key_order(k: Any) -> tuple[str, Any]:
    return (type(k).__name__, k if k is not None else 0)


def part_order(part: tuple[Any, Any]) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """Sort order of a (key, task) part: by key, then task (a stream without a task
    column has task None everywhere, so its parts sum in plain key order)."""
    return (key_order(part[0]), key_order(part[1]))


@dataclass
class Scores:
    """Exact partial sums of one strategy on some rows."""

    n: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    correct: int = 0
    ape_sum: float = 0.0  # sum of |error| / |truth| over rows whose truth is not 0
    ape_n: int = 0
    # regression rows predicted without a truth to score them against (a null or NaN target):
    # left out of n and of every sum, so one missing value cannot turn a run's MAE into NaN
    unscored: int = 0

    def add(self, other: Scores) -> None:
        self.n += other.n
        self.abs_sum += other.abs_sum
        self.sq_sum += other.sq_sum
        self.correct += other.correct
        self.ape_sum += other.ape_sum
        self.ape_n += other.ape_n
        self.unscored += other.unscored

    def metrics(self, problem: str) -> dict[str, float]:
        if self.n == 0:
            return {"rows_scored": 0, **({"rows_unscored": self.unscored} if self.unscored else {})}
        if problem == "classification":
            return {"rows_scored": self.n, "accuracy": self.correct / self.n}
        out = {"rows_scored": self.n, "mae": self.abs_sum / self.n, "rmse": math.sqrt(self.sq_sum / self.n)}
        if self.unscored:
            out["rows_unscored"] = self.unscored
        if self.ape_n:
            out["mape"] = 100.0 * self.ape_sum / self.ape_n  # percent, rows with a zero truth left out
        return out


def combine(parts: dict[tuple[Any, Any], Scores]) -> Scores:
    """The sum of partial scores, in `part_order` (the same on every runner)."""
    total = Scores()
    for k in (parts if len(parts) == 1 else sorted(parts, key=part_order)):
        total.add(parts[k])
    return total


def by_task(parts: dict[tuple[Any, Any], Scores]) -> dict[Any, Scores]:
    """Partial scores summed per task, each in `part_order`."""
    out: dict[Any, Scores] = {}
    for k in sorted(parts, key=part_order):
        out.setdefault(k[1], Scores()).add(parts[k])
    return out


def score(problem: str, predictions: Any, truth: np.ndarray) -> tuple[Scores, np.ndarray]:
    """Partial sums for one batch and the per-row error (absolute, or 0/1 misclassified)."""
    if problem == "classification":
        pred = np.array(predictions.to_pylist(), dtype=object)
        true = np.array(truth.tolist(), dtype=object)
        wrong = np.array([p is None or p != t for p, t in zip(pred, true)], dtype=float)
        return Scores(n=len(true), correct=int(len(true) - wrong.sum())), wrong
    if len(truth) == 1:
        return _score_one(predictions, truth)
    pred = predictions.to_numpy(zero_copy_only=False).astype(np.float64)
    if truth.dtype == object:  # a column Arrow typed null (every value missing) comes as None
        truth = np.array([np.nan if v is None else v for v in truth], dtype=np.float64)
    true = truth.astype(np.float64)
    err = pred - true
    abs_err = np.abs(err)  # per row, NaN where there is no truth: detectors skip NaN and count it
    known = np.isfinite(true)
    unscored = int(len(true) - known.sum())
    if unscored:
        err, true, scored_abs = err[known], true[known], abs_err[known]
    else:
        scored_abs = abs_err
    nonzero = true != 0
    ape = float((scored_abs[nonzero] / np.abs(true[nonzero])).sum())
    return Scores(n=len(err), abs_sum=float(scored_abs.sum()), sq_sum=float((err * err).sum()),
                  ape_sum=ape, ape_n=int(nonzero.sum()), unscored=unscored), abs_err


def _score_one(predictions: Any, truth: np.ndarray) -> tuple[Scores, np.ndarray]:
    """`score` of one row of a regression, in Python floats: the same IEEE operations as the
    array path (a sum of one value is that value), without a dozen one-element arrays."""
    p = predictions.to_pylist()[0]
    pred = float("nan") if p is None else float(p)  # a null prediction is NaN on the array path too
    t = truth[0]
    true = float("nan") if t is None else float(t)  # a null truth (an all-null column is object)
    if not math.isfinite(true):  # no truth to score against (see `Scores.unscored`)
        return Scores(unscored=1), np.array([float("nan")])
    err = pred - true
    abs_err = abs(err)
    nonzero = true != 0
    return Scores(n=1, abs_sum=abs_err, sq_sum=err * err, ape_sum=abs_err / abs(true) if nonzero else 0.0,
                  ape_n=int(nonzero)), np.array([abs_err])


def add_extra(total: dict[str, float], more: dict[str, float]) -> None:
    """Sum a strategy's extra counters (``StepReport.extra``) into ``total``."""
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + float(v)


