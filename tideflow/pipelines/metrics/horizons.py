"""Error per forecast horizon, from what multi-horizon forecasters report while learning.

A multi-horizon forecaster scores its own forecasts as they mature (the row h steps
later arrives) and reports, per learn call, ``abs_err_h<h>`` (sum of absolute
errors) and ``n_h<h>`` (count) in ``StepReport.extra``; the run sums them per learn
step (``summary[step]["extra"]``). This observer turns the sums into the mean
absolute error per horizon and its mean over the horizons that have one.

>>> class R: summary = {"gbm": {"extra": {"abs_err_h1": 3.0, "n_h1": 2, "abs_err_h2": 0.0, "n_h2": 0}}}
>>> h = HorizonErrors(2)
>>> h.on_finish(R())
>>> h.result()["gbm"]
{'mae_h': [1.5, None], 'mae': 1.5, 'scored': 2}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.pipelines.metrics.base import Observer


class HorizonErrors(Observer):
    """Per learn step: ``mae_h`` (one per horizon 1..H, None when nothing matured), ``mae`` (their
    mean), ``scored`` (matured forecasts). Steps that report no horizon counters are left out."""

    def __init__(self, horizons: int) -> None:
        super().__init__()
        self.horizons = horizons
        self.errors: dict[str, dict[str, Any]] = {}

    def on_start(self, graph: Any) -> None:
        self.errors = {}

    def on_finish(self, result: Any) -> None:
        H = self.horizons
        for name, s in result.summary.items():
            extra = s.get("extra", {})
            if not any(f"n_h{h}" in extra for h in range(1, H + 1)):
                continue
            mae = [extra.get(f"abs_err_h{h}", 0.0) / extra[f"n_h{h}"] if extra.get(f"n_h{h}") else None
                   for h in range(1, H + 1)]
            known = [m for m in mae if m is not None]
            self.errors[name] = {"mae_h": mae, "mae": float(np.mean(known)) if known else None,
                                 "scored": int(sum(extra.get(f"n_h{h}", 0) for h in range(1, H + 1)))}

    def result(self) -> dict[str, dict[str, Any]]:
        return self.errors
