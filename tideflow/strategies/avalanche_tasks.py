"""Task-level experiences for `AvalancheStrategy` (``experiences="task"``).

In this mode every batch of a task is a sub-experience of one Avalanche experience, the task:
each batch is trained on as it arrives (a stream is seen once), but the memory plugins
consolidate once, at the task's end, instead of after every batch:

* EWC: one table of importances and one copy of the parameters per task;
* LwF: the teacher is the model at the last task boundary, and the classes it distils are those
  of the finished tasks;
* Replay (its default experience-balanced storage): one buffer group per task, filled by reservoir
  sampling over all of the task's rows, joining the replayed memory at the task's end;
* Avalanche's clock counts tasks as its training experiences (EWC reads that count as "how many
  experiences are consolidated").

How Avalanche does it, and where we depart. Avalanche's online scenarios cut an experience into
sub-experiences (``OnlineCLExperience``) that carry ``is_first_subexp`` / ``is_last_subexp``, and
a plugin that should act once per task checks ``_at_task_boundary(experience, before=False)`` in
its ``after_training_exp`` (``FeatureDistillationPlugin`` does; the optimiser and model
adaptation check ``before=True``). Two things keep us from using that as it is:

* the flags must be known when a sub-experience is trained, whereas a stream learns that a task
  ended only afterwards (``on_task_boundary`` comes after the task's last rows were learned);
* in the installed Avalanche, EWC, LwF and Replay do not check the flags: in Avalanche's own
  online runs they consolidate after every sub-experience, which is our ``"batch"`` mode.

Each batch is still a plain experience to Avalanche's loop, so the model adaptation and the
optimiser update it does before every experience run per batch: a no-op for networks without
dynamic modules and an SGD whose state is not reset (the adapter's). What the adapter changes
is the memory plugins' ``after_training_exp``: it holds them back (`TaskExperiences` replaces
the template's ``_after_training_exp`` dispatch) and does their consolidation itself when the
task ends, with Avalanche's own pieces (``EWCPlugin.compute_importances`` and
``update_importances``, ``copy_params_dict``, ``ReservoirSamplingBuffer``,
``get_group_lengths``) and in the order their ``after_training_exp`` would. Memory is bounded by
the plugins' own, not by the task's length: nothing keeps a task's rows. That is why two
quantities are gathered along the task instead of from its rows at its end:

* EWC's importances are the mean squared minibatch gradient over all the task's minibatches,
  each batch's taken right after it was learned (the computation ``"batch"`` mode does after
  every batch, pooled into one table per task), not all at the task's final parameters.
  Estimating the Fisher along the training path is what EWC++ (Chaudhry et al., ECCV 2018)
  does, there as a moving average; the parameters EWC anchors to are the task's final ones, as
  in EWC. Gradients shrink as a task is learned, so these importances are larger than
  end-of-task ones and an ``ewc_lambda`` weighs more than in Avalanche's offline use (and less
  than in ``"batch"`` mode, whose penalty has one term per batch learned).
* Replay's group for the task is a reservoir updated with each batch (uniform weights, the top
  ``size`` kept: the same sample distribution as one update over the task's rows); it is
  replayed only once the task has ended, as in Avalanche's offline experiences.

Other plugins whose ``after_training_exp`` the adapter does not know how to hold back (Replay
with another storage policy, GEM, SI, a user's own) keep Avalanche's own online behaviour and
run after every batch; their memory is not in the snapshot either, and the snapshot's
``"not_in_snapshot"`` names them.

Everything pending (rows learned since the last consolidation, EWC's pooled gradients, LwF's
classes of the current task, Replay's group being filled) is plain data in the snapshot, so a
strategy restored mid-task learns on and consolidates at the boundary exactly as the original.
"""

from __future__ import annotations

import copy
import math
from typing import Any

#: plugins that hold no memory a task must consolidate (the clock's counters are saved apart)
_NO_MEMORY = frozenset({"Clock", "PeriodicEval", "EvaluationPlugin"})


def plugin_kind(plugin: Any) -> str | None:
    """``"replay"``, ``"ewc"`` or ``"lwf"`` for a plugin whose memory the adapter saves and
    consolidates per task (Replay only with its default experience-balanced reservoir storage),
    else None."""
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

    if isinstance(plugin, ReplayPlugin):
        sp = plugin.storage_policy
        if type(sp) is ExperienceBalancedBuffer and all(
                type(g) is ReservoirSamplingBuffer for g in sp.buffer_groups.values()):
            return "replay"
        return None
    if isinstance(plugin, EWCPlugin):
        return "ewc"
    if isinstance(plugin, LwFPlugin):
        return "lwf"
    return None


def holds_no_memory(plugin: Any) -> bool:
    return type(plugin).__name__ in _NO_MEMORY


