"""Any Avalanche `SupervisedTemplate` strategy as a tideflow strategy.

Each batch is trained on as it arrives, as a small Avalanche experience: a
classification dataset of the batch's rows, trained on with the strategy's own
loop and plugins (Naive, Replay, EWC, LwF, ... by name, or any factory returning
a `SupervisedTemplate`). Prediction is the model's argmax in eval mode.

What an experience is (``experiences=``):

* ``"batch"``: every batch is an experience of its own: the plugins consolidate
  after every batch (EWC's importances, LwF's teacher, Replay's groups), as they do
  in Avalanche's own online runs. For task-free streams.
* ``"task"``: every batch of a task is a sub-experience of one experience, the task;
  the plugins consolidate once per task, when the engine signals the task's end
  (``on_task_boundary``) or when a task id never seen before appears in the schema's
  task column after rows of another task (`tideflow.strategies.avalanche_tasks` says
  how, and where this departs from Avalanche's online sub-experiences). The Avalanche
  task label of a sub-experience is the index, in order of first appearance, of the
  task being learned (the task id itself on streams whose tasks are 0, 1, 2, ... in
  order), 0 on a stream without task column.
* ``"auto"`` (default): ``"task"`` when the schema the strategy is bound to has a task
  column, else ``"batch"``. Streams without task column therefore learn exactly as
  before this option existed; on a task stream Naive learns the same in both modes
  (it has nothing to consolidate; tested), so no earlier result moves.

``describe()`` names the mode (``experiences=task``) whenever it is ``"task"`` or was
asked for by name; a description without it is the per-batch mode, as before the
option existed, so that those graphs and their checkpoints keep their fingerprint.

Departures, and why:

* Avalanche shuffles minibatches with torch's global generator; we reseed it
  from (seed, number of batches learned) before every ``train`` call so that
  the same stream gives the same model in any process (the local and the Ray
  runner must agree exactly).
* ``snapshot`` holds the model's and the optimiser's state dicts, Avalanche's
  training clock, and the memories of the plugins behind Replay, EWC and LwF:
  the replay buffer's groups (rows as tensors, with their reservoir weights),
  EWC's saved parameters and importances per experience, LwF's previous model
  and the classes it has seen per task; in ``"task"`` mode also what the current
  task owes its consolidation and the task labels given so far. A restored strategy
  then learns on exactly as the original would, mid-task included (tested for all
  four). A plugin of another kind
  keeps its memory out of the snapshot: its class name is listed under
  ``"not_in_snapshot"``, so that a checkpoint says what it does not hold (Replay
  with a storage policy other than its default experience-balanced one too).
* Rows it cannot train on are left out of the batch's experience and counted in
  ``StepReport.skipped``: ``"null_target"`` (no label), ``"label_out_of_range"`` (a
  label outside ``0 .. n_classes - 1``; the same reasons as every classifier that skips
  bad labels row by row, `tideflow.strategies.base.class_labels`) and ``"null_feature"``
  (a null, NaN or infinite value in any feature of a row with a usable label). A row
  with a missing feature would otherwise make the loss NaN, and the SGD step would turn
  every weight into NaN for good (every later prediction the same class); a label out of
  range would fail the loss and, before, cost the whole batch. The other rows are
  learned exactly as a batch without the bad ones would be; a batch with no row left
  trains nothing (``fits`` 0, its rows counted). A label column that is not integers
  is a `SchemaError`. Every row is still predicted and scored. Predicting a
  row with a missing feature gives NaN logits, hence class 0 (torch's argmax takes the
  first NaN): such a row's prediction means nothing, and this adapter does not impute.
* In ``"batch"`` mode EWC in its default ``mode="separate"`` keeps one copy of the
  parameters and one of the importances per batch learned: its memory (and its
  snapshots) grow with the stream. For a long-lived job use
  ``strategy_kwargs={"mode": "online", "decay_factor": ...}``, which keeps one
  (``"task"`` mode keeps one per task).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.events import TaskBoundary
from tideflow.stream.schema import Schema
from tideflow.strategies.avalanche_tasks import TaskExperiences, dataset as _dataset, holds_no_memory, plugin_kind
from tideflow.strategies.avalanche_tasks import tensors as _tensors
from tideflow.strategies.base import ClassScores, StepReport, Strategy, class_labels

#: what ``experiences=`` takes (module docstring)
EXPERIENCES = ("auto", "batch", "task")


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_mlp(n_inputs: int, n_classes: int, hidden: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))



@contextlib.contextmanager
def _quiet() -> Any:
    """No warnings from Avalanche inside: its ``@deprecated`` calls ``simplefilter("once")`` on
    every call, which undoes an "ignore" filter and, with filters changing per batch, prints
    its message once per batch (a 10-minute run logged thousands). Hiding the display too
    (restored on exit) keeps worker logs readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.showwarning = lambda *args, **kwargs: None
        yield

