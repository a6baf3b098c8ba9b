"""The ``images`` pipeline: continual image classification, task-aware evaluation, and its comparison.

A split image stream (`tideflow.connectors.images.ImageStream`: scikit-learn's digits or
Fashion-MNIST, pixels or a frozen EfficientNet-Lite0's features; or a recording of one) goes
through one learn step per continual learner, all on the same batches:

* ``naive``, ``replay`` (200 rows), ``ewc``, ``lwf``: `AvalancheStrategy` on one MLP (one
  hidden layer of 256), plain SGD;
* ``prd``: `PrototypeDistillation` (Asadi et al., ICML 2023), replay-free;
* ``dkvb``: `KeyValueBottleneck` (Träuble et al., ICML 2023), keys fitted on the source's
  unlabeled rows before the first batch;
* ``dst``: `SparseTraining` (Yildirim et al., CPAL 2024), a sparse sub-network per task, frozen at
  the task's end. It needs a task id: the task column where the stream has one (task-IL); on a
  class-IL stream the task ends the stream marks (what every learner here is told), and with no
  task id at prediction it answers through the newest task's sub-network (the table's note);
* ``ear``: `EAR` (arXiv 2308.02084), a frozen encoder with adaptors grown where the HDC memories
  find a batch out of distribution (`ear_settings`: its own MLP encoder on pixels, none on a frozen
  encoder's features);
* ``iid``: the upper bound, the same MLP as ``naive`` trained on the same training rows in one
  seeded random order, without tasks (`iid_source`). It is a run of its own on that shuffled
  stream (``strategies=iid``), never a step beside the others: a learn step sees the stream
  the others see.

Every method makes the same ``epochs`` passes over each batch in minibatches of the same
``minibatch`` rows (EAR's passes at each batch go over its expert's current-task rows, at most
its window of 512, this batch's included: its method). The engine evaluates each task's held-out
rows before the first batch, at every task boundary and at the end of the stream, and
``RunResult.cl_metrics[step]`` holds the accuracy matrix R[i][j] with average accuracy,
forgetting, BWT and FWT; on a stream with a task column also the task-incremental ones
(``*_til``: predictions masked to the task's classes).

`run_job` is one run of the comparison (`tideflow.pipelines.ready.images_compare`, ``tideflow
compare images``: `PROTOCOL`, split Fashion-MNIST 5 x 2, class-IL and task-IL, pixels and
frozen-encoder features, 3 seeds, into ``results/images.{md,json}``); ``tideflow run images`` runs
`build`. What a run and the comparison measure and how the table is written:
`tideflow.pipelines.ready.images_results`.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import MemorySource, Source
from tideflow.connectors.images import ImageStream
from tideflow.pipelines.dsl import Pipeline
from tideflow.pipelines.ready.images_results import memory_kib, report, reset_peak, til_accuracy
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema
from tideflow.strategies.avalanche_adapter import AvalancheStrategy
from tideflow.strategies.base import Strategy
from tideflow.strategies.dkvb import KeyValueBottleneck
from tideflow.strategies.dst import SparseTraining
from tideflow.strategies.ear import EAR
from tideflow.strategies.prd import PrototypeDistillation

#: the continual learners, in table order; ``iid`` is the upper bound (a run of its own)
METHODS = ("naive", "replay", "ewc", "lwf", "prd", "dkvb", "dst", "ear")
ALL_METHODS = (*METHODS, "iid")
#: the Avalanche learners share one network: one hidden layer of this width
HIDDEN = 256
#: what every Avalanche method adds to plain SGD (``strategy_kwargs``), fixed before any run and
#: not tuned here: Replay's buffer is the issue's 200 rows; EWC's lambda is the one Hsu et al.
#: (2018, "Re-evaluating continual learning scenarios") use for an MLP on split MNIST; LwF's
#: weight and temperature are Li & Hoiem's (2016)
AVALANCHE = {
    "naive": ("Naive", {}),
    "replay": ("Replay", {"mem_size": 200}),
    "ewc": ("EWC", {"ewc_lambda": 100.0}),
    "lwf": ("LwF", {"alpha": 1.0, "temperature": 2.0}),
}
#: EWC when every batch is an Avalanche experience: one running importance (online EWC)
#: instead of a copy of the weights per batch, which would grow with the stream
EWC_PER_BATCH = {"mode": "online", "decay_factor": 0.9}
#: PRD on a stream that never tells a task's end: a new teacher after this many batches
TASK_FREE_PRD_EVERY = 10
#: SparseTraining as bench/dst.py runs it on split Fashion-MNIST, fixed before this comparison ran it:
#: the spec's hidden widths, density 0.2 with ERK layer densities, random growth, a mask update
#: every 50 steps, Adam 1e-3; its drop-rate cosine and learning-rate milestones run over one task's
#: optimiser steps, which `dst_steps_per_task` reads from the stream's plan (a stream does not
#: otherwise say how long a task is)
DST = {"hidden": (200, 200), "density": 0.2, "layer_density": "erk", "growth": "random", "update_every": 50,
       "lr": 1e-3}
#: the EfficientNet-Lite0 feature extractor's trained parameters (without its classifier): what
#: EAR's adaptor budget is a share of when the inputs are its features (bench/ear.py's figure)
EFFNET_PARAMS = 3_371_008

PROTOCOL: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "tasks": 5,
    "scenarios": {"class-IL": "class-incremental", "task-IL": "task-incremental"},
    "encoders": ["pixels", "efficientnet-lite0"],
    "seeds": [0, 1, 2],
    # chosen before any comparison ran, from the cost of a timing-only run: the whole
    # comparison must fit in an hour on 2 cores with the encoder's cache warm
    "train_per_class": 2000,
    "test_per_class": None,  # every test image (1000 per class)
    "batch_size": 64,
    "epochs": 5,
    "minibatch": 32,
    "methods": list(ALL_METHODS),
}

#: options of `build` that choose the pipeline's own stream (refused with a source given)
STREAM_OPTIONS = ("dataset", "split", "tasks", "encoder", "batch_size", "train_per_class", "test_per_class",
                  "image_size")
OPTIONS = (*STREAM_OPTIONS, "seed", "strategies", "epochs", "minibatch", "n_classes", "num_gpus")
DEFAULT_BOUNDARIES = ("task_column", "end_of_task")


# -- options ---------------------------------------------------------------------------------
def _integer(name: str, value: Any, minimum: int) -> int:
    """An integer option as Python or ``--set`` gives it (``3`` or ``"3"``)."""
    text = str(value).strip()
    ok = not isinstance(value, bool) and isinstance(value, (int, str, np.integer))
    if not (ok and text.lstrip("-").isdigit() and int(text) >= minimum):
        raise ValueError(f"images option {name} is an integer >= {minimum}, got {value!r}")
    return int(text)


def _optional_integer(name: str, value: Any, minimum: int) -> int | None:
    """An integer option that may be left out: None, or ``none`` / ``all`` on the command line."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "all")):
        return None
    return _integer(name, value, minimum)


