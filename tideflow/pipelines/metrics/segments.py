"""Errors per segment of a stream: RMSE and MAPE of each learn step over offset ranges.

A forecast comparison around an event (a link failure at offset ``f``) scores
``before`` = [start, f), the first day after, and the rest separately. The
observer collects every scored prediction (the run keeps them for it) and at the
end computes, per learn step and segment, the root mean squared error and the mean
absolute percentage error (rows whose truth is 0 left out).

>>> seg = SegmentErrors({"a": (0, 2), "b": (2, None)})
>>> import numpy as np
>>> arrays = {"offset": np.arange(4), "prediction": np.array([1., 2., 3., 5.]), "truth": np.array([1., 2., 2., 4.])}
>>> seg.score(arrays)["rmse_b"]
1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.pipelines.metrics.base import Observer


def rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(e * e))) if len(e) else float("nan")


def mape(e: np.ndarray, y: np.ndarray) -> float:
    ok = y != 0
    return float(100 * np.mean(np.abs(e[ok]) / np.abs(y[ok]))) if ok.any() else float("nan")


def percentage_errors(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Absolute percentage error per row (0 where the truth is 0)."""
    y = arrays["truth"]
    e = arrays["prediction"] - y
    return np.where(y != 0, 100 * np.abs(e) / np.where(y != 0, np.abs(y), 1), 0.0)


class SegmentErrors(Observer):
    """RMSE and MAPE per learn step and segment; ``segments``: name -> (first offset, end offset or None).

    Reads the run's sorted predictions (``RunResult.predictions``) at the end; the run keeps
    every prediction because this observer asks for them.
    """

    needs_predictions = True

    def __init__(self, segments: dict[str, tuple[int, int | None]]) -> None:
        super().__init__()
        self.segments = dict(segments)
        self.scores: dict[str, dict[str, float]] = {}

    def score(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        offsets = arrays["offset"]
        y = arrays["truth"]
        e = arrays["prediction"] - y
        row: dict[str, float] = {}
        for name, (lo, hi) in self.segments.items():
            sel = (offsets >= lo) & (offsets < hi if hi is not None else True)
            row[f"rmse_{name}"] = rmse(e[sel])
            row[f"mape_{name}"] = mape(e[sel], y[sel])
        return row

    def on_start(self, graph: Any) -> None:
        self.scores = {}

    def on_finish(self, result: Any) -> None:
        self.scores = {name: self.score(arrays) for name, arrays in result.predictions.items()}

    def result(self) -> dict[str, dict[str, float]]:
        return self.scores
