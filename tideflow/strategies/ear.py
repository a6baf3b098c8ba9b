"""EAR (Encoder-Adaptor-Reconfigurator, arXiv 2308.02084) as a continual learner.

A frozen encoder, small adaptors grown on it when the data move out of distribution, and routing
of every row to the adaptor whose hyperdimensional (HDC) memory matches it best. The paper, our
reconstruction and where we depart from it: docs/methods/ear.md. `tideflow.stream.hdc` holds the
HDC space and memories, `tideflow.strategies.ear_core` the networks, search space and proxies.

* **Encoder.** ``encoder=(256, 128)``: an MLP on the flattened input, trained with a linear head
  on the first task (until the first task boundary, drift event or ``freeze_after`` batches), then
  frozen; its head becomes expert 0 (``first_expert="head"``), or (``"adaptor"``) an adaptor chosen
  and trained on the first task's rows as a grown expert would have been, batch by batch (its
  training counts in the next report). ``encoder=None``: the inputs are a frozen encoder's
  features already (an `ImageStream` with ``encoder="efficientnet-lite0"``); expert 0 grows on
  the first batch.
* **Memories** on one shared projection (`HDCSpace`, fitted on the first task: similarities in
  different experts' own feature spaces would not be comparable) of the input and the encoder's
  features side by side, each weighing alike (``hdc_layers``; HDFF fuses layers the same way):
  class prototypes by bundling, a threshold at the ``quantile`` of leave-one-out scores of the
  expert's last ``window`` rows (`HDCMemory`). An expert's memory takes in every row it learns.
* **Growth.** A batch is out of distribution when more than ``vote`` of its rows score below every
  expert's threshold. Then, while fewer than ``max_experts`` exist, a new expert (adaptor and head)
  is chosen from ``widths`` x ``depths`` within the budget (``budget`` times the encoder's
  parameters, or ``max_params``) by the zero-shot ``proxy`` on the batch at initialisation, and an
  event (detector ``"EAR"``, value: the share out of distribution) goes to the other learn steps.
  ``max_experts=1``: no growth, expert 0 fine-tuned on every task in turn; with
  ``first_expert="adaptor"`` (or ``encoder=None``) that is sequential fine-tuning of one adaptor.
* **Routing.** A row goes to the expert with the highest memory score (``routing="max"``) or the
  highest score above its threshold (``"margin"``); a batch is learned by its rows' majority expert.
* **Training.** At every batch the expert (before the freeze: the encoder with its head) makes
  ``epochs`` passes over its current task's last ``window`` rows, this batch's included, so that a
  task's later batches do not wash out its earlier ones; a task boundary drops them: no row of an
  ended task is trained on again (the baseline trains the same way).
* **Reconfigurator.** A class new to an expert after that expert's task ended (a task boundary)
  gets a new head on its adaptor; the adaptor and older heads are frozen from then on (rows of
  their classes are counted in ``StepReport.skipped["class_of_frozen_head"]``). A row's heads are
  weighed by its HDC similarity to their classes' prototypes (softmax at `HEAD_TEMPERATURE`), so
  scores are probabilities over the expert's classes and task-IL masking finds each head's; a
  small share (`SOFT_SHARE`) of the other experts' scores is added for task-IL masking.

Invariants: rows the learner cannot use (null label, a label outside ``0 .. n_classes - 1``, a NaN
or infinite input) are counted in ``StepReport.skipped``, never dropped in silence. Initial weights
come from `torch_core.build` (every candidate of every growth its own seed), minibatch order from
the strategy's generator, and the HDC arithmetic is exact: a seed gives the same model whatever
else ran. The snapshot holds everything that decides the future (encoder, experts and which parts
are frozen, optimisers, memories, the rows each expert trains on, the first task's rows while the
encoder learns, the generator, the growth record). ``parameter_counts()`` gives the encoder's and
each expert's trained parameters; HDC prototypes (sums of signs, not trained) are counted apart.

Compute (``StepReport.extra``): ``train_rows`` (rows times passes); ``flops``: 6 per trained weight
and row-pass, 2 per frozen weight and row (encoder, HDC projection, cosines, proxy candidates);
``ood_share``: the batch's share of rows out of distribution for every expert.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.stream.hdc import DEFAULT_DIM, HDCMemory, HDCSpace, stored_array
from tideflow.strategies import torch_core
from tideflow.strategies.base import ClassScores, SchemaError, StepReport, Strategy, class_labels
from tideflow.strategies.ear_core import (HDC_LAYERS, HEAD_TEMPERATURE, ROUTINGS, adaptor_params, as_tensors,
                                          candidates, check_params, choose_adaptor, encode_rows, encoder_network,
                                          expert_optimiser, expert_probs, input_rows, load_expert, new_head,
                                          plain_meta, routed_probs, train_on_classes, window_sizes)

__all__ = ["EAR", "HDC_LAYERS", "HEAD_TEMPERATURE", "ROUTINGS"]

#: scores: the routed expert's probabilities plus this share of all experts' (weighed by a softmax of
#: memory scores at `ROUTE_TEMPERATURE`): a class the routed expert never learned stays below its best
#: (>= 1 / classes), while under task-IL masking to such classes the experts that learned them decide
SOFT_SHARE, ROUTE_TEMPERATURE = 1e-3, 0.01
#: rows per forward pass when predicting (bounds memory on long held-out sets)
PREDICT_CHUNK = 4096


class EAR(Strategy):
    """Encoder-Adaptor-Reconfigurator with an HDC out-of-distribution detector (module docstring).

    Args:
        n_classes: labels are integers ``0 .. n_classes - 1``.
        encoder: MLP widths trained on the first task and then frozen; a callable
            ``input_shape -> nn.Module`` mapping ``(B, *shape)`` to ``(B, d)`` (a small CNN);
            None: the inputs are a frozen encoder's features already.
        freeze_after: freeze the encoder after this many batches even if no boundary came.
        dim: size of the hypervectors.
        quantile, window: an expert's threshold: this quantile of its last ``window`` rows'
            leave-one-out scores.
        vote: a batch is out of distribution when more than this share of its rows are.
        widths, depths: the adaptors' search space.
        budget: the most parameters a new expert (adaptor and head) may have, as a share of the
            encoder's; ``max_params``: as a number (needed with ``encoder=None``).
        proxy: the zero-shot proxy that picks the adaptor (`tideflow.strategies.ear_core.PROXIES`).
        validate_proxy: when > 0, every growth also trains each candidate for that many steps on
            half the batch and records how the proxy's ranking agrees (Spearman) in
            ``growth_log`` (costs one short training per candidate).
        max_experts: experts at most (1: expert 0 fine-tuned sequentially).
        first_expert: ``"head"``: expert 0 is the encoder's head; ``"adaptor"``: an adaptor of the
            search space, trained like a grown expert on the first task's rows at the freeze.
        grow_on_drift: a drift event from elsewhere makes the next batch grow an expert.
        routing: ``"max"`` or ``"margin"`` (module docstring).
        hdc_layers: ``"input+features"``: the HDC space fuses the input and the encoder's features
            (each weighing alike); ``"features"``: the features alone. Without an encoder both
            are the input.
        epochs, minibatch, lr: passes over the expert's current-task rows (at most ``window``) at
            every batch, rows per step, Adam's rate for experts.
        encoder_lr: Adam's rate while the encoder learns.
        seed, device, torch_threads, target, features: as for every torch strategy.
    """

    problem = "classification"

    def __init__(self, n_classes: int, *, encoder: Sequence[int] | Callable[..., Any] | None = (256, 128),
                 freeze_after: int | None = None, dim: int = DEFAULT_DIM, quantile: float = 0.05,
                 window: int = 512, vote: float = 0.25, widths: Sequence[int] = (4, 8, 12, 16, 24, 32),
                 depths: Sequence[int] = (1, 2), budget: float = 0.05, max_params: int | None = None,
                 proxy: str = "ridge", validate_proxy: int = 0, max_experts: int = 16, first_expert: str = "head",
                 grow_on_drift: bool = False,
                 routing: str = "max", hdc_layers: str = "input+features", epochs: int = 5, minibatch: int = 32, lr: float = 1e-2,
                 encoder_lr: float = 1e-3, seed: int = 0, device: str | None = None, torch_threads: int | None = 1,
                 target: str | None = None, features: list[str] | None = None) -> None:
        check_params(n_classes=n_classes, proxy=proxy, routing=routing, hdc_layers=hdc_layers, encoder=encoder,
                     max_params=max_params, budget=budget, freeze_after=freeze_after, max_experts=max_experts,
                     first_expert=first_expert,
                     epochs=epochs, minibatch=minibatch, validate_proxy=validate_proxy, vote=vote, widths=widths,
                     depths=depths)
        HDCMemory(max(2, int(dim)), window=window, quantile=quantile)  # checks window and quantile
        self.n_classes = int(n_classes)
        self.encoder = encoder if encoder is None or callable(encoder) else tuple(int(w) for w in encoder)
        self.freeze_after = freeze_after
        self.dim, self.quantile, self.window, self.vote = int(dim), float(quantile), int(window), float(vote)
        self.widths, self.depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        self.budget, self.max_params, self.proxy, self.validate_proxy = budget, max_params, proxy, int(validate_proxy)
        self.max_experts, self.grow_on_drift, self.routing = int(max_experts), bool(grow_on_drift), routing
        self.first_expert = first_expert
        self.hdc_layers = hdc_layers
        self.epochs, self.minibatch, self.lr, self.encoder_lr = int(epochs), int(minibatch), float(lr), float(encoder_lr)
        self.seed, self.device, self.torch_threads = int(seed), device, torch_threads
        self.target = target
        self.features = list(features) if features is not None else None
        self._reset()

    def _reset(self) -> None:
        self.input_shape: tuple[int, ...] | None = None
        self._encoder: Any = None  # None: not built, or no encoder (identity)
        self._head0: Any = None  # the encoder's head while the encoder learns
        self._encoder_optimiser: Any = None
        self._generator: Any = None
        self.frozen = False
        self.feature_dim = 0
        self.encoder_params = 0
        self.encoder_classes: list[int] = []
        self._window_x: np.ndarray | None = None  # the first task's last rows, while the encoder learns
        self._window_y = np.zeros(0, dtype=np.int64)
        self._window_sizes: list[int] = []  # the batches those rows came in, oldest first
        self._pending: dict[str, float] = {}  # compute spent at a freeze outside `learn`: the next report's
        self._space: HDCSpace | None = None
        self._experts: list[Any] = []
        self._optimisers: list[Any] = []
        self._memories: list[HDCMemory] = []
        self._train_f: list[np.ndarray] = []  # per expert: features of its current task's last rows
        self._train_y: list[np.ndarray] = []
        self.meta: list[dict[str, Any]] = []  # per expert: width, depth, params, heads (classes, open)
        self.growth_log: list[dict[str, Any]] = []
        self.n_batches = 0
        self.n_learned = 0
        self.encoder_batches = 0
        self.reconfigured = 0
        self.drift_events = 0
        self._grow_next = False

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"n_classes": 2, "encoder": (8, 4), "freeze_after": 1, "dim": 256, "window": 64, "widths": (2, 4),
                "depths": (1,), "max_params": 40, "epochs": 2}

    # -- inputs ----------------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        assert self.features is not None
        x = input_rows(batch, self.features, images=callable(self.encoder))
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise SchemaError(f"EAR: inputs of shape {tuple(x.shape[1:])}, but the model was built for "
                              f"{self.input_shape} (features {self.features})")
        return x, np.isfinite(x.reshape(len(x), -1)).all(axis=1)

    def _labels(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        assert self.target is not None
        return class_labels(batch, self.target, self.n_classes, "EAR")

    # -- building --------------------------------------------------------------------------
    def _build(self, shape: tuple[int, ...]) -> None:
        torch_core.set_threads(self.torch_threads)
        device = torch_core.choose_device(self.device)
        self.input_shape = shape
        self._generator = torch_core.seeded_generator(torch_core.fit_seed(self.seed, 1))
        if self.encoder is None:
            self.feature_dim = int(np.prod(shape))
            self.frozen = True
        else:
            self._build_encoder(shape, device)
        if not candidates(self.feature_dim, self.n_classes, self.widths, self.depths, self.expert_budget):
            raise ValueError(f"EAR: no adaptor of widths {self.widths} and depths {self.depths} fits in "
                             f"{self.expert_budget} parameters (with a head to {self.n_classes} classes on "
                             f"{self.feature_dim} features): raise budget or max_params, or allow smaller widths")

    def _build_encoder(self, shape: tuple[int, ...], device: Any) -> None:
        torch = torch_core.use_torch(self.torch_threads)
        n_inputs = int(np.prod(shape))
        self._encoder = torch_core.build(lambda: encoder_network(n_inputs, self.encoder, shape), self.seed).to(device)
        with torch.no_grad():
            probe = torch.zeros((1, *shape), device=device)
            self.feature_dim = int(self._encoder(probe).reshape(1, -1).shape[1])
        self.encoder_params = sum(p.numel() for p in self._encoder.parameters())
        self._head0 = torch_core.build(lambda: torch.nn.Linear(self.feature_dim, self.n_classes),
                                       torch_core.fit_seed(self.seed, 2)).to(device)
        self._encoder_optimiser = torch.optim.Adam(list(self._encoder.parameters()) + list(self._head0.parameters()),
                                                   lr=self.encoder_lr)
        self._window_x = np.zeros((0, *shape), dtype=np.float32)

    @property
    def expert_budget(self) -> int:
        """The most parameters a new expert (adaptor and head) may have."""
        if self.max_params is not None:
            return int(self.max_params)
        return int(self.budget * self.encoder_params)

    def _device(self) -> Any:
        return torch_core.choose_device(self.device)

    def encoded(self, x: np.ndarray) -> np.ndarray:
        """The encoder's features ``(n, d)`` (float32) of inputs ``x`` shaped as ``input_shape``; no side effects."""
        if self._encoder is None:
            return x.reshape(len(x), -1).astype(np.float32, copy=False)
        if not len(x):
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        torch_core.set_threads(self.torch_threads)
        return encode_rows(self._encoder, x, self._device(), PREDICT_CHUNK)

    def _freeze(self, task_ended: bool) -> None:
        """The encoder stops learning; its head (or an adaptor, ``first_expert``) becomes expert 0,
        whose memory is built from the first task's rows kept in the window."""
        if self.frozen or self._encoder is None or self._window_x is None or not len(self._window_x):
            return
        torch = torch_core.use_torch(self.torch_threads)
        self._encoder.eval()
        for p in self._encoder.parameters():
            p.requires_grad_(False)
        f = self.encoded(self._window_x)
        rows = self._hdc_rows(self._window_x, f)
        blocks = [rows.shape[1] - f.shape[1], f.shape[1]] if rows.shape[1] > f.shape[1] else None
        self._space = HDCSpace.fit(rows, self.dim, self.seed, blocks=blocks)
        if self.first_expert == "adaptor":
            self._first_adaptor(f, self._space.encode(rows), task_ended)
        else:
            expert = torch.nn.ModuleDict({"adaptor": torch.nn.Sequential(), "heads": torch.nn.ModuleList([self._head0])})
            self._add_expert(expert, width=self.feature_dim, depth=0, classes=list(self.encoder_classes),
                             open_=not task_ended)
            self._memories[0].add(self._space.encode(rows), self._window_y)
            self._memories[0].calibrate()
            if not task_ended:  # the first task goes on: expert 0 keeps training on its rows
                self._train_f[0], self._train_y[0] = f, self._window_y.copy()
        self.frozen = True
        self._head0, self._encoder_optimiser = None, None
        self._window_x, self._window_y, self._window_sizes = None, np.zeros(0, dtype=np.int64), []

    def _first_adaptor(self, f: np.ndarray, h: np.ndarray, task_ended: bool) -> None:
        """Expert 0 as an adaptor, grown by the proxy on the first batch in the window and trained
        on the window's batches in arrival order by `_learn_expert`, as a grown expert is: the
        control then differs from EAR's experts only in being one (the encoder's head is dropped).
        Its compute waits in ``_pending`` for the next report: a boundary has none of its own."""
        y, ends = self._window_y, np.cumsum(self._window_sizes)
        _, flops = self._grow(f[:ends[0]], y[:ends[0]])
        extra: dict[str, float] = {"train_rows": 0.0, "flops": flops}
        for start, end in zip([0, *ends[:-1]], ends):  # one open head: nothing is skipped
            self._learn_expert(0, f[start:end], y[start:end], h[start:end], extra, {})
        self._pending = {k: self._pending.get(k, 0.0) + v for k, v in extra.items()}
        if task_ended:  # as at a boundary: the head closes, its rows are not trained on again
            self.meta[0]["heads"][0]["open"] = False
            self._train_f[0], self._train_y[0] = self._train_f[0][:0], self._train_y[0][:0]

    def _add_expert(self, expert: Any, *, width: int, depth: int, classes: list[int], open_: bool) -> int:
        self._experts.append(expert)
        self.meta.append({"width": int(width), "depth": int(depth),
                          "params": adaptor_params(self.feature_dim, width, depth, self.n_classes),
                          "heads": [{"classes": sorted(int(c) for c in classes), "open": bool(open_)}]})
        self._memories.append(HDCMemory(self.dim, window=self.window, quantile=self.quantile))
        self._train_f.append(np.zeros((0, self.feature_dim), dtype=np.float32))
        self._train_y.append(np.zeros(0, dtype=np.int64))
        self._optimisers.append(self._optimiser_for(len(self._experts) - 1))
        return len(self._experts) - 1

    def _optimiser_for(self, k: int) -> Any:
        return expert_optimiser(self._experts[k], self.lr)

    def _grow(self, f: np.ndarray, y: np.ndarray) -> tuple[int, float]:
        """A new expert chosen by the proxy on rows ``f``, ``y``; returns its index and the flops spent."""
        k = len(self._experts)
        net, (w, depth, n_params), record, flops = choose_adaptor(
            f, y, n_classes=self.n_classes, widths=self.widths, depths=self.depths, budget=self.expert_budget,
            proxy=self.proxy, seed=lambda i: torch_core.fit_seed(self.seed, 1000 * (k + 1) + i),
            validate_steps=self.validate_proxy, validate_seed=torch_core.fit_seed(self.seed, k))
        record["expert"] = k
        self.growth_log.append(record)
        self._add_expert(net.to(self._device()), width=w, depth=depth, classes=[], open_=True)
        return k, flops

    # -- scoring ---------------------------------------------------------------------------
    def _hdc_rows(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        """What the HDC space projects: the features, or the flattened input beside them."""
        if self.hdc_layers == "features" or self._encoder is None:
            return f
        return np.concatenate([x.reshape(len(x), -1).astype(np.float32, copy=False), f], axis=1)

    def _hypervectors(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        return self._space.encode(self._hdc_rows(x, f))  # type: ignore[union-attr]

    def _memory_scores(self, h: np.ndarray) -> np.ndarray:
        """``(n, experts)``: each row's HDC score against each expert's memory."""
        return np.stack([m.scores(h) for m in self._memories], axis=1) if self._memories else np.zeros((len(h), 0))

    def _route_scores(self, scores: np.ndarray) -> np.ndarray:
        margin = self.routing == "margin"
        return scores - np.array([m.threshold if margin and m.calibrated else 0.0 for m in self._memories])

    def _route(self, scores: np.ndarray) -> np.ndarray:
        return self._route_scores(scores).argmax(axis=1)

    def _probs(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, n_classes)`` of inputs ``x``: the routed expert's (module docstring),
        or while the encoder learns, its head's."""
        torch = torch_core.use_torch(self.torch_threads)
        f = self.encoded(x)
        if not self.frozen:
            expert = torch.nn.ModuleDict({"adaptor": torch.nn.Sequential(), "heads": torch.nn.ModuleList([self._head0])})
            return expert_probs(expert, [{"classes": self.encoder_classes}], None, f, None, self.n_classes,
                                self._device())
        h = self._hypervectors(x, f)
        scores = self._route_scores(self._memory_scores(h))
        each = np.stack([expert_probs(e, m["heads"], mem, f, h, self.n_classes, self._device())
                         for e, m, mem in zip(self._experts, self.meta, self._memories)])
        return routed_probs(each, scores, SOFT_SHARE, ROUTE_TEMPERATURE)

    @property
    def classes(self) -> list[int]:
        """Every class some head (or the learning encoder) has learned, sorted."""
        heads = [h for m in self.meta for h in m["heads"]] if self.frozen else [{"classes": self.encoder_classes}]
        return sorted({int(c) for head in heads for c in head["classes"]})

    # -- the contract ----------------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        if not len(batch):
            return StepReport()
        self._check_columns(batch, need_target=True)
        start = time.perf_counter()
        x, finite = self._inputs(batch)
        y, use, skipped = self._labels(batch)
        if (use & ~finite).any():
            skipped["non_finite_features"] = int((use & ~finite).sum())
        use &= finite
        report = StepReport(samples=len(batch), skipped=skipped)
        if not use.any():
            return report
        offsets = batch.offsets[use]
        x, y = x[use], y[use]
        if self.input_shape is None:
            self._build(tuple(x.shape[1:]))
        extra: dict[str, float] = {"train_rows": 0.0, "flops": 0.0}
        if not self.frozen:
            self._learn_encoder(x, y, extra)
        else:
            self._learn_frozen(batch, x, y, offsets, extra, report)
        for key, value in self._pending.items():
            extra[key] = extra.get(key, 0.0) + value
        self._pending = {}
        self.n_batches += 1
        self.n_learned += len(x)
        report.fits = 1
        report.train_seconds = time.perf_counter() - start
        report.extra = extra
        return report

    def _learn_encoder(self, x: np.ndarray, y: np.ndarray, extra: dict[str, float]) -> None:
        torch = torch_core.use_torch(self.torch_threads)
        device = self._device()
        self.encoder_classes = sorted(set(self.encoder_classes) | {int(c) for c in np.unique(y)})
        assert self._window_x is not None
        self._window_x = np.concatenate([self._window_x, x])[-self.window:]
        self._window_y = np.concatenate([self._window_y, y])[-self.window:]
        self._window_sizes = window_sizes(self._window_sizes + [len(y)], self.window)
        # the first task's last rows, this batch's included: what the encoder trains on
        net = torch.nn.Sequential(self._encoder, torch.nn.Flatten(), self._head0)
        rows = train_on_classes(net, net, self._window_x, self._window_y, self.encoder_classes, self.n_classes,
                                optimiser=self._encoder_optimiser, generator=self._generator,
                                minibatch=self.minibatch, epochs=self.epochs, device=device)
        n_params = self.encoder_params + sum(p.numel() for p in self._head0.parameters())
        extra["train_rows"] += rows
        extra["flops"] += 6.0 * n_params * rows
        self.encoder_batches += 1
        if self.freeze_after is not None and self.encoder_batches >= self.freeze_after:
            self._freeze(task_ended=False)

    def _learn_frozen(self, batch: Batch, x: np.ndarray, y: np.ndarray, offsets: np.ndarray,
                      extra: dict[str, float], report: StepReport) -> None:
        f = self.encoded(x)
        extra["flops"] += 2.0 * self.encoder_params * len(x)
        if self._space is None:  # no encoder: the space is centred on the first batch's features
            self._space = HDCSpace.fit(f, self.dim, self.seed)
        h = self._hypervectors(x, f)
        extra["flops"] += 2.0 * self._space.d * self.dim * len(x)
        if not self._experts:
            k, flops = self._grow(f, y)
            extra["flops"] += flops
        else:
            scores = self._memory_scores(h)
            extra["flops"] += 2.0 * self.dim * sum(len(m.classes) for m in self._memories) * len(x)
            below = np.ones(len(h), dtype=bool)
            for j, m in enumerate(self._memories):
                below &= scores[:, j] < m.threshold
            share = float(below.mean())
            extra["ood_share"] = share
            if (share > self.vote or self._grow_next) and len(self._experts) < self.max_experts:
                k, flops = self._grow(f, y)
                extra["flops"] += flops
                first = int(offsets[below][0]) if below.any() else int(offsets[0])
                report.events.append(DriftEvent(batch.stream_id, first, "EAR", ",".join(self.features or []), "",
                                                share))
            else:
                k = int(np.bincount(self._route(scores), minlength=len(self._experts)).argmax())
        self._grow_next = False
        self._learn_expert(k, f, y, h, extra, report.skipped)

    def _learn_expert(self, k: int, f: np.ndarray, y: np.ndarray, h: np.ndarray, extra: dict[str, float],
                      skipped: dict[str, int]) -> None:
        torch_core.set_threads(self.torch_threads)
        heads = self.meta[k]["heads"]
        known = {c for head in heads for c in head["classes"]}
        new = sorted({int(c) for c in np.unique(y)} - known)
        if new and heads[-1]["open"]:
            heads[-1]["classes"] = sorted(heads[-1]["classes"] + new)
        elif new:  # a reconfigurator: a new head on the adaptor, the rest frozen
            expert = self._experts[k]
            expert["heads"].append(new_head(expert, self.n_classes,
                                            torch_core.fit_seed(self.seed, 1000 * (k + 1) + 500 + len(heads))).to(self._device()))
            heads.append({"classes": new, "open": True})
            self.meta[k]["params"] += sum(p.numel() for p in expert["heads"][-1].parameters())
            self._optimisers[k] = self._optimiser_for(k)
            self.reconfigured += 1
        memory = self._memories[k]
        memory.add(h, y)
        memory.calibrate()
        trainable = heads[-1]["classes"]
        ok = np.isin(y, trainable)
        if (~ok).any():
            skipped["class_of_frozen_head"] = skipped.get("class_of_frozen_head", 0) + int((~ok).sum())
        if not ok.any():
            return
        # the expert trains on its current task's last rows, this batch's included (module docstring);
        # after a reconfigurator, rows of older heads' classes leave
        f = np.concatenate([self._train_f[k], f[ok]])[-self.window:]
        y = np.concatenate([self._train_y[k], y[ok]])[-self.window:]
        keep = np.isin(y, trainable)
        self._train_f[k], self._train_y[k] = f[keep], y[keep]
        expert = self._experts[k]
        head = expert["heads"][len(heads) - 1]
        rows = train_on_classes(expert, lambda v: head(expert["adaptor"](v)), f[keep], y[keep], trainable,
                                self.n_classes, optimiser=self._optimisers[k], generator=self._generator,
                                minibatch=self.minibatch, epochs=self.epochs, device=self._device())
        trained = sum(p.numel() for p in expert.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in expert["adaptor"].parameters() if not p.requires_grad)
        extra["train_rows"] += rows
        extra["flops"] += (6.0 * trained + 2.0 * frozen) * rows

    def predict(self, batch: Batch) -> pa.Array:
        """The most probable class of each row (module docstring); null before anything was learned
        and for rows with a NaN or infinite input."""
        if not len(batch):
            return pa.array([], type=pa.int64())
        scores = self.predict_scores(batch)
        if not scores.classes:
            return pa.array([None] * len(batch), type=pa.int64())
        best = np.asarray(scores.classes, dtype=np.int64)[np.argmax(np.nan_to_num(scores.scores, nan=-1.0), axis=1)]
        return pa.array(best, type=pa.int64(), mask=~np.isfinite(scores.scores).all(axis=1))

    def predict_scores(self, batch: Batch) -> ClassScores:
        """Probabilities over the classes learned so far (a row's routed expert's heads)."""
        self._check_columns(batch, need_target=False)
        classes = self.classes
        if not len(batch) or not classes:
            if len(batch):
                self._inputs(batch)
            return ClassScores(np.zeros((len(batch), len(classes))), classes)
        x, finite = self._inputs(batch)
        out = np.full((len(batch), len(classes)), np.nan)
        if finite.any():
            out[finite] = self._probs(x[finite])[:, classes]
        return ClassScores(out, classes)

    def route(self, batch: Batch) -> np.ndarray:
        """Each row's expert (-1 before the freeze and for rows with a NaN or infinite input); pure."""
        scores = self.ood_scores(batch)
        out = np.full(len(batch), -1, dtype=np.int64)
        ok = np.isfinite(scores).all(axis=1) if scores.shape[1] else np.zeros(len(batch), dtype=bool)
        if ok.any():
            out[ok] = self._route(scores[ok])
        return out

    def ood_scores(self, batch: Batch) -> np.ndarray:
        """Each row's HDC score against each expert's memory, ``(n, experts)`` (higher: more in
        distribution; NaN for rows with a NaN or infinite input); no side effects."""
        self._check_columns(batch, need_target=False)
        out = np.full((len(batch), len(self._experts)), np.nan)
        if not len(batch) or not self._experts:
            return out
        x, finite = self._inputs(batch)
        if finite.any():
            xf = x[finite]
            out[finite] = self._memory_scores(self._hypervectors(xf, self.encoded(xf)))
        return out

    def parameter_counts(self) -> dict[str, Any]:
        """Trained parameters: the encoder's, each expert's (adaptor and heads), and the HDC
        prototypes' values per expert, which are sums of signs and not trained."""
        return {"encoder": int(self.encoder_params), "experts": [int(m["params"]) for m in self.meta],
                "memory_values": [int(len(m.classes) * self.dim) for m in self._memories]}

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        """The first boundary freezes the encoder; every boundary closes the experts' open heads
        (a class new to an expert after this gets a reconfigurator head)."""
        if not self.frozen:
            self._freeze(task_ended=True)
            return
        for m in self.meta:
            for head in m["heads"]:
                head["open"] = False
        for k in range(len(self._experts)):  # rows of an ended task are not trained on again
            self._train_f[k] = self._train_f[k][:0]
            self._train_y[k] = self._train_y[k][:0]

    def on_drift(self, event: DriftEvent) -> None:
        """A drift event from elsewhere (an `HDCDetector` upstream, another learner): freezes an
        encoder that still learns; with ``grow_on_drift``, the next batch grows an expert."""
        self.drift_events += 1
        if not self.frozen:
            self._freeze(task_ended=True)
        elif self.grow_on_drift:
            self._grow_next = True

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "built": self.input_shape is not None, "input_shape": list(self.input_shape or []), "frozen": self.frozen,
            "encoder_classes": list(self.encoder_classes), "meta": plain_meta(self.meta),
            "growth_log": copy.deepcopy(self.growth_log), "n_batches": self.n_batches,
            "n_learned": self.n_learned, "encoder_batches": self.encoder_batches, "reconfigured": self.reconfigured,
            "drift_events": self.drift_events, "grow_next": self._grow_next, "pending": dict(self._pending),
        }
        if self.input_shape is None:
            return state
        state["generator"] = torch_core.generator_state(self._generator)
        state["encoder"] = None if self._encoder is None else torch_core.module_state(self._encoder)
        if not self.frozen:
            state["head0"] = torch_core.module_state(self._head0)
            state["encoder_optimiser"] = torch_core.optimiser_state(self._encoder_optimiser)
            state["window_x"] = np.array(self._window_x)
            state["window_y"] = self._window_y.copy()
            state["window_sizes"] = list(self._window_sizes)
        state["space"] = None if self._space is None else self._space.state()
        state["experts"] = [{"net": torch_core.module_state(e), "optimiser": torch_core.optimiser_state(o),
                             "memory": m.state(), "train_f": tf_.copy(), "train_y": ty.copy()}
                            for e, o, m, tf_, ty in zip(self._experts, self._optimisers, self._memories, self._train_f,
                                                        self._train_y)]
        # arrays travel as tensors: in a sealed snapshot that holds tensors, numpy arrays would be
        # bytes, and torch.load(weights_only=True) cannot read back the empty ones
        return as_tensors(state)

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        for key in ("n_batches", "n_learned", "encoder_batches", "reconfigured", "drift_events"):
            setattr(self, key, int(state[key]))
        self._grow_next = bool(state["grow_next"])
        self._pending = {str(k): float(v) for k, v in state.get("pending", {}).items()}
        self.encoder_classes = [int(c) for c in state["encoder_classes"]]
        self.growth_log = copy.deepcopy(list(state["growth_log"]))
        if not state["built"]:
            return
        torch = torch_core.use_torch(self.torch_threads)
        self._build(tuple(int(s) for s in state["input_shape"]))
        self._generator = torch_core.load_generator_state(state["generator"])
        if state["encoder"] is not None:
            torch_core.load_module_state(self._encoder, state["encoder"])
        self.frozen = bool(state["frozen"])
        if not self.frozen:
            torch_core.load_module_state(self._head0, state["head0"])
            torch_core.load_optimiser_state(self._encoder_optimiser, state["encoder_optimiser"])
            self._window_x = stored_array(state["window_x"], np.float32)
            self._window_y = stored_array(state["window_y"], np.int64)
            self._window_sizes = [int(n) for n in state.get("window_sizes", [len(self._window_y)])]
        else:
            if self._encoder is not None:
                self._encoder.eval()
                for p in self._encoder.parameters():
                    p.requires_grad_(False)
            self._head0, self._encoder_optimiser, self._window_x = None, None, None
        self._space = None if state["space"] is None else HDCSpace.from_state(state["space"])
        for meta, part in zip(state["meta"], state["experts"]):
            expert, memory, f, y = load_expert(meta, part, self.feature_dim, self.n_classes, self._device())
            self._experts.append(expert)
            self.meta.extend(plain_meta([meta]))
            self._memories.append(memory)
            self._train_f.append(f)
            self._train_y.append(y)
            self._optimisers.append(self._optimiser_for(len(self._experts) - 1))
            torch_core.load_optimiser_state(self._optimisers[-1], part["optimiser"])
