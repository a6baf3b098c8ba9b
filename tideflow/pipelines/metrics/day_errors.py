"""Matured forecast errors per day block, and the paired day-block bootstrap of an MAE ratio.

"Configuration A's error is 5 % above B's" means little without knowing how much
that figure moves with the days that happened to be scored. Multi-horizon
forecasters (`tideflow.strategies.nowcast`) report, per batch, the absolute errors
and counts of the forecasts that matured in it (``abs_err_h<h>``, ``n_h<h>`` in
``StepReport.extra``). `DayErrors` sums them per learn step and day; `ratio_interval`
resamples whole days with replacement, the same days for both configurations, and
gives the percentile interval of MAE(A) / MAE(B). Days rather than single
forecasts are resampled because errors within a day are correlated (a front spoils
several hours and all horizons at once); pairing cancels what both configurations
share, the weather of the days drawn. `pool_days` adds the day sums of several
series (stations) day by day, so that a pooled interval resamples the same days of
every station together.

>>> a = {"abs_err": [[1.0, 2.0], [3.0, 2.0]], "n": [[1, 1], [1, 1]]}
>>> ratio_interval(a, a)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.pipelines.metrics.base import Observer

__all__ = ["DayErrors", "pool_days", "ratio_interval"]


def _seconds(value: Any) -> float | None:
    """A time role's value in seconds since the epoch (a naive datetime is read as UTC, an
    integer or float as seconds, as the nowcasters read it); None when there is none."""
    import datetime as dt

    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, dt.date):
        return float(dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp())
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


class DayErrors(Observer):
    """Per learn step and day: the matured forecasts' absolute errors and counts per horizon.

    The nowcasters report the errors of the forecasts that matured in each batch
    (``abs_err_h<h>``, ``n_h<h>``); a batch's errors go to the day block of its first row: the
    UTC day of its time, or without a time role, every 24 rows of a series (a day of hourly
    rows). The day sums are what `ratio_interval` resamples. Summed over all days they are the
    run's totals, so the bootstrap's point estimate is the table's MAE ratio.
    """

    streams_predictions = True  # the batch's times come with the predictions the learn steps send
    name = "day_errors"

    def __init__(self, horizons: int) -> None:
        super().__init__()
        self.horizons = horizons
        self._entries: list[tuple[int, str, int, np.ndarray, np.ndarray]] = []  # seq, step, day, abs, n
        self._rows: dict[Any, int] = {}  # rows per key, for streams without a time role
        self._day = 0
        # the day of every batch seen: a batch that comes again after a recovery keeps its day
        # (the row counters above have already counted it)
        self._days: dict[int, int] = {}

    def on_start(self, graph: Any) -> None:
        self._entries, self._rows, self._day, self._days = [], {}, 0, {}

    def _batch_day(self, record: Any) -> int:
        # every learn step sends the same rows; the first one that sent any tells the batch's day
        parts = next((res.predictions for res in record.results.values() if res.predictions), None)
        if not parts:
            return self._day  # a batch without rows: its errors (none) stay with the day before
        secs = [t for *_, times in parts if times is not None for t in map(_seconds, times) if t is not None]
        if secs:
            return int(min(secs) // 86400)
        counts: dict[Any, int] = {}
        for offsets, _preds, _truth, keys, _times in parts:
            for k in (keys if keys is not None else [None] * len(offsets)):
                counts[k] = counts.get(k, 0) + 1
        first = next(iter(counts))
        day = self._rows.get(first, 0) // 24
        for k, c in counts.items():
            self._rows[k] = self._rows.get(k, 0) + c
        return day

    def on_batch(self, record: Any) -> None:
        day = self._days.get(record.seq)
        if day is None:
            day = self._days[record.seq] = self._batch_day(record)
        self._day = day
        H = self.horizons
        for step, res in record.results.items():
            extra = res.extra
            if not any(f"n_h{h}" in extra for h in range(1, H + 1)):
                continue
            n = np.array([extra.get(f"n_h{h}", 0.0) for h in range(1, H + 1)], dtype=np.float64)
            if n.any():
                err = np.array([extra.get(f"abs_err_h{h}", 0.0) for h in range(1, H + 1)], dtype=np.float64)
                self._entries.append((record.seq, step, day, err, n))

    def on_rollback(self, seq: int) -> None:
        self._entries = [e for e in self._entries if e[0] <= seq]

    def result(self) -> dict[str, Any]:
        """``{"days": [day, ...], "steps": {step: {"abs_err": [[per horizon] per day], "n": ...}}}``."""
        days = sorted({e[2] for e in self._entries})
        at = {d: i for i, d in enumerate(days)}
        steps: dict[str, dict[str, np.ndarray]] = {}
        for _seq, step, day, err, n in self._entries:
            acc = steps.setdefault(step, {"abs_err": np.zeros((len(days), self.horizons)),
                                          "n": np.zeros((len(days), self.horizons))})
            acc["abs_err"][at[day]] += err
            acc["n"][at[day]] += n
        return {"days": days, "steps": {k: {"abs_err": v["abs_err"].tolist(), "n": v["n"].tolist()}
                                        for k, v in steps.items()}}


def _mae(weights: np.ndarray, abs_err: np.ndarray, n: np.ndarray) -> np.ndarray:
    """MAE for each row of day weights: per horizon the weighted error sum over the weighted count,
    then the mean over the horizons that have forecasts (NaN where none has)."""
    num, den = weights @ abs_err, weights @ n
    valid = den > 0
    per_h = np.where(valid, num / np.where(valid, den, 1.0), 0.0)
    count = valid.sum(axis=1)
    return np.where(count > 0, per_h.sum(axis=1) / np.maximum(count, 1), np.nan)


def ratio_interval(a: dict[str, Any], b: dict[str, Any], *, draws: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float] | None:
    """MAE(a) / MAE(b) and its paired day-block bootstrap interval: ``(ratio, low, high)``.

    ``a`` and ``b``: per-day sums of the two configurations on the same days
    (``{"abs_err": days x horizons, "n": days x horizons}``, `DayErrors`). Each draw resamples
    the days with replacement and applies the same days to both, so what the two share (the
    weather of those days) cancels in the ratio. Percentile interval at ``level`` over ``draws``
    draws of a generator seeded with ``seed`` (the same figures on every run); None when ``b``
    has no error.

    >>> a = {"abs_err": [[2.0], [4.0], [3.0]], "n": [[1.0], [1.0], [1.0]]}
    >>> b = {"abs_err": [[1.0], [2.0], [1.5]], "n": [[1.0], [1.0], [1.0]]}
    >>> ratio_interval(a, b)  # a is twice b on every day: no uncertainty in the ratio
    (2.0, 2.0, 2.0)
    """
    ea, na = np.asarray(a["abs_err"], dtype=np.float64), np.asarray(a["n"], dtype=np.float64)
    eb, nb = np.asarray(b["abs_err"], dtype=np.float64), np.asarray(b["n"], dtype=np.float64)
    if ea.shape != eb.shape or not len(ea):
        raise ValueError(f"ratio_interval needs both configurations on the same days, got {ea.shape} and {eb.shape}")
    ones = np.ones((1, len(ea)))
    mb = _mae(ones, eb, nb)[0]
    if not np.isfinite(mb) or mb == 0:
        return None
    point = float(_mae(ones, ea, na)[0] / mb)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ea), size=(draws, len(ea)))
    weights = np.zeros((draws, len(ea)))
    np.add.at(weights, (np.arange(draws)[:, None], pick), 1.0)
    den = _mae(weights, eb, nb)
    ok = np.isfinite(den) & (den > 0)
    ratios = _mae(weights[ok], ea, na) / den[ok]
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return point, point, point
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    # the quantiles of a degenerate draw set can differ from the point in the last bits
    return point, float(min(lo, point)), float(max(hi, point))


def pool_days(day_errors: list[dict[str, Any]], step: str) -> dict[str, np.ndarray] | None:
    """One step's day sums over several runs (stations), added up day by day: the pooled series
    whose days a bootstrap resamples together (the same weather hits both stations)."""
    days = sorted({d for de in day_errors for d in de["days"]})
    at = {d: i for i, d in enumerate(days)}
    out: dict[str, np.ndarray] | None = None
    for de in day_errors:
        st = de["steps"].get(step)
        if st is None:
            return None
        err, n = np.asarray(st["abs_err"]), np.asarray(st["n"])
        if out is None:
            out = {"abs_err": np.zeros((len(days), err.shape[1])), "n": np.zeros((len(days), err.shape[1]))}
        idx = [at[d] for d in de["days"]]
        out["abs_err"][idx] += err
        out["n"][idx] += n
    return out