class AvalancheStrategy(Strategy):
    """Adapter over an Avalanche supervised strategy (classification).

    Args:
        strategy: an ``avalanche.training`` class name (``"Naive"``, ``"Replay"``,
            ``"EWC"``, ``"LwF"``, ...) or a callable
            ``(model, optimizer, criterion, device) -> SupervisedTemplate``.
        n_classes: number of classes of the target.
        target / features: columns (default: the schema's); features may be any
            scalar and tensor columns (tensors flattened), concatenated in order.
        hidden: width of the default one-hidden-layer MLP.
        model: optional ``callable(n_inputs, n_classes) -> nn.Module``.
        lr: SGD learning rate.  epochs: passes over each batch.  mb_size: minibatch size.
        strategy_kwargs: extra arguments of the Avalanche strategy (e.g. ``mem_size``).
        seed: seeds the model's initial weights and the minibatch shuffling.
        device: ``"auto"`` (CUDA when this process has a GPU), ``"cpu"`` or ``"cuda"``.
        experiences: ``"batch"`` (every batch an experience), ``"task"`` (every task an
            experience, its batches sub-experiences, plugins consolidated at the task's end)
            or ``"auto"`` (``"task"`` when the bound schema has a task column, else
            ``"batch"``); see the module docstring. ``mode`` is the one in use.
    """

    problem = "classification"

    def __init__(
        self,
        strategy: str | Callable[..., Any] = "Naive",
        *,
        n_classes: int,
        target: str | None = None,
        features: list[str] | None = None,
        hidden: int = 64,
        model: Callable[[int, int], Any] | None = None,
        lr: float = 0.05,
        epochs: int = 1,
        mb_size: int = 32,
        strategy_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        device: str = "auto",
        experiences: str = "auto",
    ) -> None:
        if experiences not in EXPERIENCES:
            raise ValueError(f"AvalancheStrategy: experiences={experiences!r}; use one of {EXPERIENCES}")
        self.strategy = strategy
        self.n_classes = n_classes
        self.target = target
        self.features = list(features) if features is not None else None
        self.hidden = hidden
        self.model = model
        self.lr = lr
        self.epochs = epochs
        self.mb_size = mb_size
        self.strategy_kwargs = dict(strategy_kwargs or {})
        self.seed = seed
        self.device = device
        self.experiences = experiences
        self._task_column: str | None = None  # the bound schema's task column
        self._template: Any = None
        self._tasks: TaskExperiences | None = None
        self._net: Any = None
        self._optimizer: Any = None
        self.n_batches = 0
        self.n_learned = 0
        # "task" mode: the stream task id of the rows learned since the last consolidation, and
        # each task id's Avalanche task label (its index in order of first appearance)
        self._task: Any = None
        self._labels: dict[Any, int] = {}

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"strategy": "Naive", "n_classes": 2, "hidden": 8}

    def bind(self, schema: Schema) -> None:
        super().bind(schema)
        self._task_column = schema.task

    @property
    def mode(self) -> str:
        """The experiences in use: ``"task"`` or ``"batch"`` (``"auto"`` resolved by the bound schema)."""
        if self.experiences == "auto":
            return "task" if self._task_column is not None else "batch"
        return self.experiences

    @property
    def consolidations(self) -> int:
        """Tasks consolidated so far (``"task"`` mode; 0 before the first)."""
        return self._tasks.consolidations if self._tasks is not None else 0

    def describe(self) -> str:
        name = self.strategy if isinstance(self.strategy, str) else getattr(self.strategy, "__name__", "custom")
        # the mode is named unless it is the per-batch one by default (module docstring: fingerprints)
        mode = f", experiences={self.mode}" if self.mode == "task" or self.experiences != "auto" else ""
        return f"AvalancheStrategy({name}, n_classes={self.n_classes}, hidden={self.hidden}, lr={self.lr}{mode})"

    # -- model ----------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> np.ndarray:
        assert self.features is not None
        return batch.features(self.features, dtype=np.float32)

    def _build(self, n_inputs: int) -> None:
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        net = (self.model or (lambda d, k: default_mlp(d, k, self.hidden)))(n_inputs, self.n_classes)
        device = pick_device(self.device)
        self._net = net.to(device)
        self._optimizer = torch.optim.SGD(self._net.parameters(), lr=self.lr)
        criterion = nn.CrossEntropyLoss()
        self._counter = _TrainCounter()
        if callable(self.strategy):
            self._template = self.strategy(self._net, self._optimizer, criterion, device)
            self._template.plugins.append(self._counter)
            self._dispatch()
            return
        from avalanche import training
        from avalanche.training.plugins import EvaluationPlugin

        cls = getattr(training, self.strategy, None)
        if cls is None:
            raise ValueError(f"avalanche.training has no strategy {self.strategy!r}")
        with _quiet():
            self._template = cls(
                model=self._net,
                optimizer=self._optimizer,
                criterion=criterion,
                train_mb_size=self.mb_size,
                train_epochs=self.epochs,
                device=device,
                evaluator=EvaluationPlugin(),
                eval_every=-1,
                **self.strategy_kwargs,
            )
        self._template.plugins.append(self._counter)
        self._dispatch()

    def _dispatch(self) -> None:
        """The template's end-of-experience callbacks go through `TaskExperiences`, which holds
        the memory plugins' consolidation back to the task's end while ``active`` (set from the
        mode before every ``train``: a strategy may be built by ``restore`` before it is bound)
        and is the template's own dispatch otherwise. A bound method, not a closure, so that a
        deep copy or a pickle of a built strategy keeps calling its own copy."""
        self._tasks = TaskExperiences(self._template)
        self._template._after_training_exp = self._tasks.after_training_exp

    def _ensure(self, batch: Batch) -> None:
        if self._net is None:
            self._build(self._inputs(batch.slice(0, 1)).shape[1])

    # -- the contract -------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        if not len(batch):
            return StepReport()
        import torch
        from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

        self._check_columns(batch, need_target=True)
        assert self.target is not None
        start = time.perf_counter()
        # rows it cannot train on (module docstring): counted, left out of the experience, each
        # costing only itself; labels first (`class_labels`, the reasons every classifier that
        # skips bad labels row by row gives), then non-finite features among the labelled rows.
        # Parsed before the net is built, so that a column that is not integers (a SchemaError)
        # changes nothing
        y_all, use, skipped = class_labels(batch, self.target, self.n_classes, "AvalancheStrategy")
        self._ensure(batch)
        inputs = self._inputs(batch)
        finite = np.isfinite(inputs).all(axis=1)
        if (use & ~finite).any():
            skipped["null_feature"] = int((use & ~finite).sum())
        use &= finite
        if not use.any():
            return StepReport(samples=len(batch), train_seconds=time.perf_counter() - start, skipped=skipped)
        if not use.all():
            inputs, y_all = inputs[use], y_all[use]
        x = torch.from_numpy(inputs)
        y = torch.from_numpy(y_all)
        assert self._tasks is not None
        self._tasks.active = self.mode == "task"
        self._counter.rows = 0
        for lo, hi, task in self._task_runs(batch, use):
            label = self._enter_task(task) if self.mode == "task" else 0
            data = _dataset(x[lo:hi], y[lo:hi], label)
            experience = benchmark_from_datasets(train=[data]).train_stream[0]
            torch.manual_seed(self.seed * 1_000_003 + self.n_batches)
            with _quiet():
                self._template.train(experience)
            self.n_batches += 1
        self.n_learned += len(y)
        # samples: the batch's new rows; train_rows: what went through the net (epochs x
        # (batch + replayed rows)); flops: ~6 x parameters x train_rows (forward 2, backward 4
        # multiply-adds per parameter and example: a dense-net estimate that leaves out the
        # extra forward passes of plugins such as LwF's old model)
        rows = self._counter.rows
        n_params = sum(p.numel() for p in self._net.parameters())
        return StepReport(samples=len(batch), fits=1, train_seconds=time.perf_counter() - start,
                          extra={"train_rows": float(rows), "flops": 6.0 * n_params * rows}, skipped=skipped)

    def _task_runs(self, batch: Batch, use: np.ndarray) -> list[tuple[int, int, Any]]:
        """The used rows as runs ``(start, stop, task)``, each learned as a sub-experience of
        ``task``: one run unless the mode is ``"task"``, the batch has the task column and a task
        id never seen before appears in it after rows of another task. The task being learned is
        the one named by the first id after a boundary (or ever); rows with a null id or the id
        of an earlier task (a blurry stream's mixing window, a revisit nobody signalled) are
        learned within it, so that a task id flickering at a task's edge ends no task."""
        n = int(use.sum())
        column = self._task_column
        if self.mode != "task" or column is None or column not in batch.column_names:
            return [(0, n, self._task)]
        ids = [t for t, u in zip(batch.column(column).to_pylist(), use) if u]
        seen = set(self._labels)
        runs: list[tuple[int, int, Any]] = []
        current, lo = self._task, 0
        for i, t in enumerate(ids):
            if t is None:
                continue
            if current is None:
                current = t
            elif t != current and t not in seen:
                if i > lo:
                    runs.append((lo, i, current))
                    lo = i
                current = t
            seen.add(t)
        runs.append((lo, n, current))
        return runs

    def _enter_task(self, task: Any) -> int:
        """Rows of ``task`` are next ("task" mode): when it is a new task after rows of another
        were learned, that task is consolidated first, as if its end had been signalled (the
        engine signals it unless the learn step is told not to; a strategy used on its own has
        no one to tell it). Returns the Avalanche task label of the run's rows: the task's
        index in the order tasks first appeared (0 without a task column)."""
        assert self._tasks is not None
        if self._task is not None and task != self._task and self._tasks.rows:
            with _quiet():
                self._tasks.consolidate()
        self._task = task
        if task is None:
            return 0
        return self._labels.setdefault(task, len(self._labels))

    def _logits(self, batch: Batch) -> Any:
        import torch

        self._check_columns(batch, need_target=False)
        self._ensure(batch)
        device = next(self._net.parameters()).device
        was_training = self._net.training
        self._net.eval()
        with torch.no_grad():
            logits = self._net(torch.from_numpy(self._inputs(batch)).to(device))
        self._net.train(was_training)
        return logits

    def predict(self, batch: Batch) -> pa.Array:
        if not len(batch):
            return pa.array([], type=pa.int64())
        return pa.array(self._logits(batch).argmax(dim=1).cpu().numpy().astype(np.int64))

    def predict_scores(self, batch: Batch) -> ClassScores:
        """The network's logits, one column per class 0 .. n_classes - 1."""
        classes = list(range(self.n_classes))
        if not len(batch):
            return ClassScores(np.zeros((0, self.n_classes), dtype=np.float32), classes)
        return ClassScores(self._logits(batch).cpu().numpy(), classes)

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        """``"task"`` mode: the task ended, its plugins consolidate (nothing when no row was
        learned since the last consolidation). ``"batch"`` mode: nothing to do, every batch was
        consolidated when it was learned."""
        if self.mode == "task" and self._tasks is not None:
            with _quiet():
                self._tasks.consolidate()
            self._task = None  # the next rows name the next task (a revisited one too)

    def snapshot(self) -> dict[str, Any]:
        if self._net is None:
            return {"built": False, "n_batches": self.n_batches, "n_learned": self.n_learned}
        to_cpu = lambda sd: {k: (v.detach().cpu().clone() if hasattr(v, "detach") else v) for k, v in sd.items()}  # noqa: E731
        first = next(self._net.parameters())
        return {
            "built": True,
            "n_inputs": int(first.shape[1]) if first.dim() == 2 else None,
            "model": to_cpu(self._net.state_dict()),
            "optimizer": self._optimizer.state_dict(),
            "n_batches": self.n_batches,
            "n_learned": self.n_learned,
            **self._plugin_state(),
            # "task" mode: the task being learned, its pending consolidation (in "batch" mode
            # nothing is ever pending), the task labels given so far
            "tasks": {"task": self._task, "labels": [[t, label] for t, label in self._labels.items()],
                      **self._tasks.state()} if self._tasks is not None else {},
        }

    def _plugin_state(self) -> dict[str, Any]:
        """Avalanche's clock and the memories of the Replay, EWC and LwF plugins, as tensors."""
        cpu = lambda t: t.detach().cpu().clone()  # noqa: E731
        clock = {k: int(v) for k, v in vars(self._template.clock).items() if type(v) is int}
        plugins: list[dict[str, Any]] = []
        missing: list[str] = []
        for p in self._template.plugins:
            kind = plugin_kind(p)
            # Replay's default policy; others (class-balanced: its seen classes) are listed as missing
            if kind == "replay":
                sp = p.storage_policy
                groups = []
                for key, g in sp.buffer_groups.items():
                    x, y, tasks = _tensors(g.buffer)
                    groups.append({"key": int(key), "x": x, "y": y, "t": tasks, "weights": cpu(g._buffer_weights),
                                   "max_size": int(g.max_size)})
                plugins.append({"kind": "replay", "groups": groups, "num_exps": int(getattr(sp, "_num_exps", 0)),
                                "max_size": int(sp.max_size)})
            elif kind == "ewc":
                table = lambda d: [[int(e), [[n, cpu(pd.data)] for n, pd in ps.items()]] for e, ps in d.items()]  # noqa: E731
                plugins.append({"kind": "ewc", "saved": table(p.saved_params), "importances": table(p.importances)})
            elif kind == "lwf":
                lwf = p.lwf
                prev = None if lwf.prev_model is None else {k: cpu(v) for k, v in lwf.prev_model.state_dict().items()}
                plugins.append({"kind": "lwf", "prev_model": prev, "expcount": int(lwf.expcount),
                                "classes": [[int(t), sorted(int(c) for c in cs)]
                                            for t, cs in lwf.prev_classes_by_task.items()]})
            elif not isinstance(p, _TrainCounter) and not holds_no_memory(p):
                missing.append(type(p).__name__)
        return {"clock": clock, "plugins": plugins, "not_in_snapshot": missing}

    def _load_plugin_state(self, state: dict[str, Any]) -> None:
        import copy
        from collections import defaultdict

        from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
        from avalanche.training.storage_policy import ReservoirSamplingBuffer
        from avalanche.training.utils import ParamData

        for k, v in state.get("clock", {}).items():
            setattr(self._template.clock, k, v)
        kinds = {"replay": ReplayPlugin, "ewc": EWCPlugin, "lwf": LwFPlugin}
        saved = list(state.get("plugins", []))
        device = next(self._net.parameters()).device
        for p in self._template.plugins:
            match = next((st for st in saved if isinstance(p, kinds[st["kind"]])), None)
            if match is None:
                continue
            saved.remove(match)
            if match["kind"] == "replay":
                sp = p.storage_policy
                sp.buffer_groups = {}
                for g in match["groups"]:
                    buf = ReservoirSamplingBuffer(g["max_size"])
                    buf.buffer = _dataset(g["x"], g["y"], g.get("t"))
                    buf._buffer_weights = g["weights"].clone()
                    sp.buffer_groups[g["key"]] = buf
                sp._num_exps = match["num_exps"]
                sp.max_size = match["max_size"]
            elif match["kind"] == "ewc":
                def table(rows: list[Any]) -> Any:
                    return defaultdict(dict, {e: {n: ParamData(n, tuple(t.shape), init_tensor=t.clone(), device=device)
                                                  for n, t in ps} for e, ps in rows})
                p.saved_params = table(match["saved"])
                p.importances = table(match["importances"])
            else:
                lwf = p.lwf
                if match["prev_model"] is None:
                    lwf.prev_model = None
                else:
                    lwf.prev_model = copy.deepcopy(self._net)
                    lwf.prev_model.load_state_dict(match["prev_model"])
                lwf.expcount = match["expcount"]
                lwf.prev_classes_by_task = defaultdict(set, {t: set(cs) for t, cs in match["classes"]})
        tasks = state.get("tasks") or {}
        self._task = tasks.get("task")
        self._labels = {t: int(label) for t, label in tasks.get("labels", [])}
        assert self._tasks is not None
        self._tasks.load(tasks, device)

    def restore(self, state: dict[str, Any]) -> None:
        self.n_batches = state["n_batches"]
        self.n_learned = state["n_learned"]
        if not state["built"]:
            self._net = self._template = self._optimizer = self._tasks = None
            self._task, self._labels = None, {}
            return
        if self._net is None:
            if state["n_inputs"] is None:
                raise ValueError("cannot rebuild a custom model whose input width is unknown; build it first")
            self._build(state["n_inputs"])
        self._net.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._load_plugin_state(state)


class _TrainCounter:
    """An Avalanche plugin that counts the examples of each training minibatch (replayed ones too)."""

    def __init__(self) -> None:
        self.rows = 0

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.rows += len(strategy.mb_x)