def _names(option: str, value: Any, known: tuple[str, ...]) -> list[str]:
    """A list option given as a list or a comma list (``naive,dkvb``), each name known and once."""
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, (list, tuple)):
        names = [str(n).strip() for n in value]
    else:
        raise ValueError(f"images option {option} is a comma list such as {','.join(known[:2])}, got {value!r}")
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) < len(names):
        problem = f"unknown: {', '.join(unknown)}" if unknown else "none given" if not names else "a repeat"
        raise ValueError(f"images option {option} names some of {', '.join(known)}, each once; got {value!r} "
                         f"({problem})")
    return names


def strategy_names(strategies: Any = None) -> list[str]:
    """The learners a pipeline trains: all of `METHODS` by default; ``iid`` only alone."""
    if strategies is None:
        return list(METHODS)
    names = _names("strategies", strategies, ALL_METHODS)
    if "iid" in names and len(names) > 1:
        raise ValueError("images: iid trains on its own shuffled stream, so it runs alone (strategies=iid); "
                         f"the others ({', '.join(n for n in names if n != 'iid')}) run on the task stream")
    return names


def _refuse_unknown(unknown: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    if not unknown:
        return
    import difflib

    close = {k: difflib.get_close_matches(k, known, n=1) for k in sorted(unknown)}
    named = ", ".join(f"{k} (did you mean {c[0]}?)" if c else k for k, c in close.items())
    raise ValueError(f"unknown images {what} option(s) {named}; known: {', '.join(known)}")


# -- the learners ------------------------------------------------------------------------------
def avalanche_experiences(task_stream: bool) -> dict[str, Any]:
    """The `AvalancheStrategy` keyword that makes its plugins consolidate once per task on a task
    stream (an empty dict when the installed adapter has no such option: one experience per batch)."""
    params = inspect.signature(AvalancheStrategy.__init__).parameters
    if "experiences" in params:
        return {"experiences": "task" if task_stream else "batch"}
    return {}


def dst_steps_per_task(task_rows: list[int], *, batch_size: int, minibatch: int, epochs: int) -> int:
    """The optimiser steps SparseTraining makes on the longest task: ``epochs`` passes over each of
    its batches (``batch_size`` rows, the last one shorter where the task ends) in minibatches."""
    def steps(rows: int) -> int:
        full, rest = divmod(int(rows), batch_size)
        return epochs * (full * -(-batch_size // minibatch) + -(-rest // minibatch))
    return max([steps(r) for r in task_rows if r > 0] or [1])


def ear_settings(features: str | None) -> dict[str, Any]:
    """EAR's settings besides passes and minibatch, as bench/ear.py and docs/methods/ear.md fixed
    them before this comparison ran it. Pixels (or any table): the learner's defaults, its own MLP
    encoder (256, 128) trained on the first task and then frozen, adaptors of widths 4-32 within 5 %
    of that encoder's parameters. EfficientNet-Lite0's features: no encoder of its own (the features
    are a frozen encoder's), adaptors of widths 16-128 within 5 % of that feature extractor's."""
    if features is None or features == "pixels":
        return {}
    if features != "efficientnet-lite0":
        raise ValueError(f"images: EAR's adaptor budget is a share of the frozen encoder's parameters, known for "
                         f"efficientnet-lite0 only, not for {features!r}")
    return {"encoder": None, "max_params": int(0.05 * EFFNET_PARAMS), "widths": (16, 32, 64, 128)}


def make_strategy(name: str, *, n_classes: int, seed: int, epochs: int, minibatch: int, task_stream: bool = True,
                  augment: str = "auto", features: str | None = None, steps_per_task: int | None = None) -> Strategy:
    """One learner of the comparison with the protocol's settings (module docstring).

    ``task_stream``: the stream tells task ends (marks or a task column); on a task-free one PRD
    takes a teacher every `TASK_FREE_PRD_EVERY` batches, Avalanche's plugins consolidate per
    batch and SparseTraining learns one sub-network for the whole stream. ``augment``: PRD's
    augmentation (``"crop"`` for digits, which a flip turns into other digits). ``features``: what
    a row holds, None (pixels, or a table's values) or the frozen encoder whose features it is
    (`ear_settings`). ``steps_per_task``: SparseTraining's schedule length (`dst_steps_per_task`;
    None: the learner's default).
    """
    if name in AVALANCHE or name == "iid":
        kind, extra = AVALANCHE["naive" if name == "iid" else name]
        kwargs = dict(extra)
        mode = avalanche_experiences(task_stream and name != "iid")
        if name == "ewc" and mode.get("experiences") != "task":
            kwargs.update(EWC_PER_BATCH)
        return AvalancheStrategy(kind, n_classes=n_classes, hidden=HIDDEN, epochs=epochs, mb_size=minibatch,
                                 strategy_kwargs=kwargs, seed=seed, **mode)
    if name == "prd":
        return PrototypeDistillation(n_classes, epochs=epochs, minibatch=minibatch, augment=augment, seed=seed,
                                     boundary_every=None if task_stream else TASK_FREE_PRD_EVERY)
    if name == "dkvb":
        return KeyValueBottleneck(n_classes, epochs=epochs, minibatch=minibatch, seed=seed)
    if name == "dst":  # task_from="auto": the task column where the schema has one, else the boundaries
        steps = {} if steps_per_task is None else {"steps_per_task": int(steps_per_task)}
        return SparseTraining(n_classes, epochs=epochs, minibatch=minibatch, seed=seed, **DST, **steps)
    if name == "ear":
        return EAR(n_classes, epochs=epochs, minibatch=minibatch, seed=seed, **ear_settings(features))
    raise ValueError(f"unknown images strategy {name!r}; known: {', '.join(ALL_METHODS)}")


# -- the stream ------------------------------------------------------------------------------------
def _facts(source: Source) -> dict[str, Any]:
    """What the pipeline needs to know of a source: its classes, its boundaries, its data set.

    Refuses a source without a label target or without held-out rows per task (the engine's
    evaluation needs them): a clear error, before anything runs.
    """
    schema = source.schema()
    if schema.target is None:
        raise ValueError("images: the source declares no target (label) column; the pipeline learns to predict "
                         "its target role")
    ttype = schema.fields[schema.target].type
    if not pa.types.is_integer(ttype):
        raise ValueError(f"images: the target {schema.target!r} is {ttype}; the learners need integer class "
                         f"labels 0 .. n_classes - 1")
    meta = source.metadata()
    if isinstance(source, ImageStream):  # its plan knows the classes; held_out() would compute the data now
        classes = sorted({int(c) for cs in source.plan.task_classes for c in cs})
        has_held_out = bool(source.plan.held_out)
    else:
        held = source.held_out()
        has_held_out = bool(held)
        classes = sorted({int(c) for cs in meta.get("task_classes") or [] for c in cs})
        if held:
            for b in held.values():
                if schema.target not in b.column_names:
                    raise ValueError(f"images: the held-out rows have no {schema.target!r} column")
                classes = sorted(set(classes) | {int(v) for v in b.column(schema.target).to_pylist()
                                                 if v is not None})
    if not has_held_out:
        raise ValueError(f"images: the source {type(source).__name__} has no held-out rows per task "
                         f"(Source.held_out), which the engine evaluates at every task boundary; use an "
                         f"ImageStream, a recording of one ('tideflow record images:... -o d.arrow'), or a "
                         f"MemorySource with held_out=")
    if any(c < 0 for c in classes):
        raise ValueError(f"images: class labels must be 0 .. n_classes - 1, the held-out rows have {classes[:5]}")
    if isinstance(getattr(source, "boundaries", None), tuple):
        boundaries = tuple(source.boundaries)
    elif isinstance(meta.get("boundaries"), list):  # a recording says what its source's learner was told
        boundaries = tuple(meta["boundaries"])
    else:
        boundaries = DEFAULT_BOUNDARIES
    task_rows = meta.get("task_rows")
    return {"classes": classes, "boundaries": boundaries, "dataset": meta.get("dataset"),
            "seed": meta.get("seed") if isinstance(meta.get("seed"), int) else None,
            "batch_size": meta.get("batch_size") if isinstance(meta.get("batch_size"), int) else None,
            "encoder": meta.get("encoder") if isinstance(meta.get("encoder"), str) else None,
            "task_rows": [int(r) for r in task_rows] if isinstance(task_rows, list) else None}


def _count_task_rows(source: Source) -> tuple[list[int], int]:
    """Rows per task of a source that does not say (a task ends at an end-of-task mark or where its
    task column changes value) and its longest batch; reads the source from its start, seeks back."""
    task = source.schema().task
    counts, last, longest = [0], None, 1
    source.seek(0)
    for b in source.batches():
        longest = max(longest, len(b))
        values = b.column(task).to_pylist() if task and task in b.column_names else [None] * len(b)
        for v in values:
            if v is not None and last is not None and v != last and counts[-1]:
                counts.append(0)
            counts[-1] += 1
            last = v if v is not None else last
        if b.end_of_task:
            counts.append(0)
            last = None
    source.seek(0)
    return [c for c in counts if c], longest


def protocol_source(*, dataset: str = "digits", split: str = "class-incremental", tasks: int = 5, seed: int = 0,
                    encoder: str | None = None, batch_size: int = 64, train_per_class: int | None = None,
                    test_per_class: int | None = None, image_size: int | None = None) -> ImageStream:
    """The pipeline's own stream: an `ImageStream` with these options (``encoder`` None or
    ``"pixels"``: the pixels)."""
    if isinstance(encoder, str) and encoder.lower() in ("pixels", "none", ""):
        encoder = None
    return ImageStream(dataset, split=split, tasks=tasks, seed=seed, encoder=encoder, batch_size=batch_size,
                       image_size=image_size, train_per_class=train_per_class, test_per_class=test_per_class)


def iid_source(source: Source, *, seed: int = 0, batch_size: int | None = None) -> MemorySource:
    """The same training rows as ``source``'s stream in one seeded random order, without tasks.

    No task column, no end-of-task marks: a learner on it is never told of a task, and the
    engine evaluates the held-out sets (``source``'s own) before the first batch and at the end.
    Batches of ``batch_size`` rows (default: the source's, else its first batch's length), offsets
    ``0 .. n - 1``; ``unlabeled()`` is the source's. Reads ``source`` from its start.
    """
    schema = source.schema()
    source.seek(0)
    parts = [b.data for b in source.batches()]
    source.seek(0)
    if not parts:
        raise ValueError("images: the source yielded no rows to shuffle for the iid run")
    size = batch_size or (parts[0].num_rows if parts else 1)
    keep = [n for n in parts[0].schema.names if n != OFFSET and n != schema.task]
    table = pa.Table.from_batches(parts).select(keep).combine_chunks()
    order = np.random.default_rng([int(seed), 13]).permutation(table.num_rows)
    table = table.take(pa.array(order))
    table = table.add_column(0, OFFSET, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    fields = {n: f for n, f in schema.fields.items() if n != schema.task}
    plain = Schema(fields, target=schema.target, key=schema.key, time=schema.time)
    stream_id = f"{getattr(source, 'stream_id', 'stream')}:iid-s{seed}"
    batches = [Batch(rb, stream_id) for rb in table.to_batches(max_chunksize=size)]
    return MemorySource(batches, plain, stream_id=stream_id, held_out=source.held_out(),
                        unlabeled=source.unlabeled())


# -- the pipeline ------------------------------------------------------------------------------
def build(source: Source | None = None, *, dataset: str | None = None, split: str | None = None,
          tasks: Any = None, encoder: str | None = None, batch_size: Any = None, train_per_class: Any = None,
          test_per_class: Any = None, image_size: Any = None, seed: Any = None, strategies: Any = None,
          epochs: Any = None, minibatch: Any = None, n_classes: Any = None, num_gpus: Any = 0,
          **unknown: Any) -> Pipeline:
    """The image pipeline: the stream (or ``source``), one learn step per continual learner.

    Options:
        dataset: digits or fashion-mnist (default digits)
        split: class-incremental, task-incremental, domain-incremental, blurry or task-free
            (default class-incremental)
        tasks: number of tasks (default 5)
        encoder: none (pixels) or efficientnet-lite0 (frozen features; default none)
        batch_size: rows per batch (default 64)
        train_per_class: keep at most this many training rows per class (default: all)
        test_per_class: keep at most this many held-out rows per class (default: all)
        image_size: the encoder's input side, or resize the pixels to it (default: none)
        seed: the stream's split and every learner (default 0; with a source: the source's seed)
        strategies: a comma list of naive, replay, ewc, lwf, prd, dkvb, dst, ear (default: all
            eight), or iid alone (the Naive MLP on the same rows shuffled: the upper bound)
        epochs: passes over each batch, the same for every learner (default 5)
        minibatch: rows per SGD step, the same for every learner (default 32)
        n_classes: the label count (default: from the source's classes)
        num_gpus: GPUs per learner's actor on the Ray runner, e.g. 0.15 (default 0)

    Any source with an integer label target and held-out rows per task works (an `ImageStream`,
    a recording of one, a `MemorySource` with ``held_out=``). The stream options (dataset, split,
    tasks, encoder, batch_size, train_per_class, test_per_class, image_size) choose the
    pipeline's own stream, so with a source given they are refused. The learn steps are told
    task ends as the source's learner is (none on a task-free stream).
    """
    _refuse_unknown(unknown, OPTIONS, "pipeline")
    names = strategy_names(strategies)
    epochs = _integer("epochs", PROTOCOL["epochs"] if epochs is None else epochs, 1)
    minibatch = _integer("minibatch", PROTOCOL["minibatch"] if minibatch is None else minibatch, 1)
    try:
        gpus = float(num_gpus or 0)
    except (TypeError, ValueError):
        raise ValueError(f"images option num_gpus is a number >= 0, got {num_gpus!r}") from None
    if gpus < 0:
        raise ValueError(f"images option num_gpus is a number >= 0, got {num_gpus!r}")
    if source is None:
        source = protocol_source(
            dataset=dataset or "digits", split=split or "class-incremental",
            tasks=_integer("tasks", 5 if tasks is None else tasks, 1), seed=_integer("seed", seed or 0, 0),
            encoder=encoder, batch_size=_integer("batch_size", 64 if batch_size is None else batch_size, 1),
            train_per_class=_optional_integer("train_per_class", train_per_class, 1),
            test_per_class=_optional_integer("test_per_class", test_per_class, 1),
            image_size=_optional_integer("image_size", image_size, 1))
    else:
        given = {"dataset": dataset, "split": split, "tasks": tasks, "encoder": encoder, "batch_size": batch_size,
                 "train_per_class": train_per_class, "test_per_class": test_per_class, "image_size": image_size}
        refused = [k for k, v in given.items() if v is not None]
        if refused:
            raise ValueError(f"images option(s) {', '.join(refused)} choose the pipeline's own stream, so with a "
                             f"source given they cannot apply: put them in the source spec "
                             f"(images:dataset=fashion-mnist,split=task-incremental,...) or leave the source out")
    facts = _facts(source)
    seed = _integer("seed", seed, 0) if seed is not None else (facts["seed"] or 0)
    classes = facts["classes"]
    n = _integer("n_classes", n_classes, 1) if n_classes is not None else (max(classes) + 1 if classes else 0)
    if classes and max(classes) >= n:
        raise ValueError(f"images: n_classes={n}, but the held-out rows have label {max(classes)}")
    if n < 1:
        raise ValueError("images: no class labels found in the source's held-out rows: give n_classes=")
    boundaries = facts["boundaries"]
    augment = "crop" if facts["dataset"] == "digits" else "auto"
    label = facts["dataset"] or "images"
    if names == ["iid"]:
        source = iid_source(source, seed=seed, batch_size=facts["batch_size"])
        boundaries = ()
    steps = None
    if "dst" in names:  # its schedule runs over one task's steps: the stream's plan says how many
        task_rows, longest = ((facts["task_rows"], facts["batch_size"] or 1) if facts["task_rows"]
                              else _count_task_rows(source))
        steps = dst_steps_per_task(task_rows, batch_size=facts["batch_size"] or longest, minibatch=minibatch,
                                   epochs=epochs)
    p = Pipeline(f"images-{label}").source(source).validate()
    for name in names:
        learner = make_strategy(name, n_classes=n, seed=seed, epochs=epochs, minibatch=minibatch,
                                task_stream=bool(boundaries), augment=augment, features=facts["encoder"],
                                steps_per_task=steps)
        p.learn(learner, name=name, boundaries=boundaries, num_gpus=gpus)
    p.report(report)
    return p


# -- the comparison --------------------------------------------------------------------------------
def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (scenario, input, seed, method) of the comparison, in this process: its metrics, compute
    and memory. ``iid`` jobs report the class-IL and the task-IL entries of the upper bound."""
    import resource

    os.environ["OMP_NUM_THREADS"] = "1"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    job_cpu0 = usage.ru_utime + usage.ru_stime
    from tideflow.strategies import torch_core

    torch_core.set_threads(1)
    import avalanche.training  # noqa: F401 - imported before the memory baseline, as torch is

    method, seed = job["method"], job["seed"]
    split = PROTOCOL["scenarios"][job["scenario"]] if job["scenario"] in PROTOCOL["scenarios"] else job["scenario"]
    src = protocol_source(dataset=job["dataset"], split=split, tasks=job["tasks"], seed=seed,
                          encoder=job["encoder"], batch_size=job["batch_size"], train_per_class=job["train_per_class"],
                          test_per_class=job["test_per_class"])
    held = src.held_out()  # the data (and the encoder's features) are made here, not in the run
    src.unlabeled()
    pipeline = build(src, strategies=method, epochs=job["epochs"], minibatch=job["minibatch"], seed=seed)
    import gc

    gc.collect()
    measured = reset_peak() and job["runner"] == "local"
    before = memory_kib("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="tideflow-images-") as tmp:  # summary.json: not kept
        result = pipeline.run(runner=job["runner"], tracking=False, progress=False, output_dir=tmp)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = memory_kib("VmHWM") if measured else None
    s, m = result.summary[method], result.cl_metrics[method]
    row = {
        "scenario": job["scenario"], "input": job["input"], "seed": seed, "method": method,
        **m.scalars(), "matrix": m.matrix, "matrix_til": m.matrix_til,
        "train_seconds": float(s["train_seconds"]), "samples_trained": int(s["samples_trained"]),
        "train_rows": float(s["extra"].get("train_rows", 0.0)), "flops": s["extra"].get("flops"),
        "errors": int(s["errors"]), "skipped_rows": dict(s.get("skipped_rows", {})),
        # CPU seconds of this process only: the Ray runner's actors are not in it
        "run_seconds": seconds, "run_cpu_seconds": cpu, "peak_rss_mib": None if peak is None else peak / 1024,
        "run_rss_mib": None if peak is None or before is None else (peak - before) / 1024,
        "describe": pipeline.build().learners[0].op.describe(),
    }
    # the accuracies before the first batch, against which FWT is measured
    row["start"] = list(m.start)
    row["start_til"] = [r.get("accuracy_til") for r in result.evaluations.get(method, []) if r["point"] == "start"]
    learner = result.strategies[method]
    if method == "dst":  # where its task ids came from, and how much of the network the tasks hold
        row["learner"] = {"task_source": learner.task_source, "network_share": float(learner.network_share),
                          "steps_per_task": int(learner.steps_per_task),
                          "notices": [e.statistic for e in result.drift_events if e.detector == "SparseTraining"]}
    if method == "ear":  # what it grew: experts (adaptors) and reconfigurator heads, and their size
        row["learner"] = {**learner.parameter_counts(), "reconfigured": int(learner.reconfigured),
                          "growths": len(learner.growth_log)}
    if method == "iid":  # the bound's task-IL entry: the same trained model, masked per task
        til = til_accuracy(result.strategies[method], held, src.schema().target)
        row["average_accuracy_til"] = float(np.mean(list(til.values())))
        row["til_by_task"] = {str(k): v for k, v in til.items()}
    # the whole job's CPU in this process: imports, the stream's data, the run (a fresh process
    # per job with jobs > 1, so this is what the job cost the machine, less interpreter start-up)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    row["job_cpu_seconds"] = usage.ru_utime + usage.ru_stime - job_cpu0
    return row


def _job_quietly(job: dict[str, Any]) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    return run_job(job)
