"""`WindowForecaster`: the setting every link-load forecaster shares (arXiv 2404.05304).

The comparison in "Liquid Neural Network-based Adaptive Learning vs. Incremental
Learning for Link Load Prediction amid Concept Drift due to Network Failures" (arXiv
2404.05304) sets an incremental-learning (IL) baseline and controls
(`tideflow.strategies.forecasting`) against a liquid network
(`tideflow.strategies.liquid`). What the paper leaves open (window, scaling, network
sizes, training schedule; see ``docs/methods/liquid.md``) is chosen here once, in
`WindowForecaster`, and shared by every forecaster so that a comparison differs only
in the model and in how it adapts. Training goes through
`tideflow.strategies.torch_core`; per-series state and the persistence forecast
build on `tideflow.strategies.series`.

The setting, common to every forecaster:

* **Task.** Each row's target (the link load) is predicted from the values of the
  same series strictly before it: one step ahead. The inputs are the last ``window``
  (W) values of that series only (univariate: the paper's summaries mention no other
  input, so this is our reading, not a reported detail); the schema's other
  columns are required to be present (so that a batch of the wrong schema fails
  loudly) but are not inputs. Rows are assumed to be in time order and equally
  spaced; the time column is not read.
* **Series.** With ``key=None`` the whole stream is one series. With ``key="link"``
  every value of that column is a separate series with its own history, scaler,
  model and (for liquid networks) hidden state, so one shared instance over several
  links behaves exactly like keyed routing with one instance per link (the engine's
  ``Keyed`` route): same seeds, same fits, same predictions. The only thing shared is
  the fallback for a series with no history at all (the mean of every target value
  the instance has learned, 0.0 before any).
* **Rows of the same batch.** With ``within_batch="observed"`` (default) earlier rows
  of the series in the same batch count as observed when predicting later rows (an
  observation is known at its timestamp), so predictions do not depend on how the
  stream is cut into batches. That reads the batch's target column, so a batch
  without it, or ``within_batch="recursive"``, forecasts later rows recursively
  (the model's own forecasts stand in for the unseen values; for a batch of one time
  step both modes are the same). Observations are assumed to arrive with their rows
  (no label delay: with a delay the history would have a gap before the batch). The
  shared check suite demands identical predictions with and without the target
  column, which only ``"recursive"`` satisfies, so ``_unit_test_params`` use it; the
  tests run every other check on the ``"observed"`` mode.
* **Missing values.** A missing observation (a null or NaN target) is forward-filled
  with the series' previous value before it is kept (`tideflow.strategies.series.forward_fill`):
  a policy, not a loss, so the row counts as a sample and ``StepReport.skipped`` stays
  empty; the same fill stands in for missing values of the batch when predicting rows
  after them (``within_batch="observed"``). Features are not inputs, so a null there
  changes nothing, and the time column is not read, so a late row is taken as the newest.
  Nothing is dropped. Known limit: values missing at the very start of a series have
  nothing to fill them from and stay NaN in the history, and a fit whose window holds
  them yields a model that forecasts NaN.
* **Pretraining.** Until a series has ``pretrain_steps`` samples (default 1344 =
  14 days of 15-min steps) it is forecast by persistence (its last value). At exactly
  that sample the model is fitted on those samples; samples that arrived in the same
  batch after it are then absorbed by the fitted model. Every later re-fit also
  happens at an exact sample count, on exactly the samples up to it, so the fitted
  weights never depend on batch boundaries; by default predictions for rows of the
  batch that straddles a fit (predicted before ``learn`` saw it) use the previous model.
* **Per-event learning** (``per_event=True``; default off, so no earlier result
  changes): every row predicted by the model that has learned the rows before it, as
  with transport batches of one row, in batches of any size
  (`tideflow.strategies.window_per_event`).
* **Normalisation.** ``"global"``: mean and standard deviation of the fit's samples
  (the pretraining data; a re-fit refits them on its own samples). ``"window"``:
  every input window is normalised by its own mean and standard deviation and the
  output is de-normalised with them (the first reconstruction found this decides
  whether frozen models survive a level shift: compare strategies only under the
  same setting).
* **Training.** Inputs are all (W+1)-sample windows of the fit's samples (inputs W,
  target the next value). Loss: mean squared error on the normalised target.
  Optimiser: Adam (``lr``, default 3e-3; 1e-2 for liquid networks), a fresh optimiser
  per fit (its moments are not kept, hence not snapshotted), shuffled minibatches of
  ``minibatch`` (32) windows, ``epochs`` passes (default 20). No validation split and
  no early stopping (the pretraining window is short and the paper describes neither).
* **Determinism.** A model's initial weights and its minibatch order come from a
  generator seeded with ``seed * 1_000_003 + fits of the series``
  (`tideflow.strategies.torch_core.fit_seed`; weights are drawn inside a fork of the
  global generators, which are neither read nor moved). Same seed and same stream
  give bit-identical weights. ``torch_threads`` (default 1) is applied with
  ``torch.set_num_threads`` (process-wide) the first time a model is touched: one
  thread per worker keeps workers that share cores from oversubscribing them.
* **Accounting.** ``StepReport.samples`` is the batch's rows, ``fits`` the fits done in
  this ``learn``, ``train_seconds`` the wall time of the ``learn`` call; ``extra``
  holds ``fit_windows`` (training windows of the fits) and ``examples`` (windows x
  epochs, i.e. examples through a gradient step). Instance totals: ``fits``,
  ``fit_windows``, ``examples``, ``train_seconds``.

Subclasses: `tideflow.strategies.forecasting` (persistence, frozen controls, the IL
baseline) and `tideflow.strategies.liquid`.

>>> import numpy as np
>>> from tideflow.stream.batch import Batch
>>> from tideflow.stream.schema import Schema
>>> from tideflow.strategies.forecasting import FrozenMLP
>>> f = FrozenMLP(window=4, pretrain_steps=40, epochs=2, hidden=8)
>>> f.bind(Schema({"y": "float64"}, target="y"))
>>> f.learn(Batch.from_pydict({"y": np.sin(np.arange(60) / 4)})).extra  # one fit: 36 windows x 2
{'fit_windows': 36.0, 'examples': 72.0}
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.drift import DriftEvent
from tideflow.stream.schema import Schema
from tideflow.strategies import torch_core
from tideflow.strategies.base import SchemaError, StepReport, Strategy
from tideflow.strategies.series import SeriesState, forward_fill, persistence
from tideflow.strategies.window_per_event import COUNTERS, Pass, per_event_pass

__all__ = ["NORMALISATIONS", "WITHIN_BATCH", "Series", "WindowForecaster"]

NORMALISATIONS = ("global", "window")
WITHIN_BATCH = ("observed", "recursive")


def _std_floor(mean: np.ndarray | float) -> np.ndarray | float:
    """Smallest standard deviation a scaler uses (a flat window must not divide by 0)."""
    return 1e-6 * np.maximum(1.0, np.abs(mean))


class Series(SeriesState):
    """Everything a forecaster keeps about one series (converted to plain data by ``to_plain``).

    Besides `SeriesState`'s ``n`` (samples seen), ``fits`` and ``model``: the recent
    history, the global scaler, the liquid network's state and the drift and
    fine-tuning bookkeeping.
    """

    __slots__ = ("history", "last_fit_at", "mean", "std", "hx", "last_out",
                 "drift_at", "refits", "finetunes", "last_finetune_at")

    def __init__(self) -> None:
        super().__init__()
        self.history = np.zeros(0, dtype=np.float64)  # the most recent samples, oldest first
        self.last_fit_at = -1  # sample count at the last fit
        self.mean = 0.0  # global scaler (normalisation="global")
        self.std = 1.0
        self.hx: Any = None  # liquid networks in stateful mode: state after the last sample
        self.last_out: float | None = None  # normalised output after the last sample
        self.drift_at = -1  # sample count when a drift was signalled (-1: none pending)
        self.refits = 0  # drift-triggered re-fits (liquid hybrid)
        self.finetunes = 0
        self.last_finetune_at = -1

    @property
    def last(self) -> float | None:
        """The newest sample (missing ones are forward-filled before they are kept)."""
        return float(self.history[-1]) if len(self.history) else None

    def to_plain(self) -> dict[str, Any]:
        return {
            "history": self.history.copy(),
            "n": self.n,
            "fits": self.fits,
            "last_fit_at": self.last_fit_at,
            "mean": self.mean,
            "std": self.std,
            "model": None if self.model is None else torch_core.module_state(self.model),
            "hx": None if self.hx is None else self.hx.detach().clone(),
            "last_out": self.last_out,
            "drift_at": self.drift_at,
            "refits": self.refits,
            "finetunes": self.finetunes,
            "last_finetune_at": self.last_finetune_at,
        }


class WindowForecaster(Strategy):
    """Base of the one-step-ahead forecasters (see the module docstring for the setting).

    Args:
        target: the series' column (default: the schema's target).
        key: column whose values name separate series (None: one series).
        features: columns a batch must carry (checked, not used as inputs); default the
            schema's features; ``[]`` requires none.
        window: W, the input window (and the BPTT length of recurrent models).
        normalisation: ``"global"`` or ``"window"`` (module docstring).
        pretrain_steps: samples of a series collected before its first fit; must exceed W.
        epochs, lr, minibatch: Adam training schedule of every fit.
        hidden: width of the MLP layers / GRU state (liquid networks: CfC backbone).
        within_batch: ``"observed"`` or ``"recursive"`` (module docstring).
        per_event: predict each row with the model that has learned the rows before it
            (module docstring); needs ``within_batch="observed"``.
        seed: seeds initial weights and minibatch order (with the series' fit count).
        torch_threads: ``torch.set_num_threads`` value (None leaves it alone).

    Subclasses say when a series is (re-)fitted (``_next_event``/``_on_event``), build
    the network (``_new_net``) and may change training pairs, the loss and how a
    fitted model forecasts. Predictions are float64.
    """

    checkable = False
    problem: ClassVar[str] = "regression"
    unordered_rows: ClassVar[bool] = False  # a series' samples must arrive in time order

    def __init__(
        self,
        *,
        target: str | None = None,
        key: str | None = None,
        features: list[str] | None = None,
        window: int = 16,
        normalisation: str = "global",
        pretrain_steps: int = 1344,
        epochs: int = 20,
        lr: float = 3e-3,
        hidden: int = 64,
        minibatch: int = 32,
        within_batch: str = "observed",
        seed: int = 0,
        torch_threads: int | None = 1,
        per_event: bool = False,
    ) -> None:
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}"
            )
        if within_batch not in WITHIN_BATCH:
            raise ValueError(f"within_batch must be one of {WITHIN_BATCH}, got {within_batch!r}")
        if per_event and within_batch != "observed":
            raise ValueError("per_event=True predicts each row after learning the rows before "
                             "it, so it needs their observed values: within_batch='observed'")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if pretrain_steps <= window:
            raise ValueError(f"pretrain_steps ({pretrain_steps}) must exceed window ({window})")
        self.target = target
        self.key = key
        self.features = list(features) if features is not None else None
        self.window = window
        self.normalisation = normalisation
        self.pretrain_steps = pretrain_steps
        self.epochs = epochs
        self.lr = lr
        self.hidden = hidden
        self.minibatch = minibatch
        self.within_batch = within_batch
        self.seed = seed
        self.torch_threads = torch_threads
        self.per_event = bool(per_event)
        self._reset()

    def _reset(self) -> None:
        self._series: dict[Any, Series] = {}
        self.n_learned = 0
        self.fits = 0
        self.fit_windows = 0
        self.examples = 0
        self.train_seconds = 0.0
        self._target_sum = 0.0
        self._target_count = 0
        # per_event: the pass ``predict`` made, waiting for ``learn`` of the same rows
        self._pass: Pass | None = None

    # -- schema -------------------------------------------------------------------
    def bind(self, schema: Schema) -> None:
        super().bind(schema)
        if self.key is not None and self.key not in schema.fields:
            raise SchemaError(
                f"{type(self).__name__}: key column {self.key!r} is not in the schema "
                f"({schema.names})"
            )
        if self.features is not None and self.key in self.features:
            self.features = [f for f in self.features if f != self.key]

    def _check(self, batch: Batch, need_target: bool) -> None:
        self._check_columns(batch, need_target=need_target)
        if self.key is not None and self.key not in batch.column_names:
            raise SchemaError(
                f"{type(self).__name__}: batch lacks key column {self.key!r}; "
                f"it has {batch.column_names}"
            )

    def _groups(self, batch: Batch) -> list[tuple[Any, np.ndarray]]:
        """Row indices of each series in the batch, series in order of first appearance."""
        if self.key is None:
            return [(None, np.arange(len(batch)))]
        groups: dict[Any, list[int]] = {}
        for i, k in enumerate(batch.column(self.key).to_pylist()):
            groups.setdefault(k, []).append(i)
        return [(k, np.asarray(v, dtype=np.int64)) for k, v in groups.items()]

    # -- the contract -------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        if not len(batch):
            return StepReport()
        self._check(batch, need_target=True)
        assert self.target is not None
        start = time.perf_counter()
        values = batch.numpy(self.target).astype(np.float64)
        before = tuple(getattr(self, name) for name in COUNTERS)
        done, self._pass = self._pass, None
        adopted = done is not None and done.covers(batch, self.n_learned)
        leading, seconds = (done.leading, done.seconds) if adopted else (0, 0.0)
        for k, rows in self._groups(batch):
            if adopted and k in done.series:  # the pass learned these rows (module docstring)
                if done.series[k] is not None:
                    self._series[k] = done.series[k]
            else:
                leading += self._learn_group(self._series, k, values[rows])
        if adopted:
            for name, add in zip(COUNTERS, done.counts):
                setattr(self, name, getattr(self, name) + add)
        finite = values[np.isfinite(values)]
        self._target_sum += float(finite.sum())
        self._target_count += int(len(finite))
        self.n_learned += len(batch)
        # the pass's fitting time is learning time, though spent in ``predict``
        seconds += time.perf_counter() - start
        self.train_seconds += seconds
        extra = {"fit_windows": float(self.fit_windows - before[1]),
                 "examples": float(self.examples - before[2])}
        if self.per_event:
            extra["per_event_rows"] = float(len(batch) if adopted or len(batch) == 1 else 0)
        return StepReport(samples=len(batch), fits=self.fits - before[0], train_seconds=seconds,
                          extra=extra, skipped={"null_target": leading} if leading else {})

    def _learn_group(self, store: dict[Any, Series], k: Any, values: np.ndarray) -> int:
        """Learn one series' values into ``store``; returns the leading missing ones left out."""
        series = store.get(k)
        filled = forward_fill(values, series.last if series is not None else None)
        first = 0
        if series is None or series.last is None:
            # a series that starts without a value has nothing to carry forward: its leading
            # missing loads are left out (and counted), never learned as NaN, which would
            # make every later fit of the series NaN
            known = np.isfinite(filled)
            first = int(np.argmax(known)) if known.any() else len(filled)
            filled = filled[first:]
            if not len(filled):
                return first
        if series is None:
            series = store[k] = Series()
        self._absorb(series, filled)
        return first

    def predict(self, batch: Batch) -> pa.Array:
        if not len(batch):
            return pa.array([], type=pa.float64())
        self._check(batch, need_target=False)
        observed = self.within_batch == "observed" and self.target in batch.column_names
        values = batch.numpy(self.target).astype(np.float64) if observed else None
        if self.per_event and values is not None and len(batch) > 1:
            if self._pass is None or not self._pass.covers(batch, self.n_learned):
                self._pass = per_event_pass(self, batch, values)
            return pa.array(self._pass.preds, type=pa.float64())
        out = np.empty(len(batch), dtype=np.float64)
        for k, rows in self._groups(batch):
            series = self._series.get(k)
            seen = None
            if values is not None:
                seen = forward_fill(values[rows][:-1], series.last if series is not None else None)
            out[rows] = self._forecast(series, len(rows), seen)
        return pa.array(out, type=pa.float64())

    def on_drift(self, event: DriftEvent) -> None:
        """Forecasters here ignore drift (the liquid hybrid overrides this)."""

    # -- stepping through a series -------------------------------------------------
    def _history_cap(self) -> int:
        """How many recent samples a series keeps (enough for every fit it may do)."""
        return max(self.pretrain_steps, self.window + 1)

    def _absorb(self, s: Series, values: np.ndarray) -> None:
        """Feed new samples, stopping at every sample count where a fit is due."""
        pos = 0
        while True:
            due = self._next_event(s)
            if due is not None and due <= s.n:
                self._on_event(s)
                continue
            if pos >= len(values):
                return
            take = len(values) - pos if due is None else min(len(values) - pos, due - s.n)
            chunk = values[pos:pos + take]
            pos += take
            s.history = np.concatenate([s.history, chunk])[-self._history_cap():]
            s.n += len(chunk)
            if s.model is not None:
                self._advance(s, chunk)

    def _next_event(self, s: Series) -> int | None:
        """Sample count at which the next fit of ``s`` is due (None: never)."""
        return self.pretrain_steps if s.model is None else None

    def _on_event(self, s: Series) -> None:
        """Do whatever is due at ``s.n`` (the base: the pretraining fit)."""
        self._fit(s, s.history[-self.pretrain_steps:], refit_scaler=True, warm_start=False)

    def _advance(self, s: Series, chunk: np.ndarray) -> None:
        """A fitted model sees new samples (stateful models update their state here)."""

    # -- forecasting -----------------------------------------------------------------
    def _fallback(self) -> float:
        return self._target_sum / self._target_count if self._target_count else 0.0

    def _forecast(self, s: Series | None, m: int, seen: np.ndarray | None,
                  fallback: float | None = None) -> np.ndarray:
        """Forecasts of the next ``m`` samples of ``s``; ``seen``: the first m-1, if known;
        ``fallback``: the first forecast of a series with no value (default `_fallback`)."""
        if s is None or s.model is None:
            # persistence: one issue time and m steps ahead, or m issue times one step ahead
            if s is None or s.last is None:
                first = self._fallback() if fallback is None else fallback
            else:
                first = s.last
            if seen is None:
                return persistence(np.array([first]), m)[0]
            return persistence(np.concatenate([[first], seen]), 1)[:, 0]
        return self._model_forecast(s, m, seen)

    def _model_forecast(self, s: Series, m: int, seen: np.ndarray | None) -> np.ndarray:
        """Window models: each forecast is the network on the W values before it."""
        w = self.window
        if seen is not None:
            context = np.concatenate([s.history[-w:], seen])
            windows = np.lib.stride_tricks.sliding_window_view(context, w)
            return self._predict_windows(s, windows)
        context = list(s.history[-w:])
        out = np.empty(m)
        for j in range(m):
            out[j] = self._predict_windows(s, np.asarray(context[-w:])[None, :])[0]
            context.append(out[j])
        return out

    def _scale(self, s: Series, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-window (mean, std) of ``windows`` under the chosen normalisation."""
        if self.normalisation == "global":
            k = len(windows)
            return np.full(k, s.mean), np.full(k, s.std)
        mean = windows.mean(axis=1)
        std = np.maximum(windows.std(axis=1), _std_floor(mean))
        return mean, std

    def _predict_windows(self, s: Series, windows: np.ndarray) -> np.ndarray:
        import torch

        mean, std = self._scale(s, windows)
        x = torch.from_numpy(((windows - mean[:, None]) / std[:, None]).astype(np.float32))
        with torch.no_grad():
            out = self._net_output(s.model, x).double().numpy()
        return out * std + mean

    def _net_output(self, model: Any, x: Any) -> Any:
        """Normalised forecast, shape (k,), from normalised windows, shape (k, W)."""
        return model(x).reshape(-1)

    # -- fitting ----------------------------------------------------------------------
    def _torch(self) -> Any:
        return torch_core.use_torch(self.torch_threads)

    def _new_net(self) -> Any:
        raise NotImplementedError

    def _build(self, seed: int) -> Any:
        self._torch()
        return torch_core.build(self._new_net, seed)

    def _training_pairs(self, s: Series, data: np.ndarray) -> tuple[Any, Any]:
        """Normalised (inputs (k, W), targets (k,)) from every (W+1)-window of ``data``."""
        import torch

        w = self.window
        windows = np.lib.stride_tricks.sliding_window_view(data, w + 1)
        mean, std = self._scale(s, windows[:, :w])
        normed = (windows - mean[:, None]) / std[:, None]
        x = torch.from_numpy(normed[:, :w].astype(np.float32))
        y = torch.from_numpy(normed[:, w].astype(np.float32))
        return x, y

    def _loss(self, model: Any, x: Any, y: Any) -> Any:
        return ((self._net_output(model, x) - y) ** 2).mean()

    def _after_step(self, model: Any) -> None:
        """Called after every optimiser step (bare LTC cells clip their weights here)."""

    def _fit(self, s: Series, data: np.ndarray, *, refit_scaler: bool, warm_start: bool,
             epochs: int | None = None, steps: int | None = None) -> None:
        """Fit the model of ``s`` on ``data`` (``epochs`` passes, or ``steps`` minibatches).

        A fresh Adam optimiser every fit (its moments are not kept, so not snapshotted);
        initial weights (unless warm-started) and minibatch order from the fit's seed.
        """
        self._torch()
        data = np.asarray(data, dtype=np.float64)
        seed = s.fit_seed(self.seed)
        if refit_scaler and self.normalisation == "global":
            s.mean = float(data.mean())
            s.std = float(max(data.std(), _std_floor(s.mean)))
        model = s.model if warm_start and s.model is not None else self._build(seed)
        x, y = self._training_pairs(s, data)
        n = len(x)
        if steps is None:
            epochs = self.epochs if epochs is None else epochs
        else:
            epochs = None
        done = torch_core.train(
            model, lambda idx: self._loss(model, x[idx], y[idx]), n,
            optimiser=torch_core.adam(model, self.lr), generator=torch_core.seeded_generator(seed),
            minibatch=self.minibatch, epochs=epochs, steps=steps,
            after_step=lambda: self._after_step(model),
        )
        s.model = model
        s.fits += 1
        s.last_fit_at = s.n
        self.fits += 1
        self.fit_windows += n
        self.examples += done

    # -- state ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "n_learned": self.n_learned,
            "fits": self.fits,
            "fit_windows": self.fit_windows,
            "examples": self.examples,
            "target_sum": self._target_sum,
            "target_count": self._target_count,
            "series": [[k, s.to_plain()] for k, s in self._series.items()],
            # wall time differs between equal twins: kept below the top level
            "timing": {"train_seconds": self.train_seconds},
        }

    def params(self) -> dict[str, Any]:
        # per_event only when set: the default leaves every existing graph's parameters, and so
        # its description and fingerprint (checkpoints hold for the same graph only), unchanged
        out = super().params()
        if not self.per_event:
            out.pop("per_event", None)
        return out

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self.n_learned = state["n_learned"]
        self.fits = state["fits"]
        self.fit_windows = state["fit_windows"]
        self.examples = state["examples"]
        self._target_sum = state["target_sum"]
        self._target_count = state["target_count"]
        self.train_seconds = state["timing"]["train_seconds"]
        for k, plain in state["series"]:
            s = Series()
            s.history = np.array(plain["history"], dtype=np.float64)
            counters = ("n", "fits", "last_fit_at", "drift_at", "refits", "finetunes",
                        "last_finetune_at")
            for name in counters:
                setattr(s, name, int(plain[name]))
            s.mean, s.std = float(plain["mean"]), float(plain["std"])
            s.last_out = None if plain["last_out"] is None else float(plain["last_out"])
            if plain["model"] is not None:
                s.model = torch_core.load_module_state(self._build(0), plain["model"]).eval()
            s.hx = None if plain["hx"] is None else plain["hx"].detach().clone()
            self._series[k] = s

    # -- inspection ----------------------------------------------------------------------
    def series_keys(self) -> list[Any]:
        """The series this instance holds, in order of first appearance."""
        return list(self._series)

    def series_info(self, key: Any = None) -> dict[str, Any]:
        """Counters of one series: samples seen, fits, drift re-fits, pending drift."""
        s = self._series[key]
        return {"n": s.n, "fits": s.fits, "refits": s.refits, "finetunes": s.finetunes,
                "last_fit_at": s.last_fit_at, "drift_pending": s.drift_at >= 0}

