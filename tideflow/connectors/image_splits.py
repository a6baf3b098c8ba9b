"""How an image data set becomes a continual-learning stream: the five splits.

A `SplitPlan` says, for every position of the stream, which training image comes there,
in which view (the domain task's rotation or permutation; view 0 is the image as it
is), and which task it belongs to; where tasks end; which test images are each task's
held-out set; and how the learner hears of task changes. Plans are made from labels and
a seed only (no pixels), so they are cheap and the same on every machine.

======================  =========================================================================
split                   what the learner sees
======================  =========================================================================
``class-incremental``   the classes, in a seeded order, cut into ``tasks`` groups; task t's
                        training rows (shuffled) follow task t-1's; no task id in the rows; the
                        source marks each task's last batch (``Batch.end_of_task``)
``task-incremental``    the same, with the task id in every row as the schema's ``task`` role
                        (the learner hears of a change through it; no marks needed)
``domain-incremental``  every task has every class: the training rows are cut into ``tasks``
                        stratified parts, part t shown in view t (rotated by ``180 t / tasks``
                        degrees, or a fixed seeded pixel permutation, or the named transforms of
                        a view list such as ``"clean;rot90;invert;flip+noise"``, one per task);
                        with ``rows_per_task="all"`` every task is instead the whole training
                        set (reshuffled per task) in its view, the standard permuted-MNIST
                        protocol; held out: the whole test set in each task's view; ends
                        marked, no task id
``blurry``              class-incremental, but within a window either side of each boundary
                        (``blur`` times the smaller neighbouring task's rows) the two tasks'
                        rows are shuffled together; the mark stays at the nominal boundary
``task-free``           class-incremental order (blurred when ``blur`` > 0) with no marks and
                        batches not cut at task ends: the learner is never told a boundary.
                        Each row still carries its class's task as the schema's ``task`` role
                        (for per-task scores and task-IL evaluation); a learn step keeps it
                        from becoming a boundary with ``boundaries=()``
                        (``ImageStream.boundaries``)
======================  =========================================================================

Held-out sets are per task: the test rows of the task's classes (domain: all test rows,
in the task's view). A task never ends inside a batch when its end is told (marks or
task id): batches are cut at task ends, so a mark always sits on a task's last row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("class-incremental", "task-incremental", "domain-incremental", "blurry", "task-free")
DOMAINS = ("rotation", "permutation")
#: the transforms a named view (``domain="clean;rot90;invert;flip+noise"``) joins with ``+``: rotation
#: by a number of degrees, the value range turned upside down, a left-right or top-bottom mirror, and
#: additive Gaussian noise of a fraction of the value range (default `DEFAULT_NOISE`), clipped to it
VIEW_TRANSFORMS = ("clean", "rot<degrees>", "invert", "flip", "vflip", "noise[<fraction>]")
DEFAULT_NOISE = 0.2
#: blur when none is given: blurry streams mix, task-free ones only hide the boundaries
DEFAULT_BLUR = {"blurry": 0.1, "task-free": 0.0}
#: what a domain-incremental task's training rows are: ``"share"``, a stratified 1/tasks of the training
#: rows (each row seen once in the stream); ``"all"``, every training row, in the task's view (the standard
#: permuted-MNIST benchmark of Goodfellow et al. 2013 and Kirkpatrick et al. 2017, where every task is the
#: whole data set under its own permutation)
ROWS_PER_TASK = ("share", "all")


@dataclass
class SplitPlan:
    """Where every stream position's image comes from, and what the learner is told (module docstring)."""

    split: str
    order: np.ndarray  # data-set row of each stream position
    view: np.ndarray  # view (domain task) of each stream position; 0 outside domain-incremental
    task: np.ndarray  # task of each stream position (the row's class's task; domain: its part)
    ends: list[int]  # stream positions where a task ends, between tasks only (the last task's end is the stream's)
    held_out: dict[int, tuple[np.ndarray, int]]  # task -> (data-set rows, view)
    task_classes: list[list[int]]
    class_order: list[int]
    task_column: bool  # rows carry the task id as the schema's task role
    marks: bool  # the source marks each task's last batch
    cut: bool  # batches end at task ends
    views: dict[int, Any] = field(default_factory=dict)  # view -> angle (rotation) or permutation

    @property
    def rows(self) -> int:
        return len(self.order)


def _check_tasks(tasks: Any) -> int:
    if isinstance(tasks, bool) or not isinstance(tasks, (int, np.integer)) or tasks < 1:
        raise ValueError(f"tasks must be a whole number >= 1, got {tasks!r}")
    return int(tasks)


