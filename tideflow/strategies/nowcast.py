"""The nowcasting models: gradient boosting, MLP, LSTM and two references (arXiv 2309.15207).

The models of "Balancing Computational Efficiency and Forecast Error in Machine
Learning-based Time-Series Forecasting: Insights from Live Experiments on
Meteorological Nowcasting" (arXiv 2309.15207), for the ``nowcast`` pipeline. The
setting they share (time, features, delta targets, training window and weights,
retraining, matured scoring, accounting, state) is
`tideflow.strategies.nowcast_forecaster.NowcastForecaster`, documented there and
re-exported here; what the paper leaves open is in ``docs/methods/variance-horizon.md``.
The neural nowcasters train through `tideflow.strategies.torch_core`.

Models: `NowcastGBM` (scikit-learn's HistGradientBoosting, one model for all horizons
with the horizon as an input: we chose it over XGBoost to avoid a new dependency),
`NowcastMLP` and `NowcastLSTM` (torch), and the reference forecasters
`NowcastPersistence` and `NowcastSeasonal` (the value 24 hours before the forecast
hour), which never fit.

>>> import numpy as np
>>> from tideflow.stream.batch import Batch
>>> from tideflow.stream.schema import Schema
>>> f = NowcastGBM(window=60, horizons=2, lags=2, max_iter=10)
>>> f.bind(Schema({"x": "float64", "y": "float64"}, target="y"))
>>> y = np.sin(np.arange(120) / 5)
>>> r = f.learn(Batch.from_pydict({"x": np.cos(np.arange(120) / 5), "y": y}))
>>> r.fits, int(r.extra["train_rows"])
(1, 60)
>>> r = f.learn(Batch.from_pydict({"x": [1.0], "y": [0.5]}, first_offset=120))
>>> int(r.extra["n_h1"]), int(r.extra["n_h2"])  # only row 119 had a fitted model's forecast
(1, 0)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tideflow.strategies import torch_core
from tideflow.strategies.base import StepReport
from tideflow.strategies.nowcast_forecaster import NowcastForecaster, _Series
from tideflow.strategies.nowcast_forecaster import base_params as _base_params

__all__ = ["NowcastGBM", "NowcastLSTM", "NowcastMLP", "NowcastPersistence", "NowcastSeasonal",
           "NowcastForecaster"]


class NowcastPersistence(NowcastForecaster):
    """Reference: every horizon's forecast is the current value (no fitting).

    The forecast is `tideflow.strategies.series.persistence` of the last known value,
    the one every nowcaster issues before its first fit and the one link-load
    `Persistence <tideflow.strategies.forecasting.Persistence>` makes one step ahead.
    """

    fits_models = False

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 32, "horizons": 3, "lags": 2}


class NowcastSeasonal(NowcastForecaster):
    """Reference: the forecast for hour t+h is the value at t+h-``period`` (24 h), else the current value."""

    fits_models = False

    def __init__(self, *, period: int = 24, **kwargs: Any) -> None:
        self.period = period
        super().__init__(**kwargs)

    def params(self) -> dict[str, Any]:
        return {**_base_params(self), "period": self.period}

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 32, "horizons": 3, "lags": 2, "period": 8}

    def _forecast(self, s: _Series, idx: np.ndarray) -> np.ndarray:
        out = super()._forecast(s, idx)
        for h in range(1, self.horizons + 1):
            back = s.lookup(s.times[idx] + h - self.period)
            vals = np.where(back >= 0, s.y[np.maximum(back, 0)], np.nan)
            out[:, h - 1] = np.where(np.isfinite(vals), vals, out[:, h - 1])
        return out


class NowcastGBM(NowcastForecaster):
    """Gradient boosting (scikit-learn ``HistGradientBoostingRegressor``), one model for all horizons.

    Released setup (XGBoost, one model per horizon): 200 trees, depth 6, learning rate
    0.1, alpha 0.5, min_child_weight 5, recency sample weights. Ours, and why:

    * **one model for the H horizons**, each row entered once per horizon with the
      horizon as an extra input (the "direct with horizon feature" form), and
      ``max_iter`` 100 trees: one stacked fit costs a fraction of H per-horizon fits,
      and the comparison re-fits hundreds of times per series (`bench/learning_cost.py`
      measures a nowcaster's learn cost);
    * **no recency weights**: scikit-learn's histogram trees fit markedly slower with
      ``sample_weight``; the neural nowcasters keep the weights;
    * depth 6, rate 0.1, ``min_samples_leaf`` 5 (min_child_weight 5 under the squared
      loss, whose hessian is 1), ``l2_regularization`` 0.5 standing in for XGBoost's
      alpha (an L1 penalty scikit-learn's trees lack); no early stopping (the released
      setup's 256-row eval set only reports). One OpenMP thread unless ``threads``.

    Missing values stay NaN (the trees learn where a missing value goes); a feature with no
    value at all in a fit's window enters that fit as a constant (scikit-learn's binning
    cannot take a column without values), so it is simply not used.
    """

    def __init__(self, *, max_iter: int = 100, max_depth: int = 6, learning_rate: float = 0.1,
                 threads: int | None = 1, **kwargs: Any) -> None:
        self.max_iter = max_iter
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.threads = threads
        super().__init__(**kwargs)

    def params(self) -> dict[str, Any]:
        return {**_base_params(self), "max_iter": self.max_iter, "max_depth": self.max_depth,
                "learning_rate": self.learning_rate, "threads": self.threads}

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 48, "horizons": 2, "lags": 2, "max_iter": 5}

    @staticmethod
    def _stack(X: np.ndarray, H: int) -> np.ndarray:
        """Each row once per horizon, with the horizon (1..H) as a last column."""
        return np.column_stack([np.repeat(X, H, axis=0), np.tile(np.arange(1, H + 1, dtype=np.float64), len(X))])

    def _fit_model(self, X: np.ndarray, Y: np.ndarray, W: np.ndarray, seed: int, report: StepReport | None) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor

        H = Y.shape[1]
        Xs, ys = self._stack(X, H), Y.reshape(-1)
        ok = np.isfinite(ys)
        if ok.sum() < 10:
            return None
        Xs = Xs[ok]
        blank = ~np.isfinite(Xs).any(axis=0)
        if blank.any():
            # a feature without a single value in the window (a sensor down for longer than
            # the window) has nothing to teach; scikit-learn's binning fails on such a column,
            # so it enters the fit as a constant, which no tree splits on
            Xs = np.where(blank[None, :], 0.0, Xs)
        m = HistGradientBoostingRegressor(
            max_iter=self.max_iter, max_depth=self.max_depth, learning_rate=self.learning_rate,
            min_samples_leaf=5, l2_regularization=0.5, early_stopping=False, random_state=seed % (2**31))
        with torch_core.openmp_threads(self.threads):
            m.fit(Xs, ys[ok])
        return m

    def _predict_model(self, model: Any, X: np.ndarray) -> np.ndarray:
        H = self.horizons
        with torch_core.openmp_threads(self.threads):
            return model.predict(self._stack(X, H)).reshape(len(X), H)


class _TorchNowcaster(NowcastForecaster):
    """Shared training of the neural nowcasters: scaling, masked weighted loss, seeded batches.

    A fresh network and Adam optimiser every fit (`tideflow.strategies.torch_core.train`):
    initial weights and minibatch order from the fit's seed, dropout masks from the
    seed + 1, all in forks of the global generators.

    A missing input (a null feature, a missing lag) is 0 after scaling, the middle of the
    window's (-1, 1) range, in fits and forecasts alike (`_scale_x`); a row with a missing
    target is left out of the loss of that horizon.
    """

    checkable = False

    def __init__(self, *, hidden: int = 128, epochs: int = 10, minibatch: int = 64, lr: float = 1e-3,
                 **kwargs: Any) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.minibatch = minibatch
        self.lr = lr
        super().__init__(**kwargs)

    def params(self) -> dict[str, Any]:
        return {**_base_params(self), "hidden": self.hidden, "epochs": self.epochs,
                "minibatch": self.minibatch, "lr": self.lr}

    def _torch(self) -> Any:
        return torch_core.use_torch(self.torch_threads)

    def _net(self, n_in: int, n_out: int) -> Any:
        raise NotImplementedError

    def _flops_per_example(self, net: Any, n_in: int) -> float:
        return 6.0 * sum(p.numel() for p in net.parameters())

    def _fit_model(self, X: np.ndarray, Y: np.ndarray, W: np.ndarray, seed: int, report: StepReport | None) -> Any:
        torch = self._torch()
        # MinMax(-1, 1) scalers of the inputs and of each horizon's target (released setup)
        flat = X.reshape(-1, X.shape[-1])
        with warnings.catch_warnings():  # a feature without values in the window: NaN, made 0 below
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(np.where(np.isfinite(flat), flat, np.nan), axis=0), np.nanmax(
                np.where(np.isfinite(flat), flat, np.nan), axis=0)
        lo, hi = np.nan_to_num(lo), np.nan_to_num(hi)
        ylo, yhi = np.nanmin(Y, axis=0), np.nanmax(Y, axis=0)
        ylo, yhi = np.nan_to_num(ylo), np.nan_to_num(yhi)
        scaler = (lo, np.maximum(hi - lo, 1e-9), ylo, np.maximum(yhi - ylo, 1e-9))
        x = torch.from_numpy(self._scale_x(X, scaler).astype(np.float32))
        mask = np.isfinite(Y)
        y = torch.from_numpy(np.where(mask, 2 * (np.nan_to_num(Y) - scaler[2]) / scaler[3] - 1, 0.0).astype(np.float32))
        m = torch.from_numpy(mask.astype(np.float32))
        w = torch.from_numpy((W / W.mean()).astype(np.float32))[:, None]
        net = torch_core.build(lambda: self._net(X.shape[-1], Y.shape[1]), seed)

        def loss(idx: Any) -> Any:
            # squared error of the horizons whose target exists, weighted by recency,
            # averaged over the existing targets of the minibatch
            err = (net(x[idx]) - y[idx]) ** 2 * m[idx] * w[idx]
            return err.sum() / m[idx].sum().clamp(min=1.0)

        examples = torch_core.train(
            net, loss, len(x), optimiser=torch_core.adam(net, self.lr),
            generator=torch_core.seeded_generator(seed), minibatch=self.minibatch,
            epochs=self.epochs, dropout_seed=seed + 1,
        )
        if report is not None:
            report.extra["flops"] = report.extra.get("flops", 0.0) + examples * self._flops_per_example(
                net, X.shape[-1])
        return net, scaler

    #: scaled inputs are clipped to this range (see `_scale_x`)
    CLIP = 3.0

    @classmethod
    def _scale_x(cls, X: np.ndarray, scaler: tuple[np.ndarray, ...]) -> np.ndarray:
        """MinMax(-1, 1) with the fit window's ranges; NaN -> 0; clipped to +-``CLIP``.

        The clip is ours: a feature that is constant inside a short window
        (precipitation 0 for two days) has a range of ~0, so a later non-zero value
        would scale to an enormous input and throw the forecast off by as much (short
        Variance Horizon windows make this common). With the clip, values outside the
        window's range count as at most twice beyond its edge.
        """
        z = 2 * (X - scaler[0]) / scaler[1] - 1
        return np.clip(np.where(np.isfinite(z), z, 0.0), -cls.CLIP, cls.CLIP)

    def _predict_model(self, model: Any, X: np.ndarray) -> np.ndarray:
        torch = self._torch()
        net, scaler = model
        with torch.no_grad():
            out = net(torch.from_numpy(self._scale_x(X, scaler).astype(np.float32))).numpy().astype(np.float64)
        return (out + 1) / 2 * scaler[3] + scaler[2]


class NowcastMLP(_TorchNowcaster):
    """Fully connected net h -> h/2 -> h/4 with dropout 0.1 (released setup), one output per horizon.

    Released setup: hidden 2048, 10 epochs, batch 64. Ours: ``hidden`` 128 by default
    (the hidden layers' multiply-adds grow with the square of the width: 2048 wide is
    256 times the cost, too much for a re-fit every batch on CPU); Adam, lr 1e-3.
    """

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 48, "horizons": 2, "lags": 2, "hidden": 16, "epochs": 2}

    def _net(self, n_in: int, n_out: int) -> Any:
        from torch import nn

        h = self.hidden
        return nn.Sequential(
            nn.Linear(n_in, h), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(h, h // 2), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(h // 2, max(h // 4, 1)), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(max(h // 4, 1), n_out),
        )


class NowcastLSTM(_TorchNowcaster):
    """Two-layer LSTM over the last ``sequence`` (6) feature rows, a linear head per horizon.

    Released setup: lookback 6, 2 layers, hidden 2048. Ours: ``hidden`` 32 by default (CPU
    cost, as for the MLP). The sequence is the rows before the forecast row in the history,
    whether or not an hour is missing between them (gaps are 1-5 hours, rare).
    """

    def __init__(self, *, sequence: int = 6, hidden: int = 32, **kwargs: Any) -> None:
        self.sequence = sequence
        super().__init__(hidden=hidden, **kwargs)

    @property
    def context(self) -> int:  # type: ignore[override]
        return self.sequence - 1

    def params(self) -> dict[str, Any]:
        return {**super().params(), "sequence": self.sequence}

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 48, "horizons": 2, "lags": 2, "hidden": 8, "epochs": 2, "sequence": 3}

    def _inputs_at(self, s: _Series, idx: np.ndarray) -> np.ndarray:
        seq = np.asarray(idx)[:, None] + np.arange(-self.sequence + 1, 1)[None, :]
        return s.X[np.maximum(seq, 0)]  # (k, sequence, features); the first rows repeat at the start

    def _net(self, n_in: int, n_out: int) -> Any:
        import torch
        from torch import nn

        hidden = self.hidden

        class LSTMHead(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = nn.LSTM(n_in, hidden, num_layers=2, batch_first=True)
                self.head = nn.Linear(hidden, n_out)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out, _ = self.rnn(x)
                return self.head(out[:, -1])

        return LSTMHead()

    def _flops_per_example(self, net: Any, n_in: int) -> float:
        h = self.hidden
        per_step = 4 * h * (n_in + h) + 4 * h * (h + h)  # the two layers' gate multiply-adds
        return 6.0 * (self.sequence * per_step + h * self.horizons)
