"""Time to convergence after an event: how long a forecaster's error takes to come back.

The rule (docs/methods/liquid.md): per learn step, the absolute percentage error
of every step is smoothed by a rolling mean over ``rolling`` steps; its reference
level is the ``quantile`` of that rolling error over the scored steps before the
event (from ``eval_start``); the forecaster has converged at the first step k at
or after the event from which the rolling error stays at or below ``tolerance`` x
the reference for the next ``hold`` steps (or to the end of the stream). The
result is k minus the event's step, or None (never). A percentile rather than the
mean as reference, because the rolling error of even a perfect-pattern model
fluctuates with the noise, and "stays below 1.2 x mean" would then almost never
hold, before or after an event.

>>> import numpy as np
>>> ape = np.r_[np.full(100, 5.0), np.full(10, 50.0), np.full(100, 5.0)]
>>> time_to_convergence(ape, 100, 0, rolling=4, quantile=0.95, tolerance=1.2, hold=20)
13
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.pipelines.metrics.base import Observer
from tideflow.pipelines.metrics.segments import percentage_errors


def time_to_convergence(ape: np.ndarray, event: int, eval_start: int, *, rolling: int, quantile: float,
                        tolerance: float, hold: int) -> int | None:
    """Steps after ``event`` until the error is back to its level before it (module docstring).

    ``ape`` holds one absolute percentage error per step (index = step).
    """
    w = rolling
    kernel = np.ones(w) / w
    smooth = np.convolve(ape, kernel, mode="full")[: len(ape)]  # smooth[t] = mean(ape[t-w+1..t])
    smooth[: w - 1] = np.nan
    before = smooth[eval_start + w - 1: event]
    if not len(before) or np.all(np.isnan(before)):
        return None
    limit = tolerance * float(np.nanquantile(before, quantile))
    ok = smooth <= limit
    n = len(ape)
    for k in range(event, n):
        end = min(k + hold, n)
        if ok[k:end].all():
            return k - event
    return None


class TimeToConvergence(Observer):
    """Per learn step: steps after the event at offset ``event`` until its error came back.

    Needs one scored row per step with offsets 0, 1, 2, ... (one series).
    """

    needs_predictions = True

    def __init__(self, event: int, *, eval_start: int, rolling: int, quantile: float, tolerance: float,
                 hold: int) -> None:
        super().__init__()
        self.event = event
        self.rule = {"eval_start": eval_start, "rolling": rolling, "quantile": quantile, "tolerance": tolerance,
                     "hold": hold}
        self.steps: dict[str, int | None] = {}

    def on_start(self, graph: Any) -> None:
        self.steps = {}

    def on_finish(self, result: Any) -> None:
        for name, arrays in result.predictions.items():
            offsets = arrays["offset"]
            if not np.array_equal(offsets, np.arange(len(offsets))):
                raise ValueError(f"time to convergence expects one scored row per step (offsets 0, 1, ...); "
                                 f"learn step {name!r} has {len(offsets)} rows with other offsets")
            rule = dict(self.rule)
            eval_start = rule.pop("eval_start")
            self.steps[name] = time_to_convergence(percentage_errors(arrays), self.event, eval_start, **rule)

    def result(self) -> dict[str, int | None]:
        return self.steps
