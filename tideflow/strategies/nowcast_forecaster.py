"""`NowcastForecaster`: the setting every nowcaster shares (arXiv 2309.15207).

The setting of "Balancing Computational Efficiency and Forecast Error in Machine
Learning-based Time-Series Forecasting: Insights from Live Experiments on
Meteorological Nowcasting" (arXiv 2309.15207): hourly observations of a station
(and its neighbours) stream in, a model forecasts the next 1..H hours of one
variable, and it is re-fitted on a window of recent rows, either on a fixed
schedule, or when its error grows (performance-based retraining), on a window
whose length `tideflow.stream.reduce.VarianceHorizon` chooses. What the paper
leaves open is taken from the authors' released setup where it exists
(``docs/methods/variance-horizon.md``) and marked *ours* otherwise.

One series per instance
    An instance forecasts one series; a pipeline with several stations routes
    them with ``Keyed("station")`` (one instance per station).
Time
    With a time column (``time``, default the schema's time role) rows are placed
    on a grid of ``step_seconds`` (default one hour): horizon h means the row
    whose timestamp is h steps later, lags are looked up by timestamp (a missing
    hour gives a missing lag), and hour-of-day enters as sin/cos of
    2 pi hour / 24 (the released code's bug, cos of the raw hour, avoided). Without
    a time column the rows of the series are the steps.
Features (released setup)
    The row's own columns (``features``), the target's current value and its
    ``lags`` (6) previous values, hour sin/cos. Nulls stay NaN: gradient boosting
    handles them natively; the neural nets see them as 0 after scaling (the middle
    of the (-1, 1) range, ours). A row with a null feature is learned like any other.
Rows it cannot use (``StepReport.skipped``)
    ``"time_not_after_newest"``: a row whose time is not after the newest row the
    series already holds (a replayed or late row, or a second row with the same time
    in one batch: the first is kept) is not learned (the history is in time order and
    a replay must not be learned twice); ``replayed_rows`` keeps the total.
    ``"null_time"``: a row without a time (null, or a non-finite number) has no place
    on the grid; ``predict`` answers it with the last known value.
    ``"null_target"``: a row whose target is missing (not finite) enters the history
    (its features, and a missing lag for later rows) but gives nothing to learn from
    or to score. Each row is counted under one reason.
Targets (released setup)
    Deltas ``y[t+h] - y[t]`` for h = 1..H (H = ``horizons``, 6); the forecast is
    ``y[t]`` plus the predicted delta. A row whose future value is missing is
    left out of that horizon's training rows.
Training window and weights (released setup)
    The last ``window`` rows (1200), or, with ``lookback_column`` set, the last n
    rows where n is that column's value on the newest row (Variance Horizon).
    The neural nets weight rows ``exp(-age / (recency * n))`` (age 0 = newest,
    ``recency`` 0.9); `NowcastGBM` fits unweighted (its docstring says why). No fit happens before the series has ``min_rows`` rows (default
    ``window``); until then forecasts are persistence.
Retraining (ours where noted)
    ``retrain="always"``: a fit at the end of every ``learn`` call, i.e. every
    batch: the batch length is the retraining cadence (the released setup re-fits
    every five minutes on hourly data; every batch is the closest a batch engine
    gets). ``retrain="on_drift"``: a fit only when there is no model yet or after
    ``on_drift`` (the pipeline's ``learn(..., detector="PerformanceTrigger")``
    feeds the matured prequential error to the trigger in
    `tideflow.stream.drift.PerformanceTrigger`).
Forecasts and scoring
    Every row's forecasts for h = 1..H are issued when the row is learned, with the
    model as it was before the batch's fit (the model a live system had then);
    after a fit the newest row's forecasts are issued again with the new model.
    A forecast is scored when its horizon matures (the row h steps later arrives
    with a value): ``StepReport.extra`` carries ``abs_err_h<h>`` (sum of absolute
    errors) and ``n_h<h>`` (count) of the forecasts that matured in that call,
    counting only forecasts issued once the series had ``min_rows`` rows, so every
    strategy of a comparison is scored on the same timestamps. ``predict`` (the
    engine's prequential score) answers each row with the forecast issued at the
    newest learned row for that row's horizon (persistence beyond H): with
    one-hour batches that is the matured one-hour forecast.
Accounting
    ``StepReport``: ``samples`` = rows, ``fits``, ``train_seconds`` (wall time of
    the fits); ``extra``: ``train_rows`` (rows in the fitted windows: the paper's
    compute measure, summed over fits) and, for the neural nets, ``flops`` (an
    estimate: 6 x parameters x examples for the MLP, and 6 x the recurrent and
    head multiply-adds for the LSTM).
State
    ``snapshot`` holds the history (``window`` rows plus the rows lags and
    horizons need), the pending forecasts and the rows, targets and weights of the
    last fit; ``restore`` re-fits on those with the same seed (every model here is
    deterministic for a given seed on CPU), so a restored model is the same model.

The models (`tideflow.strategies.nowcast`) only say how they fit and predict
(``_fit_model``, ``_predict_model``); neural ones train through
`tideflow.strategies.torch_core`. The series and the persistence forecast every
model starts from build on `tideflow.strategies.series`.

>>> import numpy as np
>>> from tideflow.stream.batch import Batch
>>> from tideflow.stream.schema import Schema
>>> from tideflow.strategies.nowcast import NowcastPersistence
>>> f = NowcastPersistence(window=4, horizons=2, lags=1)
>>> f.bind(Schema({"y": "float64"}, target="y"))
>>> r = f.learn(Batch.from_pydict({"y": [1.0, 2.0, 3.0, 4.0, 5.0]}))
>>> f.predict(Batch.from_pydict({"y": [0.0, 0.0, 0.0]}, first_offset=5)).to_pylist()
[5.0, 5.0, 5.0]
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.drift import DriftEvent
from tideflow.stream.schema import Schema
from tideflow.strategies.base import SchemaError, StepReport, Strategy
from tideflow.strategies.series import SeriesState, forward_fill, last_known, persistence

__all__ = ["RETRAIN", "NowcastForecaster", "base_params"]

RETRAIN = ("always", "on_drift")


class _Series(SeriesState):
    """History, pending forecasts and fit bookkeeping of one series.

    Besides `SeriesState`'s ``n`` (rows seen), ``fits`` and ``model``: the rows'
    times, targets, feature rows and lookbacks (the recent ones), the forecasts
    waiting to be scored, a pending drift and the last fit's data.
    """

    __slots__ = ("times", "y", "X", "lookback", "pending", "drift", "fit_data")

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.times = np.zeros(0, dtype=np.int64)
        self.y = np.zeros(0, dtype=np.float64)
        self.X = np.zeros((0, n_features), dtype=np.float64)
        self.lookback = np.zeros(0, dtype=np.int64)
        self.pending: dict[int, np.ndarray] = {}  # issue time -> forecasts for h = 1..H
        self.drift = False
        self.fit_data: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None  # X, Y, W, seed

    @property
    def n_seen(self) -> int:
        """Rows seen (the snapshot's name for ``n``)."""
        return self.n

    def lookup(self, times: np.ndarray) -> np.ndarray:
        """Index in the history of each time, or -1 where the history has no such row."""
        if not len(self.times):
            return np.full(len(times), -1, dtype=np.int64)
        pos = np.searchsorted(self.times, times)
        pos_c = np.minimum(pos, len(self.times) - 1)
        return np.where(self.times[pos_c] == times, pos_c, -1)

    def last_value(self) -> float | None:
        """The newest finite target (None if there is none)."""
        return last_known(self.y, finite=True)


class NowcastForecaster(Strategy):
    """Base of the multi-horizon nowcasters (see the module docstring)."""

    checkable: ClassVar[bool] = False
    unordered_rows: ClassVar[bool] = False  # a series' rows must arrive in time order
    #: rows before a window that a model needs to build its inputs (the LSTM's sequence)
    context: ClassVar[int] = 0
    fits_models: ClassVar[bool] = True

    def __init__(self, *, target: str | None = None, features: list[str] | None = None,
                 time: str | None = None, step_seconds: int = 3600, horizons: int = 6, lags: int = 6,
                 window: int = 1200, min_rows: int | None = None, lookback_column: str | None = None,
                 retrain: str = "always", recency: float | None = 0.9, seed: int = 0,
                 torch_threads: int | None = 1) -> None:
        if retrain not in RETRAIN:
            raise ValueError(f"retrain must be one of {RETRAIN}, got {retrain!r}")
        if horizons < 1 or lags < 0 or window < 2 or step_seconds < 1:
            raise ValueError("needs horizons >= 1, lags >= 0, window >= 2, step_seconds >= 1")
        if recency is not None and recency <= 0:
            raise ValueError(f"recency must be > 0 or None, got {recency}")
        self.target = target
        self.features = None if features is None else list(features)
        self.time = time
        self.step_seconds = step_seconds
        self.horizons = horizons
        self.lags = lags
        self.window = window
        self.min_rows = min_rows
        self.lookback_column = lookback_column
        self.retrain = retrain
        self.recency = recency
        self.seed = seed
        self.torch_threads = torch_threads
        self._inputs: list[str] | None = None
        self._use_time = False
        self._reset()

    def _reset(self) -> None:
        self._series: _Series | None = None
        self.fits = 0
        self.train_rows = 0
        self.train_seconds = 0.0
        self.replayed_rows = 0
        self.abs_err = np.zeros(self.horizons)
        self.n_err = np.zeros(self.horizons, dtype=np.int64)

    @property
    def ready_rows(self) -> int:
        return self.window if self.min_rows is None else self.min_rows

    # -- schema ---------------------------------------------------------------------------
    def bind(self, schema: Schema) -> None:
        if self.time is None and schema.time is not None:
            self.time = schema.time
        if self.features is None:
            roles = {schema.target, schema.key, schema.task, schema.time, self.time, self.lookback_column}
            self.features = [n for n, f in schema.fields.items() if n not in roles
                             and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
        super().bind(schema)
        if self.time is not None and self.time not in schema.fields:
            raise SchemaError(f"{type(self).__name__}: time column {self.time!r} is not in the schema")
        if self.lookback_column is not None and self.lookback_column not in schema.fields:
            raise SchemaError(f"{type(self).__name__}: lookback column {self.lookback_column!r} is not in the "
                              "schema: put a VarianceHorizon step upstream")
        self._bound()

    def _bound(self) -> None:
        assert self.features is not None
        self._inputs = [f for f in self.features if f != self.target]
        self._use_time = self.time is not None

    @property
    def n_features(self) -> int:
        assert self._inputs is not None
        return len(self._inputs) + 1 + self.lags + (2 if self._use_time else 0)

    def _check(self, batch: Batch, need_target: bool) -> None:
        self._check_columns(batch, need_target)
        extra = [c for c in (self.time, self.lookback_column if need_target else None) if c is not None]
        missing = [c for c in extra if c not in batch.column_names]
        if missing:
            raise SchemaError(f"{type(self).__name__}: batch lacks columns {missing}; it has {batch.column_names}")

    def _times(self, batch: Batch, start: int) -> tuple[np.ndarray, np.ndarray]:
        """The grid step of every row, and which rows have a time at all (a null, or a
        non-finite number, is none: such a row's step is 0 and means nothing)."""
        if not self._use_time:
            return np.arange(start, start + len(batch), dtype=np.int64), np.ones(len(batch), dtype=bool)
        arr = batch.column(self.time)  # type: ignore[arg-type]
        if pa.types.is_timestamp(arr.type):
            arr = arr.cast(pa.timestamp("s")).cast(pa.int64())
        raw = arr.to_numpy(zero_copy_only=False)
        has_time = ~arr.is_null().to_numpy(zero_copy_only=False)
        if raw.dtype.kind == "f":
            has_time &= np.isfinite(raw)
        if not has_time.all():
            raw = np.where(has_time, raw, 0)
        return raw.astype(np.int64) // self.step_seconds, has_time

    # -- features ---------------------------------------------------------------------------
    def _columns(self, batch: Batch) -> np.ndarray:
        assert self._inputs is not None
        if not self._inputs:
            return np.zeros((len(batch), 0))
        return np.column_stack([
            batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in self._inputs
        ])

    def _append(self, s: _Series, times: np.ndarray, y: np.ndarray, cols: np.ndarray,
                lookback: np.ndarray) -> tuple[int, int, int]:
        """Add rows (in time order) with their feature rows to the history.

        Returns how many rows were added; how many were not because their time is not after
        the newest row already seen (a replayed or late row, or a second row with the same
        time in this batch: the first one seen is kept), which are counted in
        ``replayed_rows`` and never learned twice; and how many of the added rows have no
        (finite) target.
        """
        order = np.argsort(times, kind="stable")
        times, y, cols, lookback = times[order], y[order], cols[order], lookback[order]
        newest = s.times[-1] if len(s.times) else None
        keep = np.ones(len(times), dtype=bool)
        if newest is not None:
            keep &= times > newest
        keep[1:] &= times[1:] != times[:-1]
        late = int((~keep).sum())
        if late:
            self.replayed_rows += late
            times, y, cols, lookback = times[keep], y[keep], cols[keep], lookback[keep]
        if not len(times):
            return 0, late, 0
        s.times = np.concatenate([s.times, times])
        s.y = np.concatenate([s.y, y])
        s.lookback = np.concatenate([s.lookback, lookback])
        new = len(times)
        rows = []
        start = len(s.times) - new
        for j in range(new):
            t = int(s.times[start + j])
            lag_idx = s.lookup(t - np.arange(1, self.lags + 1))
            lag_vals = np.where(lag_idx >= 0, s.y[np.maximum(lag_idx, 0)], np.nan)
            parts = [cols[j], [y[j]], lag_vals]
            if self._use_time:
                hour = (t * self.step_seconds // 3600) % 24
                parts.append([math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)])
            rows.append(np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]))
        s.X = np.concatenate([s.X, np.asarray(rows).reshape(new, -1)])
        s.n += new
        # the history the next fits and lags need, and at least this call's rows (a batch longer
        # than the window is scored and forecast from its own rows before the next trim)
        cap = max(self.window + self.context, 24 + self.horizons + 1, self.lags + 1, new)
        if len(s.times) > cap:
            cut = len(s.times) - cap
            s.times, s.y, s.X, s.lookback = s.times[cut:], s.y[cut:], s.X[cut:], s.lookback[cut:]
        return new, late, int((~np.isfinite(y)).sum())

    # -- the contract -------------------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        self._check(batch, need_target=True)
        report = StepReport(samples=len(batch))
        if not len(batch):
            return report
        s = self._series
        if s is None:
            s = self._series = _Series(self.n_features)
        ready_before = s.n >= self.ready_rows
        times, has_time = self._times(batch, s.n)
        y = batch.numpy(self.target).astype(np.float64)  # type: ignore[arg-type]
        lookback = (batch.numpy(self.lookback_column).astype(np.int64) if self.lookback_column
                    else np.full(len(batch), self.window, dtype=np.int64))
        cols = self._columns(batch)
        if not has_time.all():
            # a row without a time has no place in the series: counted, not learned
            report.skipped["null_time"] = int((~has_time).sum())
            times, y, cols, lookback = times[has_time], y[has_time], cols[has_time], lookback[has_time]
        new, late, no_target = self._append(s, times, y, cols, lookback) if len(times) else (0, 0, 0)
        if late:
            report.skipped["time_not_after_newest"] = late
        if no_target:
            # in the history (features, lags of later rows) but nothing to learn or score
            report.skipped["null_target"] = no_target
        new_idx = np.arange(len(s.times) - new, len(s.times))
        if new:
            # forecasts from every new row with the model as it was (issued as the row arrived);
            # kept for scoring once the series was ready before this call
            if ready_before:
                issue = self._forecast(s, new_idx)
                for j, i in enumerate(new_idx):
                    s.pending[int(s.times[i])] = issue[j]
            self._score(s, new_idx, report)
        ready = s.n >= self.ready_rows
        fitted = False
        if ready and self.fits_models and (self.retrain == "always" or s.model is None or s.drift):
            start = time.perf_counter()
            self._fit_window(s, report)
            seconds = time.perf_counter() - start
            report.train_seconds += seconds
            self.train_seconds += seconds
            s.drift = False
            fitted = True
        if len(s.times) and ready and (fitted or not ready_before):
            s.pending[int(s.times[-1])] = self._forecast(s, np.array([len(s.times) - 1]))[0]
        newest = int(s.times[-1]) if len(s.times) else 0
        for t in [t for t in s.pending if t <= newest - self.horizons]:
            del s.pending[t]
        return report

    def _score(self, s: _Series, new_idx: np.ndarray, report: StepReport) -> None:
        H = self.horizons
        abs_err = np.zeros(H)
        n_err = np.zeros(H, dtype=np.int64)
        for i in new_idx:
            t, yv = int(s.times[i]), s.y[i]
            if not np.isfinite(yv):
                continue
            for h in range(1, H + 1):
                f = s.pending.get(t - h)
                if f is not None and np.isfinite(f[h - 1]):
                    abs_err[h - 1] += abs(f[h - 1] - yv)
                    n_err[h - 1] += 1
        self.abs_err += abs_err
        self.n_err += n_err
        for h in range(H):
            report.extra[f"abs_err_h{h + 1}"] = float(abs_err[h])
            report.extra[f"n_h{h + 1}"] = float(n_err[h])

    def predict(self, batch: Batch) -> pa.Array:
        self._check(batch, need_target=False)
        n = len(batch)
        out = np.zeros(n, dtype=np.float64)
        s = self._series
        if s is None or not len(s.times):
            return pa.array(out, type=pa.float64())
        times, has_time = self._times(batch, s.n)
        t0 = int(s.times[-1])
        issued = s.pending.get(t0)
        last = s.last_value()
        fallback = 0.0 if last is None else last
        for j, t in enumerate(times.tolist()):
            h = t - t0
            if has_time[j] and issued is not None and 1 <= h <= self.horizons and np.isfinite(issued[h - 1]):
                out[j] = issued[h - 1]
            else:
                out[j] = fallback
        return pa.array(out, type=pa.float64())

    def on_drift(self, event: DriftEvent) -> None:
        if self._series is not None:
            self._series.drift = True

    # -- forecasting and fitting ------------------------------------------------------------------
    def _base(self, s: _Series, idx: np.ndarray) -> np.ndarray:
        """The value each forecast adds its delta to: the row's value, else the last known one
        (0.0 before any)."""
        base = s.y[idx].copy()
        bad = ~np.isfinite(base)
        if bad.any():
            base[bad] = forward_fill(s.y, before=0.0, finite=True)[idx[bad]]
        return base

    def _forecast(self, s: _Series, idx: np.ndarray) -> np.ndarray:
        """Forecasts (len(idx), H) from history rows ``idx``."""
        out = persistence(self._base(s, idx), self.horizons)
        if s.model is not None:
            delta = self._predict_model(s.model, self._inputs_at(s, idx))
            good = np.isfinite(delta)
            out = np.where(good, out + np.where(good, delta, 0.0), out)
        return out

    def _inputs_at(self, s: _Series, idx: np.ndarray) -> np.ndarray:
        """Model inputs of rows ``idx``: their feature rows (sequence models override)."""
        return s.X[idx]

    def _fit_window(self, s: _Series, report: StepReport) -> None:
        n = int(min(max(s.lookback[-1], 2), self.window, len(s.times)))
        lo = len(s.times) - n
        idx = np.arange(lo, len(s.times))
        targets = s.times[idx][:, None] + np.arange(1, self.horizons + 1)[None, :]
        at = s.lookup(targets.reshape(-1)).reshape(targets.shape)
        future = np.where(at >= 0, s.y[np.maximum(at, 0)], np.nan)
        Y = future - s.y[idx][:, None]
        age = np.arange(n - 1, -1, -1, dtype=np.float64)
        W = np.exp(-age / (self.recency * n)) if self.recency is not None else np.ones(n)
        X = self._inputs_at(s, idx)
        seed = s.fit_seed(self.seed)
        s.model = self._fit_model(X, Y, W, seed, report)
        s.fit_data = (X, Y, W, seed)
        s.fits += 1
        self.fits += 1
        self.train_rows += n
        report.fits += 1
        report.extra["train_rows"] = report.extra.get("train_rows", 0.0) + n

    def _fit_model(self, X: np.ndarray, Y: np.ndarray, W: np.ndarray, seed: int, report: StepReport | None) -> Any:
        raise NotImplementedError

    def _predict_model(self, model: Any, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        s = self._series
        series = None
        if s is not None:
            series = {
                "times": s.times.copy(), "y": s.y.copy(), "X": s.X.copy(), "lookback": s.lookback.copy(),
                "n_seen": s.n, "fits": s.fits, "drift": s.drift,
                "pending": [[t, f.copy()] for t, f in sorted(s.pending.items())],
                "fit": None if s.fit_data is None else [a.copy() if isinstance(a, np.ndarray) else a
                                                         for a in s.fit_data],
            }
        return {
            "version": 1, "fits": self.fits, "train_rows": self.train_rows, "replayed_rows": self.replayed_rows,
            "abs_err": self.abs_err.copy(), "n_err": self.n_err.copy(), "series": series,
            "timing": {"train_seconds": self.train_seconds},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self.fits = int(state["fits"])
        self.train_rows = int(state["train_rows"])
        self.replayed_rows = int(state["replayed_rows"])
        self.abs_err = np.asarray(state["abs_err"], dtype=np.float64).copy()
        self.n_err = np.asarray(state["n_err"], dtype=np.int64).copy()
        self.train_seconds = float(state["timing"]["train_seconds"])
        plain = state["series"]
        if plain is None:
            return
        s = _Series(np.asarray(plain["X"]).shape[1])
        s.times = np.asarray(plain["times"], dtype=np.int64).copy()
        s.y = np.asarray(plain["y"], dtype=np.float64).copy()
        s.X = np.asarray(plain["X"], dtype=np.float64).copy()
        s.lookback = np.asarray(plain["lookback"], dtype=np.int64).copy()
        s.n, s.fits, s.drift = int(plain["n_seen"]), int(plain["fits"]), bool(plain["drift"])
        s.pending = {int(t): np.asarray(f, dtype=np.float64).copy() for t, f in plain["pending"]}
        if plain["fit"] is not None:
            X, Y, W, seed = plain["fit"]
            s.fit_data = (np.asarray(X), np.asarray(Y), np.asarray(W), int(seed))
            s.model = self._fit_model(*s.fit_data, None)  # deterministic: the same model again
        self._series = s

    # -- inspection ------------------------------------------------------------------------------
    def horizon_mae(self) -> list[float | None]:
        """MAE of the matured forecasts per horizon so far (None where none matured)."""
        return [float(a / n) if n else None for a, n in zip(self.abs_err, self.n_err)]


def base_params(op: NowcastForecaster) -> dict[str, Any]:
    """The shared constructor parameters (subclasses pass them on through ``**kwargs``)."""
    names = [n for n in inspect.signature(NowcastForecaster.__init__).parameters if n != "self"]
    return {n: getattr(op, n) for n in names}

