"""Dynamic sparse training for task-incremental streams (after Yildirim et al., CPAL 2024).

`SparseTraining` learns each task in a sparse sub-network of one MLP and freezes it at the
task's end, so that later tasks cannot change what an earlier task predicts: its backward
transfer is exactly zero by construction, not by luck. docs/methods/dst.md says what the paper
does, what we implement and where we depart from it; the mask arithmetic is in
`tideflow.strategies.dst_core`.

One task t: a fresh random mask ``M_t`` over each hidden layer's dense store (densities by ERK
or uniform); where it covers weights earlier tasks froze (the union ``U``) they are reused as
they are, the rest (``A_t``) is trained with Adam on the task's own head; every
``update_every`` steps each layer drops the smallest-magnitude share ``zeta`` of ``A_t`` (cosine
over ``steps_per_task``) and grows as many free positions by ``growth``; at the task's end
``U <- U | A_t`` and the task keeps ``M_t``, its biases and its head. A row of task j is predicted
through the store masked by ``M_j`` and task j's biases and head.

Invariants the code keeps, and why:

* **Isolation.** Between a task's merge and the end of the stream nothing it reads changes: its
  store positions get no gradient and zero Adam moments (an update of exactly 0), positions
  outside its mask are read as exact zeros (a select, not a product), its biases and head leave
  the optimiser at the merge, and growth never picks a frozen position. The frozen weights a task
  reuses enter its forward pass as a constant copy taken at the task's start. Hence BWT is
  exactly 0.
  (The reference code's pitfalls, all avoided: unisolated biases, regrowth onto frozen positions,
  argmax over every task's outputs, Adam moments left stale after masking.)
* **Free positions hold 0.** A position neither trainable nor frozen is set to 0 when it is dropped
  (and, without isolation, when a new task's mask leaves it out) and never moves after that: no
  gradient reaches it and its Adam moments are 0, so Adam's update there is exactly 0. A weight
  grown later therefore starts at 0 as the method says, and a new task's fresh values go exactly
  where the store holds 0.
* **Where the task id comes from** (`SparseTraining.task_source`): ``"column"``, the schema's task
  role (``task_from="column"``, or ``"auto"`` when the schema has one): a new value in a learned
  batch ends the current task and starts the next; rows of a task already merged are not
  learned again and are counted (``StepReport.skipped["task_already_learned"]``); prediction
  reads each row's task from the column. ``"events"`` (task-free streams, ``task_from="events"``):
  the task ends at a task boundary (``on_task_boundary``: an end-of-task mark, a task-column change,
  or a drift event the learn step counts as a boundary) or, with ``new_task_on_drift``, at any drift
  or out-of-distribution event (``on_drift``); prediction then has no task id and uses the newest
  task's sub-network (class-incremental use is "n/a" for this learner: it needs a task id).
  A task is never ended before it learned a row, so an event that arrives twice ends one task.
* **Capacity.** The share of the store in use (frozen, or in the current task's mask) is
  `network_share`; each learned batch reports its change in ``StepReport.extra["network_share"]``,
  so that what a run sums is the share in use. Once, when a task starts that leaves less than
  ``capacity_warning`` of some layer free for later tasks, the strategy raises a
  ``capacity_low`` event (``StepReport.events``) and logs a warning. A task that starts with no
  free position in a layer raises ``capacity_exhausted``: it trains its own biases, its head and
  the free positions of the other layers, reusing the frozen weights its mask covers; earlier
  tasks are untouched (the learner never unfreezes).
* **Rows the learner cannot use are counted, never dropped in silence**: a null label, a label
  outside ``0 .. n_classes - 1``, a non-finite input, a null task id (column mode).
* **Snapshot = everything that decides the future**: the store, every task's mask, biases and
  head, the frozen union, the current task's trainable mask, its never-fired record, the growth
  moments, Adam's state, the generator and the counters; a restored strategy predicts and learns
  on exactly as the original would.

Compute accounting (``StepReport.extra``): ``train_rows`` (rows times passes), ``flops`` counting
only active weights (2 per multiply-add: the forward pass and the input gradient through the
task's mask, the weight gradient through its trainable part, forward and backward of the dense
head), plus the dense weight gradient where growth reads it (gradient growth: the step before a
mask update; momentum growth: every step); ``mask_updates``; ``network_share`` (above). The
kernels are dense: wall time does not fall with density, only the counted FLOPs do.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.strategies import torch_core
from tideflow.strategies.base import ClassScores, SchemaError, StepReport, Strategy, class_labels
from tideflow.strategies.dst_core import (GROWTH, LAYER_DENSITIES, add_task, dense_size, drop_and_grow, drop_rate,
                                          forward, initial_values, kept, layer_densities, masked, network,
                                          random_mask, task_groups, trainable, update_moments)

__all__ = ["SparseTraining", "TASK_SOURCES"]

#: where the task id may come from (``task_from``)
TASK_SOURCES = ("auto", "column", "events")
#: the detector name of the events the strategy raises (capacity notices)
DETECTOR = "SparseTraining"
#: rows per forward pass when predicting (bounds memory on long held-out sets)
PREDICT_CHUNK = 4096

log = logging.getLogger("tideflow")


class SparseTraining(Strategy):
    """Dynamic sparse training with per-task masks (module docstring; docs/methods/dst.md).

    Args:
        n_classes: labels are integers ``0 .. n_classes - 1``; every task has a head of that size.
        hidden: widths of the MLP's hidden layers (the sparse, masked part).
        density: the share of each task's mask over the hidden layers' weights (global).
        layer_density: ``"erk"`` or ``"uniform"`` (how the density is shared out over layers).
        growth: ``"random"``, ``"unfired"``, ``"gradient"`` or ``"momentum"``.
        update_every: optimiser steps between mask updates (dT).
        steps_per_task: the steps the drop-rate cosine and the learning-rate milestones run over
            (a stream does not say how long a task is); no mask update after them.
        drop_start, drop_end: the drop fraction's cosine schedule.
        lr: Adam's learning rate; lr_milestones: fractions of ``steps_per_task`` where it drops x0.1.
        epochs: passes over each batch.  minibatch: rows per optimiser step.
        isolate: freeze each task's weights at its end (False: nothing is frozen: with
            ``density=1`` this is dense fine-tuning with task heads, the reference point).
        task_from: ``"column"``, ``"events"`` or ``"auto"`` (column when the schema has a task role).
        task: the task column (default: the schema's task role).
        new_task_on_drift: events mode: a drift or OOD event (``on_drift``) ends the current task.
        capacity_warning: warn once when a task leaves less than this share of a layer free.
        seed: masks, initial values, minibatch order.
        device: None or "auto" (CUDA when present), "cpu", "cuda[:i]".
        torch_threads: torch's intra-op threads (process-wide), applied before training.
        target, features: columns (default: the schema's).
    """

    problem = "classification"

    def __init__(self, n_classes: int, *, hidden: Sequence[int] = (200, 200), density: float = 0.2,
                 layer_density: str = "erk", growth: str = "random", update_every: int = 50,
                 steps_per_task: int = 1000, drop_start: float = 0.5, drop_end: float = 0.005, lr: float = 1e-3,
                 lr_milestones: Sequence[float] = (0.5, 0.75), epochs: int = 1, minibatch: int = 64,
                 isolate: bool = True, task_from: str = "auto", task: str | None = None,
                 new_task_on_drift: bool = False, capacity_warning: float = 0.25, seed: int = 0,
                 device: str | None = None, torch_threads: int | None = 1, target: str | None = None,
                 features: list[str] | None = None) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must list at least one positive width (the sparse layers), got {hidden}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if layer_density not in LAYER_DENSITIES:
            raise ValueError(f"layer_density={layer_density!r}: use one of {LAYER_DENSITIES}")
        if growth not in GROWTH:
            raise ValueError(f"growth={growth!r}: use one of {GROWTH}")
        if task_from not in TASK_SOURCES:
            raise ValueError(f"task_from={task_from!r}: use one of {TASK_SOURCES}")
        if min(update_every, steps_per_task, epochs, minibatch) < 1:
            raise ValueError("update_every, steps_per_task, epochs and minibatch must be at least 1")
        if not 0.0 <= drop_end <= drop_start <= 1.0:
            raise ValueError(f"need 0 <= drop_end <= drop_start <= 1, got {drop_start}, {drop_end}")
        self.n_classes = n_classes
        self.hidden = tuple(int(h) for h in hidden)
        self.density, self.layer_density, self.growth = density, layer_density, growth
        self.update_every, self.steps_per_task = update_every, steps_per_task
        self.drop_start, self.drop_end = drop_start, drop_end
        self.lr, self.lr_milestones = lr, tuple(float(m) for m in lr_milestones)
        self.epochs, self.minibatch = epochs, minibatch
        self.isolate, self.task_from, self.task = _flag("isolate", isolate), task_from, task
        self.new_task_on_drift = _flag("new_task_on_drift", new_task_on_drift)
        self.capacity_warning = capacity_warning
        self.seed, self.device, self.torch_threads = seed, device, torch_threads
        self.target = target
        self.features = list(features) if features is not None else None
        self._reset()

    def _reset(self) -> None:
        self._net: Any = None
        self._optimiser: Any = None
        self._generator: Any = None
        self.input_dim: int | None = None
        self.densities: list[float] = []
        self.frozen: list[Any] = []  # U: positions finished tasks hold, per layer
        self.task_masks: list[list[Any]] = []  # M_j per task and layer (the current task's kept up to date)
        self.task_keys: list[Any] = []  # task ids in the order tasks started (column values, or 0, 1, ...)
        self.task_classes: list[list[int]] = []  # classes each task has learned
        self.current: int | None = None  # the task being learned (not merged yet)
        self._active: list[Any] = []  # A_t: the current task's trainable positions
        self._reused: list[Any] = []  # M_t & U: frozen positions the current task reads
        self._ever: list[Any] = []  # positions ever trainable in the current task (unfired growth)
        self._moments: list[list[Any]] = []  # [m, v] of the dense gradient per layer (momentum growth)
        self._constant: list[Any] = []  # the reused frozen weights, 0 elsewhere: fixed for the task
        self._captured: list[Any] | None = None
        self._flops_step: tuple[float, float] = (0.0, 0.0)  # per row: sparse step, dense gradient
        self.task_step = 0  # optimiser steps in the current task
        self.n_batches = 0
        self.n_learned = 0
        self.mask_updates = 0
        self.share_reported = 0.0
        self.warned = False
        self.exhausted: list[int] = []  # tasks that started with no free position in some layer

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"n_classes": 2, "hidden": (16, 16), "density": 0.3, "layer_density": "uniform", "minibatch": 32, "update_every": 2,
                "steps_per_task": 8, "epochs": 2}

    # -- where the task id comes from -------------------------------------------------------
    def bind(self, schema: Any) -> None:
        super().bind(schema)
        if self.task_from != "events" and self.task is None:
            self.task = schema.task
        if self.task_from == "column" and self.task is None:
            raise SchemaError("SparseTraining(task_from='column') needs a task column: the schema has no task "
                              "role and no task= was given (use task_from='events' on a task-free stream)")
        if self.task_source == "column" and self.task not in schema.fields:
            raise SchemaError(f"SparseTraining: task column {self.task!r} is not in the schema ({schema.names})")

    @property
    def task_source(self) -> str:
        """``"column"`` (the task id is read from the rows) or ``"events"`` (boundaries and drift events)."""
        if self.task_from == "events":
            return "events"
        return "column" if self.task is not None else "events"

    @property
    def network_share(self) -> float:
        """The share of the store's weights in use: frozen, or in the current task's mask."""
        if self._net is None:
            return 0.0
        used = 0
        for layer, frozen in enumerate(self.frozen):
            mask = frozen if self.current is None else frozen | self.task_masks[self.current][layer]
            used += int(mask.sum())
        return used / dense_size(self._net)

    # -- inputs ---------------------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        assert self.features is not None
        x = np.array(batch.features(self.features, dtype=np.float32), dtype=np.float32)
        if self.input_dim is not None and x.shape[1] != self.input_dim:
            raise SchemaError(f"SparseTraining: inputs of {x.shape[1]} values, but the network was built for "
                              f"{self.input_dim} (features {self.features})")
        return x, np.isfinite(x).all(axis=1)

    def _labels(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Integer labels and the mask of usable rows, with the count of each kind left out."""
        assert self.target is not None
        return class_labels(batch, self.target, self.n_classes, "SparseTraining")

    def _row_tasks(self, batch: Batch) -> list[Any] | None:
        """Each row's task id from the task column (column mode and the column present), else None."""
        if self.task_source != "column" or self.task not in batch.column_names:
            return None
        return batch.column(self.task).to_pylist()

    # -- the network ----------------------------------------------------------------------------
    def _build(self, input_dim: int) -> None:
        torch_core.set_threads(self.torch_threads)
        device = torch_core.choose_device(self.device)
        self.input_dim = int(input_dim)
        self._net = network(self.input_dim, self.hidden).to(device)
        shapes = [tuple(w.shape) for w in self._net.weights]
        self.densities = layer_densities(shapes, self.density, self.layer_density)
        self.frozen = [self._zeros_bool(w) for w in self._net.weights]
        self._generator = torch_core.seeded_generator(torch_core.fit_seed(self.seed, 1))

    @staticmethod
    def _zeros_bool(w: Any) -> Any:
        import torch

        return torch.zeros(w.shape, dtype=torch.bool, device=w.device)

    def _device(self) -> Any:
        return self._net.weights[0].device

    def _add_part(self, t: int) -> Any:
        part = torch_core.build(lambda: add_task(self._net, self.n_classes), seed=torch_core.fit_seed(self.seed, 2 + t))
        return part.to(self._device())

    def _make_optimiser(self, t: int) -> Any:
        import torch

        part = self._net.tasks[t]
        params = [*self._net.weights, *part.biases, *part.head.parameters()]
        return torch.optim.Adam(params, lr=self.lr)

    def _cache_flops(self) -> None:
        t = self.current
        assert t is not None
        in_mask = sum(int(m.sum()) for m in self.task_masks[t])
        trainable = sum(int(a.sum()) for a in self._active)
        head = self._net.tasks[t].head.weight.numel()
        # forward and input gradient through the mask, weight gradient through the trainable part
        self._flops_step = (4.0 * in_mask + 2.0 * trainable + 6.0 * head, 2.0 * dense_size(self._net))

    def _start_task(self, key: Any, batch: Batch) -> list[DriftEvent]:
        """Open task ``key``: its parts, its random mask, fresh values; capacity notices."""
        import torch

        t = len(self.task_keys)
        self.task_keys.append(key)
        self.task_classes.append([])
        self._add_part(t)
        device = self._device()
        masks, active, reused, free_after = [], [], [], []
        with torch.no_grad():
            for layer, w in enumerate(self._net.weights):
                m = random_mask(w.shape, kept(w.numel(), self.densities[layer]), self._generator).to(device)
                frozen = self.frozen[layer]
                a = m & ~frozen
                values = initial_values(w.shape, self.densities[layer], self._generator).to(device)
                fresh = a & (w == 0)  # free positions hold 0: those get fresh values, the rest keep theirs
                w.copy_(torch.where(fresh, values, w))
                w.masked_fill_(~(a | frozen), 0.0)  # without isolation: what the new mask leaves out
                masks.append(m)
                active.append(a)
                reused.append(m & frozen)
                free_after.append(1.0 - float((frozen | a).sum()) / w.numel() if self.isolate else 1.0)
        self.task_masks.append(masks)
        self.current = t
        self._active, self._reused, self._ever = active, reused, [a.clone() for a in active]
        self._constant = [masked(w, r).detach() for w, r in zip(self._net.weights, reused)]
        self._moments = ([[torch.zeros(w.shape, device=device), torch.zeros(w.shape, device=device)]
                          for w in self._net.weights] if self.growth == "momentum" else [])
        self._optimiser = self._make_optimiser(t)
        self.task_step = 0
        self._cache_flops()
        events = []
        offset = int(batch.first_offset or 0)
        empty = [layer for layer, a in enumerate(active) if not bool(a.any())]
        if self.isolate and empty:
            self.exhausted.append(t)
            log.warning("SparseTraining: capacity exhausted: task %r starts with no free weight in layer(s) %s; it "
                        "trains its own biases, its head and the free weights of the other layers, reusing the "
                        "frozen weights its mask covers (earlier tasks stay untouched)", key, empty)
            events.append(DriftEvent(batch.stream_id, offset, DETECTOR, "capacity_exhausted", "", float(len(empty))))
        low = min(free_after)
        if self.isolate and not self.warned and low < self.capacity_warning:
            self.warned = True
            log.warning("SparseTraining: task %r leaves %.1f %% of a layer free for later tasks (below "
                        "capacity_warning=%s): later tasks get fewer new weights; a task that finds none in a layer "
                        "trains only its biases, its head and the other layers", key, 100.0 * low,
                        self.capacity_warning)
            events.append(DriftEvent(batch.stream_id, offset, DETECTOR, "capacity_low", "", low))
        return events

    def _merge(self) -> None:
        """End the current task: its mask is its own for good, its trainable weights join ``U``."""
        if self.current is None:
            return
        if self.isolate:
            self.frozen = [f | a for f, a in zip(self.frozen, self._active)]
        self.current = None
        self._optimiser = None
        self._active, self._reused, self._ever, self._moments, self._constant = [], [], [], [], []
        self.task_step = 0

    # -- training -------------------------------------------------------------------------------
    def _lr_factor(self) -> float:
        return 0.1 ** sum(self.task_step >= m * self.steps_per_task for m in self.lr_milestones)

    def _update_due(self, step: int) -> bool:
        return step % self.update_every == 0 and step < self.steps_per_task

    def _train(self, x: np.ndarray, y: np.ndarray) -> tuple[int, float]:
        torch = torch_core.use_torch(self.torch_threads)
        t = self.current
        assert t is not None
        device = self._device()
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        flops = [0.0]

        def loss(idx: Any) -> Any:
            idx = idx.to(device)
            for group in self._optimiser.param_groups:
                group["lr"] = self.lr * self._lr_factor()
            capture = self.growth == "momentum" or (self.growth == "gradient" and self._update_due(self.task_step + 1))
            ws = [trainable(w, a, c) for w, a, c in zip(self._net.weights, self._active, self._constant)]
            if capture:
                for w in ws:
                    w.retain_grad()
                self._captured = ws
            sparse, dense = self._flops_step
            flops[0] += len(idx) * (sparse + (dense if capture else 0.0))
            return torch.nn.functional.cross_entropy(forward(self._net, xt[idx], t, ws), yt[idx])

        rows = torch_core.train(self._net, loss, len(x), optimiser=self._optimiser, generator=self._generator,
                                minibatch=self.minibatch, epochs=self.epochs, after_step=self._after_step)
        return rows, flops[0]

    def _after_step(self) -> None:
        import torch

        self.task_step += 1
        captured, self._captured = self._captured, None
        with torch.no_grad():
            if self.growth == "momentum" and captured is not None:
                update_moments(self._moments, [wc.grad for wc in captured])
            if self._update_due(self.task_step):
                self._update_masks(captured)

    def _update_masks(self, captured: list[Any] | None) -> None:
        import torch

        t = self.current
        assert t is not None
        fraction = drop_rate(self.task_step, self.steps_per_task, self.drop_start, self.drop_end)
        moved = False
        for layer, w in enumerate(self._net.weights):
            a = self._active[layer]
            if self.densities[layer] >= 1.0 or not bool(a.any()):
                continue  # a dense layer has nothing to move; an exhausted one nothing to drop
            gradient = captured[layer].grad if self.growth == "gradient" and captured is not None else None
            moments = tuple(self._moments[layer]) if self.growth == "momentum" else None
            new, dropped, grown = drop_and_grow(w, a, self.frozen[layer], fraction, self.growth,
                                                generator=self._generator, ever=self._ever[layer],
                                                gradient=gradient, moments=moments)  # type: ignore[arg-type]
            changed = torch.cat([dropped, grown])
            w.view(-1)[changed] = 0.0  # regrown weights start at 0; dropped ones are free again
            state = self._optimiser.state.get(w)
            if state:  # no stale moments: a changed position starts afresh
                state["exp_avg"].view(-1)[changed] = 0.0
                state["exp_avg_sq"].view(-1)[changed] = 0.0
            self._active[layer] = new
            self._ever[layer] = self._ever[layer] | new
            self.task_masks[t][layer] = self._reused[layer] | new
            moved = True
        if moved:  # a dense or exhausted network has no mask to update: nothing is counted
            self.mask_updates += 1
            self._cache_flops()

    # -- the contract ---------------------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        if not len(batch):
            return StepReport()
        self._check_columns(batch, need_target=True)
        if self.task_source == "column" and self.task not in batch.column_names:
            raise SchemaError(f"SparseTraining reads the task id from column {self.task!r}, which the batch lacks; "
                              f"it has {batch.column_names}")
        start = time.perf_counter()
        x, finite = self._inputs(batch)
        y, use, skipped = self._labels(batch)
        if (use & ~finite).any():
            skipped["non_finite_features"] = int((use & ~finite).sum())
        use &= finite
        keys = self._row_tasks(batch)
        if keys is not None:
            null = use & np.array([k is None for k in keys], dtype=bool)
            if null.any():
                skipped["null_task"] = int(null.sum())
            use &= ~null
        report = StepReport(samples=len(batch))
        if use.any() and self._net is None:
            self._build(x.shape[1])
        rows, flops, updates_before = 0, 0.0, self.mask_updates
        for key, idx in task_groups(keys, use):
            if keys is None:  # events mode: the current task, or the next one
                if self.current is None:
                    report.events.extend(self._start_task(len(self.task_keys), batch))
            elif key not in self.task_keys:
                self._merge()
                report.events.extend(self._start_task(key, batch))
            elif self.task_keys.index(key) != self.current:
                skipped["task_already_learned"] = skipped.get("task_already_learned", 0) + len(idx)
                continue
            r, f = self._train(x[idx], y[idx])
            rows, flops = rows + r, flops + f
            t = self.current
            assert t is not None
            self.task_classes[t] = sorted(set(self.task_classes[t]) | {int(c) for c in np.unique(y[idx])})
            self.n_learned += len(idx)
        report.skipped = skipped
        if rows:
            self.n_batches += 1
            share = self.network_share
            report.fits = 1
            report.extra = {"train_rows": float(rows), "flops": flops,
                            "mask_updates": float(self.mask_updates - updates_before),
                            "network_share": share - self.share_reported}
            self.share_reported = share
        report.train_seconds = time.perf_counter() - start
        return report

    def _newest(self) -> int:
        return self.current if self.current is not None else len(self.task_keys) - 1

    def _scores(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits ``(n, n_classes)`` of each row's task, the rows' task indices and the finite-input mask."""
        torch = torch_core.use_torch(self.torch_threads)
        x, finite = self._inputs(batch)
        x = np.where(finite[:, None], x, 0.0).astype(np.float32)
        keys = self._row_tasks(batch)
        newest = self._newest()
        index = {k: i for i, k in enumerate(self.task_keys)}
        tasks = np.full(len(x), newest, dtype=np.int64) if keys is None else np.array(
            [index.get(k, newest) for k in keys], dtype=np.int64)
        out = np.zeros((len(x), self.n_classes), dtype=np.float32)
        with torch.no_grad():
            for t in np.unique(tasks).tolist():
                rows = np.flatnonzero(tasks == t)
                ws = [masked(w, m) for w, m in zip(self._net.weights, self.task_masks[t])]
                for s in range(0, len(rows), PREDICT_CHUNK):
                    part = rows[s:s + PREDICT_CHUNK]
                    xb = torch.from_numpy(x[part]).to(self._device())
                    out[part] = forward(self._net, xb, int(t), ws).cpu().numpy()
        out[~finite] = np.nan
        return out, tasks, finite

    def predict(self, batch: Batch) -> pa.Array:
        """Per row, the best of the classes its task learned, through that task's sub-network and
        head; null before anything was learned and where a row's input is not finite."""
        if not len(batch):
            return pa.array([], type=pa.int64())
        self._check_columns(batch, need_target=False)
        if not self.task_keys:
            self._inputs(batch)
            return pa.array([None] * len(batch), type=pa.int64())
        scores, tasks, finite = self._scores(batch)
        best = np.zeros(len(batch), dtype=np.int64)
        for t in np.unique(tasks).tolist():
            rows = np.flatnonzero(tasks == t)
            classes = np.asarray(self.task_classes[t] or range(self.n_classes), dtype=np.int64)
            sub = np.nan_to_num(scores[np.ix_(rows, classes)], nan=-np.inf)
            best[rows] = classes[np.argmax(sub, axis=1)]
        return pa.array(best, type=pa.int64(), mask=~finite)

    def predict_scores(self, batch: Batch) -> ClassScores:
        """The logits of each row's task head over all ``n_classes`` (the engine masks them to a task's
        classes); no classes before anything was learned."""
        if len(batch):
            self._check_columns(batch, need_target=False)
        if not len(batch) or not self.task_keys:
            if len(batch):
                self._inputs(batch)
            return ClassScores(np.zeros((len(batch), 0), dtype=np.float32), [])
        return ClassScores(self._scores(batch)[0], list(range(self.n_classes)))

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        """Events mode: the current task ends (if it learned anything). Column mode: the column decides."""
        if self.task_source == "events":
            self._merge()

    def on_drift(self, event: DriftEvent) -> None:
        """Events mode with ``new_task_on_drift``: the current task ends (not on capacity notices)."""
        if self.task_source == "events" and self.new_task_on_drift and event.detector != DETECTOR:
            self._merge()

    # -- state ----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "built": self._net is not None, "input_dim": self.input_dim, "task_source": self.task_source,
            "task_keys": list(self.task_keys), "task_classes": [list(c) for c in self.task_classes],
            "current": self.current, "task_step": self.task_step, "n_batches": self.n_batches,
            "n_learned": self.n_learned, "mask_updates": self.mask_updates, "share_reported": self.share_reported,
            "warned": self.warned, "exhausted": list(self.exhausted),
        }
        if self._net is None:
            return state
        plain = torch_core.plain_tensor
        state["net"] = torch_core.module_state(self._net)
        state["frozen"] = [plain(f) for f in self.frozen]
        state["task_masks"] = [[plain(m) for m in masks] for masks in self.task_masks]
        state["generator"] = torch_core.generator_state(self._generator)
        if self.current is not None:
            state["active"] = [plain(a) for a in self._active]
            state["reused"] = [plain(r) for r in self._reused]
            state["ever"] = [plain(e) for e in self._ever]
            state["moments"] = [[plain(m), plain(v)] for m, v in self._moments]
            state["optimiser"] = torch_core.optimiser_state(self._optimiser)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self.task_keys = list(state["task_keys"])
        self.task_classes = [[int(c) for c in cs] for cs in state["task_classes"]]
        for key in ("task_step", "n_batches", "n_learned", "mask_updates"):
            setattr(self, key, int(state[key]))
        self.share_reported = float(state["share_reported"])
        self.warned = bool(state["warned"])
        self.exhausted = [int(t) for t in state["exhausted"]]
        if not state["built"]:
            return
        self._build(int(state["input_dim"]))
        for t in range(len(self.task_keys)):
            self._add_part(t)
        torch_core.load_module_state(self._net, state["net"])
        device = self._device()
        self.frozen = [f.to(device) for f in state["frozen"]]
        self.task_masks = [[m.to(device) for m in masks] for masks in state["task_masks"]]
        self._generator = torch_core.load_generator_state(state["generator"])
        if state["current"] is not None:
            t = self.current = int(state["current"])
            self._active = [a.to(device) for a in state["active"]]
            self._reused = [r.to(device) for r in state["reused"]]
            self._ever = [e.to(device) for e in state["ever"]]
            self._constant = [masked(w, r).detach() for w, r in zip(self._net.weights, self._reused)]
            self._moments = [[m.to(device), v.to(device)] for m, v in state["moments"]]
            self._optimiser = self._make_optimiser(t)
            torch_core.load_optimiser_state(self._optimiser, state["optimiser"])
            self._cache_flops()


def _flag(name: str, value: Any) -> bool:
    """A boolean option; the words true/false (any case), yes/no and 1/0 as a configuration file or
    command line gives them, so that the text "False" never reads as True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, (str, int)) and str(value).strip().lower() in words:
        return words[str(value).strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")