def _class_order(classes: list[int], class_order: Any, rng: np.random.Generator) -> list[int]:
    if class_order is None:
        return [int(c) for c in rng.permutation(classes)]
    if isinstance(class_order, str):
        class_order = [int(v) for v in class_order.replace(",", ";").split(";") if v.strip()]
    order = [int(c) for c in class_order]
    missing = sorted(set(classes) - set(order))
    extra = sorted(set(order) - set(classes))
    if missing or extra or len(order) != len(set(order)):
        raise ValueError(f"class_order must list every class once: classes {classes}, got {order}"
                         + (f" (missing {missing})" if missing else "") + (f" (not classes: {extra})" if extra else ""))
    return order


def parse_views(domain: Any) -> list[list[tuple[str, float]]] | None:
    """A named view list (``"clean;rot90;invert;flip+noise"`` or a list of such names) as, per view,
    its transforms in order with their number (degrees, noise fraction; 0 where none); None when
    ``domain`` is one of `DOMAINS`. An unknown transform is a ValueError naming it.

    >>> parse_views("clean;rot90;flip+noise0.1")
    [[], [('rot', 90.0)], [('flip', 0.0), ('noise', 0.1)]]
    """
    if isinstance(domain, str) and domain in DOMAINS:
        return None
    names = domain.split(";") if isinstance(domain, str) else list(domain)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"unknown domain {domain!r}; known: {list(DOMAINS)} or a list of named views "
                         f"(transforms {list(VIEW_TRANSFORMS)} joined with '+', views with ';')")
    views = []
    for name in names:
        steps: list[tuple[str, float]] = []
        for part in name.split("+"):
            part = part.strip()
            if part in ("clean", "none"):
                continue
            if part in ("invert", "flip", "vflip"):
                steps.append((part, 0.0))
                continue
            for prefix, default in (("rot", None), ("noise", DEFAULT_NOISE)):
                if part.startswith(prefix):
                    tail = part[len(prefix):]
                    try:
                        value = float(tail) if tail else default
                    except ValueError:
                        value = None
                    if value is None or not np.isfinite(value) or (prefix == "noise" and value <= 0):
                        raise ValueError(f"view {name!r}: {part!r} needs a number ({prefix}90, noise0.2)")
                    steps.append((prefix, float(value)))
                    break
            else:
                raise ValueError(f"unknown domain {domain!r}: view {name!r} has an unknown transform {part!r}; "
                                 f"known domains: {list(DOMAINS)}, or named views (transforms "
                                 f"{list(VIEW_TRANSFORMS)} joined with '+', views with ';')")
        views.append(steps)
    return views


def view_names(domain: Any) -> list[str]:
    """The names of a named view list, one per view (``"clean;rot90"`` -> ``["clean", "rot90"]``)."""
    names = domain.split(";") if isinstance(domain, str) else list(domain)
    return [str(n).strip() for n in names if str(n).strip()]


