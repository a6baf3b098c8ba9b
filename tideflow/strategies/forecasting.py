"""The link-load forecasters: the incremental-learning baseline and its controls (arXiv 2404.05304).

These are the incremental-learning (IL) side and the controls of the comparison in
"Liquid Neural Network-based Adaptive Learning vs. Incremental Learning for Link
Load Prediction amid Concept Drift due to Network Failures" (arXiv 2404.05304);
the liquid side lives in `tideflow.strategies.liquid`. The setting they share (task,
series, rows of a batch, pretraining, normalisation, training, determinism,
accounting) is `tideflow.strategies.window_forecaster.WindowForecaster`, documented
there and re-exported here; what the paper leaves open is in ``docs/methods/liquid.md``.

Forecasters: `Persistence` (last value, no fitting), `FrozenMLP` and `FrozenGRU`
(fitted once at pretraining, never updated: controls), `IncrementalRefit` (the
paper's IL baseline: an MLP re-fitted every ``refit_every`` = B new samples on the
latest ``refit_window`` samples).

>>> import numpy as np
>>> from tideflow.stream.batch import Batch
>>> from tideflow.stream.schema import Schema
>>> f = IncrementalRefit(window=4, pretrain_steps=40, refit_every=20, epochs=2, hidden=8)
>>> f.bind(Schema({"y": "float64"}, target="y"))
>>> y = np.sin(np.arange(100) / 4)
>>> f.learn(Batch.from_pydict({"y": y})).fits  # at samples 40, 60, 80 and 100
4
>>> len(f.predict(Batch.from_pydict({"y": [0.1, 0.2]}, first_offset=100)))
2
"""

from __future__ import annotations

from typing import Any

from tideflow.strategies.window_forecaster import Series, WindowForecaster

__all__ = [
    "FrozenGRU",
    "FrozenMLP",
    "IncrementalRefit",
    "Persistence",
    "WindowForecaster",
]


