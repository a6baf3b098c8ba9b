"""Time to convergence after an event: how long a forecaster's error takes to come back.

The rule (docs/methods/liquid.md): per learn step, the absolute percentage error
of every step is smoothed by a rolling mean over ``rolling`` steps; its reference
level is the ``quantile`` of that rolling error over the scored steps before the
event (from ``eval_start``); the forecaster has converged at the first step k at
or after the event from which the rolling error stays at or below ``tolerance`` x
the reference for the next ``hold`` steps, all of them within the stream. The
result is k minus the event's step. A percentile rather than the mean as
reference, because the rolling error of even a perfect-pattern model fluctuates
with the noise, and "stays below 1.2 x mean" would then almost never hold, before
or after an event.

The whole hold window must be seen: a step k with fewer than ``hold`` steps left
after it is not a convergence, however well the error behaves there, because the
rule could not check what it asks for. So near the end of a stream "not converged"
has two meanings, which `convergence` tells apart (`REASONS`): the error was out of
band at the last step (``"never"``), or it was in band for the last steps but for
fewer than ``hold`` of them (``"stream ended"``: maybe it converged, the stream is
too short to say).

>>> import numpy as np
>>> ape = np.r_[np.full(100, 5.0), np.full(10, 50.0), np.full(100, 5.0)]
>>> time_to_convergence(ape, 100, 0, rolling=4, quantile=0.95, tolerance=1.2, hold=20)
13
>>> convergence(ape[:125], 100, 0, rolling=4, quantile=0.95, tolerance=1.2, hold=20)
(None, 'stream ended')
>>> convergence(ape[:105], 100, 0, rolling=4, quantile=0.95, tolerance=1.2, hold=20)
(None, 'never')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.pipelines.metrics.base import Observer
from tideflow.pipelines.metrics.segments import percentage_errors

#: why `convergence` found no step: the error was out of band at the stream's last step;
#: it was back in band for fewer than ``hold`` steps when the stream ended; there was no
#: scored error before the event to compare against; the series ends before the event
REASONS = ("never", "stream ended", "no reference", "event not reached")


def convergence(ape: np.ndarray, event: int, eval_start: int, *, rolling: int, quantile: float,
                tolerance: float, hold: int) -> tuple[int | None, str | None]:
    """Steps after ``event`` until the error is back to its level before it, and why not.

    ``ape`` holds one absolute percentage error per step (index = step). Returns
    ``(k - event, None)`` for the first step k that satisfies the rule (module
    docstring) with its whole hold window inside ``ape``, else ``(None, reason)``
    with a reason of `REASONS`.
    """
    n = len(ape)
    if event >= n:
        return None, "event not reached"
    w = rolling
    kernel = np.ones(w) / w
    smooth = np.convolve(ape, kernel, mode="full")[:n]  # smooth[t] = mean(ape[t-w+1..t])
    smooth[: w - 1] = np.nan
    before = smooth[eval_start + w - 1: event]
    if not len(before) or np.all(np.isnan(before)):
        return None, "no reference"
    limit = tolerance * float(np.nanquantile(before, quantile))
    ok = smooth <= limit  # NaN (no full rolling window yet) is never in band
    for k in range(event, n - hold + 1):
        if ok[k:k + hold].all():
            return k - event, None
    # no k with a whole window in band: in band at the end means "cut short", not "never"
    return None, "stream ended" if ok[n - 1] else "never"


def time_to_convergence(ape: np.ndarray, event: int, eval_start: int, *, rolling: int, quantile: float,
                        tolerance: float, hold: int) -> int | None:
    """Steps after ``event`` until the error is back to its level before it (module docstring);
    None: not converged within the series (`convergence` says why).

    ``ape`` holds one absolute percentage error per step (index = step).
    """
    return convergence(ape, event, eval_start, rolling=rolling, quantile=quantile,
                       tolerance=tolerance, hold=hold)[0]


class TimeToConvergence(Observer):
    """Per learn step: steps after the event at offset ``event`` until its error came back.

    Needs one scored row per step with consecutive offsets (one series; offset = step). Its result is,
    per learn step, ``{"steps": int | None, "reason": None | one of REASONS}``.
    """

    needs_predictions = True

    def __init__(self, event: int, *, eval_start: int, rolling: int, quantile: float, tolerance: float,
                 hold: int) -> None:
        super().__init__()
        self.event = event
        self.rule = {"eval_start": eval_start, "rolling": rolling, "quantile": quantile, "tolerance": tolerance,
                     "hold": hold}
        self.steps: dict[str, dict[str, Any]] = {}

    def on_start(self, graph: Any) -> None:
        self.steps = {}

    def on_finish(self, result: Any) -> None:
        for name, arrays in result.predictions.items():
            offsets = np.asarray(arrays["offset"])
            first = int(offsets[0]) if len(offsets) else 0
            if not np.array_equal(offsets, np.arange(first, first + len(offsets))):
                raise ValueError(f"time to convergence expects one scored row per step (offsets 0, 1, ...); "
                                 f"learn step {name!r} has {len(offsets)} rows with other offsets")
            # a run that started later (a replay after a seek) has no error before its first
            # offset: NaN there, which the rule never counts as in band nor as reference
            ape = np.r_[np.full(first, np.nan), percentage_errors(arrays)]
            rule = dict(self.rule)
            eval_start = rule.pop("eval_start")
            steps, reason = convergence(ape, self.event, eval_start, **rule)
            self.steps[name] = {"steps": steps, "reason": reason}

    def result(self) -> dict[str, dict[str, Any]]:
        return self.steps
