"""What every forecaster keeps about one series, and the persistence baseline they share.

Two families forecast series here: the link-load forecasters (one step ahead, after
arXiv 2404.05304: `tideflow.strategies.window_forecaster`) and the nowcasters (H
hours ahead, after arXiv 2309.15207: `tideflow.strategies.nowcast_forecaster`).
What they have in common lives here:

* `SeriesState`: the samples seen (``n``), the fits so far (``fits``, which seeds
  the next fit through `tideflow.strategies.torch_core.fit_seed`, so a fit's
  weights depend on the series alone, not on what else the instance holds) and
  the fitted model.
* `forward_fill` and `last_known`: a missing observation stands for "the series
  still has its previous value".
* `persistence`: the reference forecast, the last known value for every step
  ahead. `tideflow.strategies.forecasting.Persistence` and
  `tideflow.strategies.nowcast.NowcastPersistence` (and every model of both
  families before its first fit) forecast with it.

What stays apart, and why:

* **The history.** A link-load series is its univariate values (the inputs are
  the last W values); a nowcast series is timestamped feature rows (own columns,
  lags, hour of day), targets at H future timestamps and the forecasts still
  waiting to be scored. Different data, hence the family's own subclass.
* **Several series per instance or one.** A link-load forecaster holds a series
  per key value (``key="link"``) and behaves like one instance per series; a
  nowcaster holds one series and leaves keys to the engine's ``Keyed`` route.
* **Snapshots.** A link-load snapshot holds each fitted model's weights (its
  models are refitted at sample counts that a restored instance cannot replay);
  a nowcast snapshot holds the last fit's rows, targets, weights and seed and
  fits again on restore (every nowcast model is deterministic for a seed on the
  CPU). Each family keeps the format it always had, so older snapshots restore.
* **What counts as missing.** A link-load value is missing when it is NaN (an
  infinite load is data); a nowcast value when it is not finite (NaN or inf, as
  the released setup reads weather records). ``finite=True`` selects the second.
* **The forecast of a series never seen.** Link load: the mean of every target
  the instance learned (0.0 before any); nowcast: 0.0. Each family passes its own.
* **Drift.** A link-load series records the sample count of a drift event and
  re-fits a fixed number of samples later (``drift_at``); a nowcast series re-fits
  at its next ``learn`` (a flag).

>>> forward_fill(np.array([np.nan, 1.0, np.nan, 3.0]), before=0.5).tolist()
[0.5, 1.0, 1.0, 3.0]
>>> persistence(np.array([1.0, 2.0]), 3).tolist()
[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.strategies.torch_core import fit_seed

__all__ = ["SeriesState", "forward_fill", "last_known", "persistence"]


class SeriesState:
    """Samples seen, fits so far and the fitted model of one series (families subclass it)."""

    __slots__ = ("n", "fits", "model")

    def __init__(self) -> None:
        self.n = 0  # samples (rows) of the series seen
        self.fits = 0  # fits of this series' model so far (seeds the next one)
        self.model: Any = None  # None until the first fit

    def fit_seed(self, seed: int) -> int:
        """Seed of this series' next fit under the instance seed ``seed``."""
        return fit_seed(seed, self.fits)


def _missing(values: np.ndarray, finite: bool) -> np.ndarray:
    return ~np.isfinite(values) if finite else np.isnan(values)


def forward_fill(values: np.ndarray, before: float | None = None, *,
                 finite: bool = False) -> np.ndarray:
    """Every missing value takes the previous present one (``before`` for leading ones).

    Missing: NaN, or with ``finite=True`` any non-finite value. Leading missing
    values with ``before=None`` stay NaN. Without missing values, ``values`` itself
    (as float64) is returned.
    """
    values = np.asarray(values, dtype=np.float64)
    missing = _missing(values, finite)
    if not missing.any():
        return values
    at = np.maximum.accumulate(np.where(missing, -1, np.arange(len(values))))
    lead = np.nan if before is None else before
    return np.where(at >= 0, values[np.maximum(at, 0)], lead)


def last_known(values: np.ndarray, *, finite: bool = False) -> float | None:
    """The last present value of ``values`` (None if none); missing as in `forward_fill`."""
    values = np.asarray(values, dtype=np.float64)
    present = np.flatnonzero(~_missing(values, finite))
    return float(values[present[-1]]) if len(present) else None


def persistence(last: np.ndarray, steps: int) -> np.ndarray:
    """The persistence forecast: row i holds ``last[i]`` for each of ``steps`` steps ahead.

    ``last[i]`` is the last known value at issue time i; shape ``(len(last), steps)``.
    """
    return np.repeat(np.asarray(last, dtype=np.float64)[:, None], steps, axis=1)