def mlp(window: int, hidden: int) -> Any:
    """The IL/control MLP: W inputs, two ReLU layers of ``hidden`` units, one output."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(window, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 1),
    )


class _GRUNet:
    """Factory of the GRU control: a one-layer GRU over the window, a linear head on its end."""

    @staticmethod
    def build(hidden: int) -> Any:
        import torch
        from torch import nn

        class GRUForecaster(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = nn.GRU(1, hidden, batch_first=True)
                self.head = nn.Linear(hidden, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out, _ = self.rnn(x.unsqueeze(-1))
                return self.head(out[:, -1])

        return GRUForecaster()


class Persistence(WindowForecaster):
    """Reference forecaster: the next value is the last one (no model, never fitted).

    The forecast is `tideflow.strategies.series.persistence` (as for `NowcastPersistence
    <tideflow.strategies.nowcast.NowcastPersistence>` and for every model here before its
    first fit). A series without history is forecast by the mean of every target value
    learned so far (0.0 before any).
    """

    def __init__(self, *, target: str | None = None, key: str | None = None,
                 features: list[str] | None = None, within_batch: str = "observed") -> None:
        super().__init__(target=target, key=key, features=features, window=1, pretrain_steps=2,
                         within_batch=within_batch, torch_threads=None)

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"within_batch": "recursive"}

    def _history_cap(self) -> int:
        return 1

    def _next_event(self, s: Series) -> int | None:
        return None


class FrozenMLP(WindowForecaster):
    """Control: the IL MLP (see `mlp`), fitted once at pretraining and never updated.

    Same inputs, normalisation and training as `IncrementalRefit`'s first fit.
    """

    def _new_net(self) -> Any:
        return mlp(self.window, self.hidden)

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 4, "pretrain_steps": 40, "epochs": 2, "hidden": 8,
                "within_batch": "recursive"}


class FrozenGRU(WindowForecaster):
    """Control: a one-layer GRU (``hidden`` units) read out after the W-step window by a
    linear layer, fitted once at pretraining and never updated.

    A conventional recurrent net trained exactly like the liquid network in
    ``mode="window"``, to tell what is due to liquid dynamics from what is due to
    recurrence.
    """

    def __init__(self, *, target: str | None = None, key: str | None = None,
                 features: list[str] | None = None, window: int = 16, normalisation: str = "global",
                 pretrain_steps: int = 1344, epochs: int = 20, lr: float = 3e-3, hidden: int = 32,
                 minibatch: int = 32, within_batch: str = "observed", seed: int = 0,
                 torch_threads: int | None = 1, per_event: bool = False) -> None:
        super().__init__(target=target, key=key, features=features, window=window,
                         normalisation=normalisation, pretrain_steps=pretrain_steps, epochs=epochs,
                         lr=lr, hidden=hidden, minibatch=minibatch, within_batch=within_batch,
                         seed=seed, torch_threads=torch_threads, per_event=per_event)

    def _new_net(self) -> Any:
        return _GRUNet.build(self.hidden)

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 4, "pretrain_steps": 40, "epochs": 2, "hidden": 8,
                "within_batch": "recursive"}


class IncrementalRefit(WindowForecaster):
    """The paper's incremental-learning (IL) baseline: an MLP re-fitted every B new samples.

    Fitted at pretraining like `FrozenMLP`; then at every sample count
    ``pretrain_steps + k * refit_every`` it is re-fitted on the latest ``refit_window``
    samples (default ``pretrain_steps``), with its scaler (global normalisation) refitted
    on them too. After n samples it has made ``1 + (n - pretrain_steps) // refit_every``
    fits.

    Args:
        refit_every: B, new samples between re-fits (the paper's "batch"; larger B =
            less frequent re-fitting).
        refit_window: samples a re-fit trains on (default ``pretrain_steps``).
        warm_start: True (default): a re-fit continues training the current weights for
            ``epochs`` epochs (incremental learning in the usual sense, and what lets a
            small B track a shift without forgetting the pattern); False: from scratch
            with new initial weights each time.
        per_event: each row predicted by the model re-fitted at every due count before it, as
            with transport batches of one row (`WindowForecaster`; default: re-fits due inside
            a batch serve the rows after the batch).
        (other arguments: `WindowForecaster`)
    """

    def __init__(self, *, target: str | None = None, key: str | None = None,
                 features: list[str] | None = None, window: int = 16, normalisation: str = "global",
                 pretrain_steps: int = 1344, refit_every: int = 96, refit_window: int | None = None,
                 warm_start: bool = True, epochs: int = 20, lr: float = 3e-3, hidden: int = 64,
                 minibatch: int = 32, within_batch: str = "observed", seed: int = 0,
                 torch_threads: int | None = 1, per_event: bool = False) -> None:
        super().__init__(target=target, key=key, features=features, window=window,
                         normalisation=normalisation, pretrain_steps=pretrain_steps, epochs=epochs,
                         lr=lr, hidden=hidden, minibatch=minibatch, within_batch=within_batch,
                         seed=seed, torch_threads=torch_threads, per_event=per_event)
        if refit_every < 1:
            raise ValueError(f"refit_every must be at least 1, got {refit_every}")
        if refit_window is not None and refit_window <= window:
            raise ValueError(f"refit_window ({refit_window}) must exceed window ({window})")
        self.refit_every = refit_every
        self.refit_window = refit_window
        self.warm_start = warm_start

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window": 4, "pretrain_steps": 40, "refit_every": 48, "epochs": 2, "hidden": 8,
                "within_batch": "recursive"}

    def _new_net(self) -> Any:
        return mlp(self.window, self.hidden)

    def _refit_samples(self) -> int:
        return self.pretrain_steps if self.refit_window is None else self.refit_window

    def _history_cap(self) -> int:
        return max(super()._history_cap(), self._refit_samples())

    def _next_event(self, s: Series) -> int | None:
        if s.model is None:
            return self.pretrain_steps
        return s.last_fit_at + self.refit_every

    def _on_event(self, s: Series) -> None:
        if s.model is None:
            super()._on_event(s)
            return
        data = s.history[-self._refit_samples():]
        self._fit(s, data, refit_scaler=True, warm_start=self.warm_start)