def plan_split(split: str, y: np.ndarray, train: np.ndarray, test: np.ndarray, *, tasks: int, seed: int,
               class_order: Any = None, blur: float | None = None, domain: str = "rotation",
               pixels: int = 0, rows_per_task: str = "share") -> SplitPlan:
    """The plan of ``split`` over labels ``y`` with training rows ``train`` and test rows ``test``.

    ``pixels``: values per image (the permutation's length, domain-incremental only).
    ``rows_per_task``: domain-incremental only, one of `ROWS_PER_TASK`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    if rows_per_task not in ROWS_PER_TASK:
        raise ValueError(f"rows_per_task must be one of {list(ROWS_PER_TASK)}, got {rows_per_task!r}")
    if rows_per_task != "share" and split != "domain-incremental":
        raise ValueError(f"rows_per_task={rows_per_task!r} applies to the domain-incremental split only (a "
                         f"{split} task is the rows of its classes), got split={split!r}")
    tasks = _check_tasks(tasks)
    rng = np.random.default_rng(seed)
    classes = sorted({int(c) for c in y[train]})
    if split == "domain-incremental":
        return _domain(y, train, test, tasks, classes, rng, domain, pixels, seed, rows_per_task == "all")
    if blur is None:
        blur = DEFAULT_BLUR.get(split, 0.0)
    if split in ("class-incremental", "task-incremental") and blur:
        raise ValueError(f"blur applies to the blurry and task-free splits, not {split}")
    if not 0.0 <= float(blur) <= 0.5:
        raise ValueError(f"blur must be between 0 and 0.5 (a fraction of a task's rows), got {blur}")
    if tasks > len(classes):
        raise ValueError(f"{tasks} tasks need at least {tasks} classes; the training rows have {len(classes)}: "
                         f"{classes}")
    order_c = _class_order(classes, class_order, rng)
    groups = [[int(c) for c in g] for g in np.array_split(np.asarray(order_c), tasks)]
    parts, held = [], {}
    for t, group in enumerate(groups):
        rows = train[np.isin(y[train], group)]
        if not len(rows):
            raise ValueError(f"task {t} (classes {group}) has no training rows: it would be empty")
        parts.append(rng.permutation(rows))
        test_rows = test[np.isin(y[test], group)]
        if not len(test_rows):
            raise ValueError(f"task {t} (classes {group}) has no test rows: it would have no held-out set")
        held[t] = (test_rows, 0)
    order = np.concatenate(parts)
    task = np.concatenate([np.full(len(p), t, dtype=np.int64) for t, p in enumerate(parts)])
    ends = np.cumsum([len(p) for p in parts])[:-1].tolist()
    if blur:
        order, task = _blur(order, task, parts, ends, float(blur), rng)
    free = split == "task-free"
    return SplitPlan(split, order, np.zeros(len(order), dtype=np.int64), task, [int(e) for e in ends], held,
                     groups, order_c, task_column=split in ("task-incremental", "task-free"),
                     marks=split in ("class-incremental", "blurry"), cut=not free)


def _blur(order: np.ndarray, task: np.ndarray, parts: list[np.ndarray], ends: list[int], blur: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # windows never overlap: each reaches at most half of a neighbouring task (blur <= 0.5)
    order, task = order.copy(), task.copy()
    for t, p in enumerate(ends):
        w = int(blur * min(len(parts[t]), len(parts[t + 1])))
        if w:
            idx = np.arange(p - w, p + w)
            mixed = rng.permutation(idx)
            order[idx], task[idx] = order[mixed], task[mixed]
    return order, task


def _domain(y: np.ndarray, train: np.ndarray, test: np.ndarray, tasks: int, classes: list[int],
            rng: np.random.Generator, domain: str, pixels: int, seed: int, every_row: bool = False) -> SplitPlan:
    named = parse_views(domain)
    if named is not None and len(named) != tasks:
        raise ValueError(f"domain {domain!r} names {len(named)} views for {tasks} tasks: give one view per task")
    if tasks > len(train) and not every_row:
        raise ValueError(f"{tasks} tasks need at least {tasks} training rows, got {len(train)}")
    if not len(test):
        raise ValueError("no test rows: the tasks would have no held-out sets")
    if every_row:
        # every task is the whole training set in its own order; the generator is drawn from only on
        # this path, so the default ("share") plan of a seed stays what it always was
        parts = [rng.permutation(train) for _ in range(tasks)]
    else:
        shares: list[list[np.ndarray]] = [[] for _ in range(tasks)]
        for c in classes:  # stratified: every task gets an equal share of every class
            for t, part in enumerate(np.array_split(rng.permutation(train[y[train] == c]), tasks)):
                shares[t].append(part)
        parts = [rng.permutation(np.concatenate(s)) for s in shares]
    for t, p in enumerate(parts):
        if not len(p):
            raise ValueError(f"task {t} has no training rows: it would be empty")
    views: dict[int, Any] = {}
    for t in range(tasks):
        if named is not None:  # the view's name: what the source's transforms read
            views[t] = view_names(domain)[t]
        elif domain == "rotation":
            views[t] = 180.0 * t / tasks
        else:
            # view 0 is the images as they are, like rotation's 0 degrees, and as permuted-MNIST code
            # commonly has its first task; for a learner with no spatial prior (an MLP, whose random
            # initialisation is itself invariant to permuting its inputs) a fixed permutation of the
            # first task would pose the same problem
            views[t] = None if t == 0 else np.random.default_rng([seed, 1000 + t]).permutation(pixels)
    order = np.concatenate(parts)
    task = np.concatenate([np.full(len(p), t, dtype=np.int64) for t, p in enumerate(parts)])
    ends = np.cumsum([len(p) for p in parts])[:-1].tolist()
    return SplitPlan("domain-incremental", order, task.copy(), task, [int(e) for e in ends],
                     {t: (test, t) for t in range(tasks)}, [list(classes) for _ in range(tasks)], list(classes),
                     task_column=False, marks=True, cut=True, views=views)
