"""Prototype-sample relation distillation (PRD; Asadi et al., ICML 2023) as a continual learner.

A replay-free learner for class streams (split images, task sequences): an encoder ``f`` and a
projection head ``g`` trained with a supervised contrastive loss, one prototype per class in the
encoder's space, and a distillation loss that keeps the old prototypes' relations to the new
samples as the model frozen at the last task boundary saw them. Prediction is the nearest
prototype by cosine among the classes seen so far; ``predict_scores`` gives the cosines, so that
task-incremental evaluation can mask them to a task's classes. docs/methods/prd.md says what
the paper does, what we implement and where we depart from it; the Avalanche form (a plugin for
any ``SupervisedTemplate``) and the shared pieces are in `tideflow.strategies.prd_core`.

One learning step on a minibatch of b rows with labels y (V views, ``views``):

* ``x_1 .. x_V = augment(x)``, ``h = f(x_v)`` (V·b rows), ``z = normalize(g(h))``;
* ``L_SC``: supervised contrastive loss ("all" mode: every view an anchor, every other view of
  the same class a positive) over the V·b projections at temperature ``tau``, scaled by
  ``tau / 0.07`` as in the reference code;
* ``L_p = mean_i (1 - cos(p_{y_i}, stopgrad(h_i)))``: pulls each row's class prototype toward
  its (detached) encoding; only the prototypes get this gradient, and only the classes of the
  rows being learned (the current task's) are touched;
* ``L_PRD = sum_{c old} KL(q_c || p_c)``, ``q_c = softmax_i(cos(p_c^old, h_i^old) / tau_d)``
  and ``p_c = softmax_i(cos(p_c, h_i) / tau_d)``: for each class learned before the last
  boundary, the distribution of its prototype's similarity over the minibatch's samples (the
  paper's sample axis), teacher (encoder and prototypes frozen at the boundary) against the
  current model. Its gradient reaches the encoder and the old prototypes, which keep moving;
* ``L = L_SC + lambda_p L_p + lambda_d L_PRD``; SGD with momentum and weight decay for the
  encoder and head, a second group without either for the prototypes (the reference's groups).

Invariants the code keeps:

* **Seen classes only.** A prototype that never had a row of its class is a random vector;
  class-incremental prediction and ``predict_scores`` range over the classes learned so far
  (the spec's first pitfall), and a model that has learned nothing predicts null labels.
* **SupCon needs a class pair.** A minibatch in which no class has two distinct rows gives
  L_SC nothing to pull together but a row's own views; L_SC is then left out of that step (the
  other terms stay) and the step is counted in ``StepReport.extra["supcon_skipped"]``. With one
  view (``views=1``), an anchor without any positive is left out of the mean (else 0/0).
* **Rows the learner cannot use are counted, never dropped in silence**: a null label, a label
  outside ``0 .. n_classes - 1`` and a row with a NaN or infinite input go to
  ``StepReport.skipped`` under their reason; the other rows are learned.
* **Determinism.** Initial weights come from `torch_core.build` (seed ``seed``); minibatch
  order and augmentation draw from one CPU generator of the strategy's own, so a seed gives the
  same model whatever else ran in the process, and the generator's position is in the snapshot.
* **Snapshot = everything that decides the future**: encoder, head and prototypes, the frozen
  teacher, seen and old classes, the optimiser's momentum, the generator, the counters. A
  restored strategy predicts and learns on exactly as the original would.
* **The teacher is frozen and in eval mode** (the reference keeps it in train mode, so batch
  statistics of a BatchNorm encoder would drift on new data: we want the relations of the model
  as it was at the boundary).

Compute accounting (``StepReport.extra``): ``train_rows`` counts rows times passes (a row's V
views count once); ``flops`` counts the floating-point operations of the dense products,
measured per row once for the encoder and the head with torch's flop counter on one forward
pass (2 per multiply-add, convolutions included), times 3 for forward and backward of the
student, plus one forward of the teacher's encoder, plus the similarity products of L_SC (V·b
squared), L_p and L_PRD. Element-wise work (activations, augmentation, softmax) is not counted.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.strategies import torch_core
from tideflow.strategies.base import ClassScores, SchemaError, StepReport, Strategy, class_labels
from tideflow.strategies.prd_core import (
    AUGMENTS,
    augment_views,
    dense_flops,
    frozen_copy,
    prd_network,
    prd_optimiser,
    prototype_loss,
    relation_distillation,
    supcon_loss,
)

__all__ = ["PrototypeDistillation"]

#: rows per forward pass when predicting (bounds memory on long held-out sets)
PREDICT_CHUNK = 4096


# -- the strategy ------------------------------------------------------------------------------
class PrototypeDistillation(Strategy):
    """PRD (Asadi et al., ICML 2023): SupCon + prototypes + prototype-sample relation distillation.

    Args:
        n_classes: labels are integers ``0 .. n_classes - 1`` (one prototype each).
        encoder: None (MLP 256-128 on the flattened input: 64-256-128 for 8x8 digits), a tuple
            of MLP widths, or a callable ``input_shape -> nn.Module`` mapping ``(B, *shape)`` to
            ``(B, d)`` (a small CNN for images).
        head: widths of the projection head after the encoder (ReLU between, none after).
        tau: SupCon temperature.  lambda_p, lambda_d: weights of L_p and L_PRD.
        tau_d: temperature of the relation softmax (over cosines, so of the order of tau).
        epochs: passes over each batch.  minibatch: rows per step.
        lr, momentum, weight_decay: SGD for encoder and head; prototype_lr (default lr): the
            prototypes' group, without momentum and weight decay.
        views: augmented views per row (2 in the paper).
        augment: "auto" (images: crop+flip; vectors: noise), "crop", "flip", "crop+flip",
            "noise" or "none" (`augment_views`). An input is an image when the features are one
            tensor column of shape (H, W) or (C, H, W) per row.
        boundary_every: task-free streams: a boundary (new teacher) after every N batches
            learned; boundaries from the engine (``on_task_boundary``) count as well.
        drift_boundaries: a drift event (``on_drift``) is a boundary too.
        seed: initial weights, minibatch order and augmentation.
        device: None or "auto" (CUDA when present), "cpu", "cuda[:i]".
        torch_threads: torch's intra-op threads (process-wide), applied before training.
        target, features: columns (default: the schema's).
    """

    problem = "classification"

    def __init__(self, n_classes: int, *, encoder: Any = None, head: Sequence[int] = (128, 64), tau: float = 0.1,
                 lambda_p: float = 2.0, lambda_d: float = 4.0, tau_d: float = 0.1, epochs: int = 1,
                 lr: float = 0.01, prototype_lr: float | None = None, momentum: float = 0.9,
                 weight_decay: float = 1e-4, minibatch: int = 128, views: int = 2, augment: str = "auto",
                 boundary_every: int | None = None, drift_boundaries: bool = False, seed: int = 0,
                 device: str | None = None, torch_threads: int | None = 1, target: str | None = None,
                 features: list[str] | None = None) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r}: use one of {AUGMENTS}")
        if boundary_every is not None and boundary_every < 1:
            raise ValueError(f"boundary_every must be at least 1 (or None), got {boundary_every}")
        if views < 1 or epochs < 1 or minibatch < 1:
            raise ValueError("views, epochs and minibatch must be at least 1")
        self.n_classes = n_classes
        self.encoder = encoder
        self.head = tuple(head)
        self.tau, self.lambda_p, self.lambda_d, self.tau_d = tau, lambda_p, lambda_d, tau_d
        self.epochs, self.lr, self.prototype_lr = epochs, lr, prototype_lr
        self.momentum, self.weight_decay, self.minibatch = momentum, weight_decay, minibatch
        self.views, self.augment = views, augment
        self.boundary_every, self.drift_boundaries = boundary_every, drift_boundaries
        self.seed, self.device, self.torch_threads = seed, device, torch_threads
        self.target = target
        self.features = list(features) if features is not None else None
        self._reset()

    def _reset(self) -> None:
        self._net: Any = None
        self._teacher: Any = None
        self._optimiser: Any = None
        self._generator: Any = None
        self._flops_row: tuple[float, float] = (0.0, 0.0)
        self.input_shape: tuple[int, ...] | None = None
        self.seen: list[int] = []  # classes learned so far (sorted)
        self.old: list[int] = []  # classes the teacher knows (seen at the last boundary)
        self.n_batches = 0
        self.n_learned = 0
        self.n_boundaries = 0
        self.since_boundary = 0  # batches learned since the last boundary

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"n_classes": 2, "encoder": (16, 8), "head": (8, 4), "minibatch": 32, "boundary_every": 2}

    # -- inputs ----------------------------------------------------------------------------
    def _input_rows(self, batch: Batch) -> np.ndarray:
        """The batch's inputs as float32 ``(n, *shape)``: images ``(n, C, H, W)``, else ``(n, d)``."""
        assert self.features is not None
        if len(self.features) == 1:
            col = batch.numpy(self.features[0])
            if col.ndim in (3, 4):  # one tensor column, (H, W) or (C, H, W) per row
                x = np.array(col, dtype=np.float32)
                return x[:, None] if x.ndim == 3 else x
        return np.array(batch.features(self.features, dtype=np.float32))

    def _checked_inputs(self, batch: Batch) -> np.ndarray:
        x = self._input_rows(batch)
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise SchemaError(f"PrototypeDistillation: inputs of shape {tuple(x.shape[1:])}, but the model was "
                              f"built for {self.input_shape} (features {self.features})")
        return x

    def _labels(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Integer labels and the mask of usable rows, with the count of each kind left out."""
        assert self.target is not None
        return class_labels(batch, self.target, self.n_classes, "PrototypeDistillation")

    # -- model -----------------------------------------------------------------------------
    def _build(self, shape: tuple[int, ...]) -> None:
        torch_core.set_threads(self.torch_threads)
        device = torch_core.choose_device(self.device)
        net = prd_network(self.n_classes, shape, encoder=self.encoder, head=self.head, views=self.views,
                          augment=self.augment, seed=self.seed)
        net.generator = None  # the strategy keeps its own generator (minibatch order and views)
        self._net = net.to(device)
        self._optimiser = prd_optimiser(self._net, lr=self.lr, momentum=self.momentum,
                                        weight_decay=self.weight_decay, prototype_lr=self.prototype_lr)
        self._generator = torch_core.seeded_generator(torch_core.fit_seed(self.seed, 1))
        self.input_shape = shape
        try:
            enc = dense_flops(self._net.encoder, shape, device)
            d = self._net.prototypes.weight.shape[1]
            self._flops_row = (enc, dense_flops(self._net.head, (d,), device))
        except Exception:  # noqa: BLE001 - an encoder the counter cannot trace: 2 per weight and row
            n_enc = sum(p.numel() for p in self._net.encoder.parameters())
            self._flops_row = (2.0 * n_enc, 2.0 * sum(p.numel() for p in self._net.head.parameters()))

    def _device(self) -> Any:
        return self._net.prototypes.weight.device

    def _boundary(self) -> None:
        """Freeze the current model as the teacher of what was learned so far."""
        if self._net is None or self.since_boundary == 0:
            return  # nothing learned since the last teacher: it is still the current model
        self._teacher = frozen_copy(self._net)
        self.old = list(self.seen)
        self.n_boundaries += 1
        self.since_boundary = 0

    # -- the contract ----------------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        if not len(batch):
            return StepReport()
        self._check_columns(batch, need_target=True)
        start = time.perf_counter()
        x = self._checked_inputs(batch)
        y, use, skipped = self._labels(batch)
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if (use & ~finite).any():
            skipped["non_finite_features"] = int((use & ~finite).sum())
        use &= finite
        report = StepReport(samples=len(batch), skipped=skipped)
        if not use.any():
            return report
        x, y = x[use], y[use]
        if self._net is None:
            self._build(tuple(x.shape[1:]))
        torch = torch_core.use_torch(self.torch_threads)
        device = self._device()
        xt = torch.from_numpy(x).to(device)
        yt = torch.from_numpy(y).to(device)
        teacher = self._teacher if self.lambda_d > 0 and self.old else None
        old = torch.tensor(self.old, dtype=torch.long, device=device)
        counts = {"supcon_skipped": 0, "flops": 0.0}
        f_enc, f_head = self._flops_row
        d = self._net.prototypes.weight.shape[1]
        dz = self.head[-1]

        def loss(idx: Any) -> Any:
            idx = idx.to(device)
            xb, yb = xt[idx], yt[idx]
            v = augment_views(xb, self.views, self._net.augment, self._generator, image=self._net.image)
            h = self._net.encoder(v)
            labels = yb.repeat(self.views)
            n = len(labels)
            total = self.lambda_p * prototype_loss(self._net, h, labels)
            flops = 3.0 * (f_enc + f_head) * n + 6.0 * d * n
            # a class pair is what SupCon contrasts; without one only a row's own views remain
            sc = supcon_loss(self._net.project(h), labels, self.tau) if int(torch.bincount(yb).max()) >= 2 else None
            if sc is None:
                counts["supcon_skipped"] += 1
            else:
                total = total + sc
                flops += 6.0 * dz * n * n
            if teacher is not None:
                with torch.no_grad():
                    h_old = teacher.encoder(v)
                total = total + self.lambda_d * relation_distillation(self._net, h, teacher, h_old, old, self.tau_d)
                flops += f_enc * n + 8.0 * d * len(self.old) * n
            counts["flops"] += flops
            return total

        rows = torch_core.train(self._net, loss, len(x), optimiser=self._optimiser, generator=self._generator,
                                minibatch=self.minibatch, epochs=self.epochs)
        self.seen = sorted(set(self.seen) | {int(c) for c in np.unique(y)})
        self._net.seen[torch.tensor(self.seen, dtype=torch.long, device=device)] = True
        self.n_batches += 1
        self.n_learned += len(x)
        self.since_boundary += 1
        if self.boundary_every is not None and self.since_boundary >= self.boundary_every:
            self._boundary()
        report.fits = 1
        report.train_seconds = time.perf_counter() - start
        report.extra = {"train_rows": float(rows), "flops": counts["flops"],
                        "supcon_skipped": float(counts["supcon_skipped"])}
        return report

    def _scores(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Cosines to the seen classes' prototypes ``(n, len(seen))`` and the finite-input mask."""
        torch = torch_core.use_torch(self.torch_threads)
        x = self._checked_inputs(batch)
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        x = np.where(finite.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0).astype(np.float32)
        seen = torch.tensor(self.seen, dtype=torch.long, device=self._device())
        was_training = self._net.training
        self._net.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(x), PREDICT_CHUNK):
                h = self._net.encoder(torch.from_numpy(x[s:s + PREDICT_CHUNK]).to(self._device()))
                out.append(self._net.cosines(h, seen).cpu().numpy())
        self._net.train(was_training)
        scores = np.concatenate(out) if out else np.zeros((0, len(self.seen)), dtype=np.float32)
        scores[~finite] = np.nan
        return scores, finite

    def predict(self, batch: Batch) -> pa.Array:
        """The nearest seen class's prototype by cosine (class-incremental); null where nothing
        was learned yet or the row's input is not finite."""
        if not len(batch):
            return pa.array([], type=pa.int64())
        self._check_columns(batch, need_target=False)
        if not self.seen:
            self._checked_inputs(batch)
            return pa.array([None] * len(batch), type=pa.int64())
        scores, finite = self._scores(batch)
        best = np.asarray(self.seen, dtype=np.int64)[np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1)]
        return pa.array(best, type=pa.int64(), mask=~finite)

    def predict_scores(self, batch: Batch) -> ClassScores:
        """Cosine to each seen class's prototype (classes never learned are not listed, so a task
        of unseen classes gets no prediction under task-incremental masking)."""
        if not len(batch) or not self.seen:
            if len(batch):
                self._check_columns(batch, need_target=False)
            return ClassScores(np.zeros((len(batch), len(self.seen)), dtype=np.float32), list(self.seen))
        self._check_columns(batch, need_target=False)
        return ClassScores(self._scores(batch)[0], list(self.seen))

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        self._boundary()

    def on_drift(self, event: DriftEvent) -> None:
        if self.drift_boundaries:
            self._boundary()

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "built": self._net is not None, "input_shape": list(self.input_shape or []), "seen": list(self.seen),
            "old": list(self.old), "n_batches": self.n_batches, "n_learned": self.n_learned,
            "n_boundaries": self.n_boundaries, "since_boundary": self.since_boundary,
        }
        if self._net is None:
            return state
        state["net"] = torch_core.module_state(self._net)
        state["optimiser"] = torch_core.optimiser_state(self._optimiser)
        state["generator"] = torch_core.generator_state(self._generator)
        state["teacher"] = None if self._teacher is None else torch_core.module_state(self._teacher)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        if state["built"]:
            self._build(tuple(int(s) for s in state["input_shape"]))
            torch_core.load_module_state(self._net, state["net"])
            torch_core.load_optimiser_state(self._optimiser, state["optimiser"])
            self._generator = torch_core.load_generator_state(state["generator"])
            if state["teacher"] is not None:
                self._teacher = frozen_copy(self._net)
                torch_core.load_module_state(self._teacher, state["teacher"])
        self.seen = [int(c) for c in state["seen"]]
        self.old = [int(c) for c in state["old"]]
        for key in ("n_batches", "n_learned", "n_boundaries", "since_boundary"):
            setattr(self, key, int(state[key]))