class TaskExperiences:
    """The consolidation a task owes to the memory plugins of one Avalanche template.

    `after_sub_experience` takes the place of the template's ``after_training_exp`` dispatch
    while a batch (a sub-experience) is trained: it gathers what each known plugin needs at the
    task's end and calls every other plugin's ``after_training_exp`` as Avalanche would.
    `consolidate` does, at the task's end, what the known plugins' ``after_training_exp`` do at
    the end of an experience. Invariant: between two consolidations, ``rows`` counts the rows
    learned and ``pending`` holds exactly what those rows contributed.
    """

    def __init__(self, template: Any) -> None:
        self.template = template
        #: "task" mode in use: hold the consolidation back; else the template's own dispatch
        self.active = False
        self.rows = 0
        self.consolidations = 0
        # plugin index in template.plugins -> what its task has gathered so far
        self.pending: dict[int, dict[str, Any]] = {}

    # -- while a task is learned ------------------------------------------------------------
    def after_training_exp(self, **kwargs: Any) -> None:
        """Installed as the template's ``_after_training_exp``."""
        if self.active:
            self.after_sub_experience(**kwargs)
        else:
            type(self.template)._after_training_exp(self.template, **kwargs)

    def after_sub_experience(self, **kwargs: Any) -> None:
        """A batch was trained on (Avalanche's ``after_training_exp`` point), in plugin order."""
        from avalanche.training.plugins.clock import Clock

        t = self.template
        data = t.experience.dataset
        for i, p in enumerate(t.plugins):
            kind = plugin_kind(p)
            if kind == "ewc":
                self._gather_ewc(i, p, data, kwargs)
            elif kind == "lwf":
                self._gather_lwf(i, data)
            elif kind == "replay":
                self._gather_replay(i, p, data)
            elif isinstance(p, Clock):
                # every counter but the experience count, which counts tasks here
                continue
            elif hasattr(p, "after_training_exp"):
                p.after_training_exp(t, **kwargs)
        self.rows += len(data)

    def _gather_ewc(self, i: int, plugin: Any, data: Any, kwargs: dict[str, Any]) -> None:
        """Squared gradients of the task's rows in minibatches of ``train_mb_size``, in arrival
        order, as Avalanche's loader cuts an experience's rows: rows short of a full minibatch
        wait (at most ``train_mb_size - 1`` of them) for the next batch or the task's end. A
        minibatch's squared mean gradient grows as the minibatch shrinks, so a stream the engine
        cuts into pieces of a row or two (a task id flickering at a task's edge) would otherwise
        inflate the importances until SGD diverges."""
        acc = self.pending.setdefault(i, {"kind": "ewc", "sum": {}, "minibatches": 0, "carry": None})
        if acc["carry"] is not None and len(acc["carry"]):
            data = acc["carry"].concat(data)
        size = self.template.train_mb_size
        full = len(data) // size * size
        if full:
            self._add_importances(plugin, acc, data.subset(range(full)), kwargs)
        acc["carry"] = data.subset(range(full, len(data)))

    def _add_importances(self, plugin: Any, acc: dict[str, Any], data: Any, kwargs: dict[str, Any]) -> None:
        t = self.template
        imp = plugin.compute_importances(t.model, t._criterion, t.optimizer, data, t.device, t.train_mb_size,
                                         num_workers=kwargs.get("num_workers", 0))
        # compute_importances returns the mean over its minibatches: weigh it back to a sum
        minibatches = math.ceil(len(data) / t.train_mb_size)
        for name, p in imp.items():
            part = p.data * minibatches
            acc["sum"][name] = part if name not in acc["sum"] else acc["sum"][name] + part
        acc["minibatches"] += minibatches

    def _gather_lwf(self, i: int, data: Any) -> None:
        from avalanche.models import MultiTaskModule

        acc = self.pending.setdefault(i, {"kind": "lwf", "classes": {}})
        # Avalanche's LwF distils a single-head model's outputs under task key 0 only: a
        # single-head model's classes go there whatever the task, else LwF would distil the
        # classes of task 0 alone
        multi = isinstance(self.template.model, MultiTaskModule)
        for task in data.targets_task_labels.uniques:
            key = int(task) if multi else 0
            acc["classes"].setdefault(key, set()).update(int(c) for c in data.task_set[task].targets.uniques)

    def _gather_replay(self, i: int, plugin: Any, data: Any) -> None:
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        sp = plugin.storage_policy
        acc = self.pending.get(i)
        if acc is None:
            # the size this task's group will have once it joins (the groups share mem_size)
            acc = self.pending[i] = {"kind": "replay",
                                     "group": ReservoirSamplingBuffer(sp.get_group_lengths(sp._num_exps + 1)[-1])}
        acc["group"].update_from_dataset(data)

    # -- at the task's end ------------------------------------------------------------------
    def consolidate(self) -> bool:
        """The task ended: consolidate every known plugin once, count the task as an experience
        of Avalanche's clock. A task with no row learned consolidates nothing (False)."""
        if self.rows == 0:
            return False
        t = self.template
        for i, p in enumerate(t.plugins):
            acc = self.pending.get(i)
            if acc is None:
                continue
            if acc["kind"] == "ewc":
                self._consolidate_ewc(p, acc)
            elif acc["kind"] == "lwf":
                lwf = p.lwf
                lwf.expcount += 1
                lwf.prev_model = copy.deepcopy(t.model)
                for key, classes in acc["classes"].items():
                    lwf.prev_classes_by_task[key] = set(lwf.prev_classes_by_task.get(key, set())) | classes
            else:
                sp = p.storage_policy
                sp._num_exps += 1
                lengths = sp.get_group_lengths(sp._num_exps)
                sp.buffer_groups[sp._num_exps - 1] = acc["group"]
                for size, group in zip(lengths, sp.buffer_groups.values()):
                    group.resize(t, size)
        t.clock.train_exp_counter += 1
        self.pending = {}
        self.rows = 0
        self.consolidations += 1
        return True

    def _consolidate_ewc(self, plugin: Any, acc: dict[str, Any]) -> None:
        """What ``EWCPlugin.after_training_exp`` does, with the task's pooled importances."""
        from avalanche.training.utils import ParamData, copy_params_dict

        t = self.template
        if acc["carry"] is not None and len(acc["carry"]):
            self._add_importances(plugin, acc, acc["carry"], {})  # the task's last, shorter minibatch
        k = t.clock.train_exp_counter
        importances = {name: ParamData(name, tuple(s.shape), init_tensor=s / acc["minibatches"], device=s.device)
                       for name, s in acc["sum"].items()}
        plugin.update_importances(importances, k)
        plugin.saved_params[k] = copy_params_dict(t.model)
        if k > 0 and not plugin.keep_importance_data:
            del plugin.saved_params[k - 1]

    # -- snapshot ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        cpu = lambda x: x.detach().cpu().clone()  # noqa: E731
        pending = []
        for i, acc in sorted(self.pending.items()):
            if acc["kind"] == "ewc":
                carry = tensors(acc["carry"]) if acc["carry"] is not None else None
                pending.append({"index": i, "kind": "ewc", "minibatches": int(acc["minibatches"]),
                                "sum": [[n, cpu(s)] for n, s in acc["sum"].items()],
                                "carry": None if carry is None else {"x": carry[0], "y": carry[1], "t": carry[2]}})
            elif acc["kind"] == "lwf":
                pending.append({"index": i, "kind": "lwf",
                                "classes": [[int(k), sorted(cs)] for k, cs in sorted(acc["classes"].items())]})
            else:
                g = acc["group"]
                x, y, tasks = tensors(g.buffer)
                pending.append({"index": i, "kind": "replay", "x": x, "y": y, "t": tasks,
                                "weights": cpu(g._buffer_weights), "max_size": int(g.max_size)})
        return {"rows": self.rows, "consolidations": self.consolidations, "pending": pending}

    def load(self, state: dict[str, Any], device: Any) -> None:
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        self.rows = int(state.get("rows", 0))
        self.consolidations = int(state.get("consolidations", 0))
        self.pending = {}
        for acc in state.get("pending", []):
            i, kind = acc["index"], acc["kind"]
            if i >= len(self.template.plugins) or plugin_kind(self.template.plugins[i]) != kind:
                raise ValueError(f"snapshot holds a pending {kind} consolidation for plugin {i}, which this "
                                 f"strategy's template does not have there")
            if kind == "ewc":
                carry = acc.get("carry")
                self.pending[i] = {"kind": "ewc", "minibatches": acc["minibatches"],
                                   "sum": {n: s.clone().to(device) for n, s in acc["sum"]},
                                   "carry": None if carry is None else dataset(carry["x"], carry["y"], carry["t"])}
            elif kind == "lwf":
                self.pending[i] = {"kind": "lwf", "classes": {int(k): set(cs) for k, cs in acc["classes"]}}
            else:
                g = ReservoirSamplingBuffer(acc["max_size"])
                g.buffer = dataset(acc["x"], acc["y"], acc["t"])
                g._buffer_weights = acc["weights"].clone()
                self.pending[i] = {"kind": "replay", "group": g}


def dataset(x: Any, y: Any, tasks: Any = None) -> Any:
    """Rows as the task-aware classification dataset Avalanche's plugins expect; ``tasks``: each
    row's Avalanche task label (a tensor, an int for all rows, or None for task 0)."""
    import torch
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareClassificationDataset
    from torch.utils.data import TensorDataset

    if tasks is None or isinstance(tasks, int):
        tasks = torch.full((len(y),), int(tasks or 0), dtype=torch.long)
    # task-aware: LwF and other plugins look up the experience's task set
    return TaskAwareClassificationDataset(
        [TensorDataset(x, y)],
        data_attributes=[
            DataAttribute(y, "targets"),
            DataAttribute(tasks, "targets_task_labels", use_in_getitem=True),
        ],
    )


def tensors(data: Any) -> tuple[Any, Any, Any]:
    """The (x, y, task label) tensors of an Avalanche dataset's rows, in its order."""
    import torch

    if len(data) == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    rows = [data[i] for i in range(len(data))]
    return (torch.stack([torch.as_tensor(r[0]) for r in rows]),
            torch.as_tensor([int(r[1]) for r in rows], dtype=torch.long),
            torch.as_tensor([int(r[-1]) for r in rows], dtype=torch.long))
