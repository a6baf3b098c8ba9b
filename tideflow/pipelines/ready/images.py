"""The ``images`` pipeline: continual image classification, task-aware evaluation, and its comparison.

A split image stream (`tideflow.connectors.images.ImageStream`: scikit-learn's digits or
Fashion-MNIST, pixels or a frozen EfficientNet-Lite0's features; or a recording of one) goes
through one learn step per continual learner, all on the same batches:

* ``naive``, ``replay`` (200 rows), ``ewc``, ``lwf``: `AvalancheStrategy` on one MLP (one
  hidden layer of 256), plain SGD;
* ``prd``: `PrototypeDistillation` (Asadi et al., ICML 2023), replay-free;
* ``dkvb``: `KeyValueBottleneck` (Träuble et al., ICML 2023), keys fitted on the source's
  unlabeled rows before the first batch;
* ``iid``: the upper bound, the same MLP as ``naive`` trained on the same training rows in one
  seeded random order, without tasks (`iid_source`). It is a run of its own on that shuffled
  stream (``strategies=iid``), never a step beside the others: a learn step sees the stream
  the others see.

Every method makes the same ``epochs`` passes over each batch in minibatches of the same
``minibatch`` rows. The engine evaluates each task's held-out rows before the first batch, at
every task boundary and at the end of the stream, and ``RunResult.cl_metrics[step]`` holds
the accuracy matrix R[i][j] with average accuracy, forgetting, BWT and FWT; on a stream with a
task column also the task-incremental ones (``*_til``: predictions masked to the task's
classes).

`compare` runs the comparison of the issue (`PROTOCOL`: split Fashion-MNIST 5 x 2, class-IL and
task-IL, pixels and frozen-encoder features, 3 seeds) and writes ``results/images.{md,json}``;
``tideflow compare images`` calls it, ``tideflow run images`` runs `build`. What a run and the
comparison measure and how the table is written: `tideflow.pipelines.ready.images_results`.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import MemorySource, Source
from tideflow.connectors.images import ImageStream
from tideflow.pipelines.dsl import Pipeline
from tideflow.pipelines.ready.images_results import (aggregate, markdown_table, memory_kib, report, reset_peak,
                                                     til_accuracy)
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema
from tideflow.strategies.avalanche_adapter import AvalancheStrategy
from tideflow.strategies.base import Strategy
from tideflow.strategies.dkvb import KeyValueBottleneck
from tideflow.strategies.prd import PrototypeDistillation

#: the continual learners, in table order; ``iid`` is the upper bound (a run of its own)
METHODS = ("naive", "replay", "ewc", "lwf", "prd", "dkvb")
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


def make_strategy(name: str, *, n_classes: int, seed: int, epochs: int, minibatch: int, task_stream: bool = True,
                  augment: str = "auto") -> Strategy:
    """One learner of the comparison with the protocol's settings (module docstring).

    ``task_stream``: the stream tells task ends (marks or a task column); on a task-free one PRD
    takes a teacher every `TASK_FREE_PRD_EVERY` batches and Avalanche's plugins consolidate per
    batch. ``augment``: PRD's augmentation (``"crop"`` for digits, which a flip turns into other
    digits).
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
    return {"classes": classes, "boundaries": boundaries, "dataset": meta.get("dataset"),
            "seed": meta.get("seed") if isinstance(meta.get("seed"), int) else None,
            "batch_size": meta.get("batch_size") if isinstance(meta.get("batch_size"), int) else None}


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
        strategies: a comma list of naive, replay, ewc, lwf, prd, dkvb (default: all six), or iid
            alone (the Naive MLP on the same rows shuffled: the upper bound)
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
    p = Pipeline(f"images-{label}").source(source).validate()
    for name in names:
        learner = make_strategy(name, n_classes=n, seed=seed, epochs=epochs, minibatch=minibatch,
                                task_stream=bool(boundaries), augment=augment)
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


def _seeds(value: Any) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    seeds = [_integer("seed", str(x).strip(), 0) for x in items if str(x).strip()]
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"images compare: seeds is a comma list of distinct integers, got {value!r}")
    return seeds


COMPARE_OPTIONS = ("dataset", "tasks", "seeds", "scenarios", "inputs", "methods", "train_per_class", "test_per_class",
                   "batch_size", "epochs", "minibatch", "runner", "jobs", "out")


def compare(*, dataset: str | None = None, tasks: Any = None, seeds: Any = None, scenarios: Any = None,
            inputs: Any = None, methods: Any = None, train_per_class: Any = "protocol",
            test_per_class: Any = "protocol", batch_size: Any = None, epochs: Any = None, minibatch: Any = None,
            runner: str = "local", jobs: int = 1, out: Path | str = Path("results/images"),
            **unknown: Any) -> dict[str, Any]:
    """Run the comparison (`PROTOCOL`, or the options given) and write ``<out>.json`` and ``<out>.md``.

    Every (scenario, input, seed, method) is one run of `build`'s pipeline with that one learner
    (the iid bound: one run per input and seed, on the class-incremental stream's rows shuffled,
    scored class-IL and, masked per task, task-IL). ``jobs`` runs at once, each in a fresh
    process with one torch thread, so that its peak memory is its own; with ``jobs=1`` they run
    one after the other in this process. The encoder's features are computed (and cached) before
    any run, once per input and seed. ``train_per_class`` / ``test_per_class``: the protocol's
    caps unless given (None: every row).
    """
    import concurrent.futures as cf
    import multiprocessing

    _refuse_unknown(unknown, COMPARE_OPTIONS, "compare")
    if runner not in ("local", "ray"):
        raise ValueError(f"images compare: runner is local or ray, got {runner!r}")
    protocol = dict(PROTOCOL)
    protocol["dataset"] = dataset or PROTOCOL["dataset"]
    protocol["tasks"] = _integer("tasks", PROTOCOL["tasks"] if tasks is None else tasks, 1)
    protocol["seeds"] = _seeds(PROTOCOL["seeds"] if seeds is None else seeds)
    chosen = _names("scenarios", list(PROTOCOL["scenarios"]) if scenarios is None else scenarios,
                    tuple(PROTOCOL["scenarios"]))
    protocol["scenarios"] = {k: PROTOCOL["scenarios"][k] for k in chosen}
    protocol["encoders"] = _names("inputs", PROTOCOL["encoders"] if inputs is None else inputs,
                                  tuple(PROTOCOL["encoders"]))
    protocol["methods"] = _names("methods", PROTOCOL["methods"] if methods is None else methods, ALL_METHODS)
    for key, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        protocol[key] = PROTOCOL[key] if value == "protocol" else _optional_integer(key, value, 1)
    for key, value in (("batch_size", batch_size), ("epochs", epochs), ("minibatch", minibatch)):
        protocol[key] = PROTOCOL[key] if value is None else _integer(key, value, 1)
    protocol["avalanche_experiences"] = avalanche_experiences(True).get("experiences",
                                                                        "batch (the adapter's only mode)")
    augment = "crop" if protocol["dataset"] == "digits" else "auto"
    protocol["settings"] = {
        name: {k: v for k, v in make_strategy(name, n_classes=10, seed=0, epochs=protocol["epochs"],
                                              minibatch=protocol["minibatch"], augment=augment).params().items()
               if k not in ("seed", "n_classes", "target", "features")}
        for name in protocol["methods"]}
    jobs = _integer("jobs", jobs, 1)
    common = {"dataset": protocol["dataset"], "tasks": protocol["tasks"], "batch_size": protocol["batch_size"],
              "train_per_class": protocol["train_per_class"], "test_per_class": protocol["test_per_class"],
              "epochs": protocol["epochs"], "minibatch": protocol["minibatch"], "runner": runner}
    work: list[dict[str, Any]] = []
    for enc in protocol["encoders"]:
        for seed in protocol["seeds"]:
            for scenario in protocol["scenarios"]:
                for method in protocol["methods"]:
                    if method == "iid" and scenario != next(iter(protocol["scenarios"])):
                        continue  # one iid run per input and seed serves every scenario
                    work.append({**common, "scenario": "class-IL" if method == "iid" else scenario,
                                 "input": enc, "encoder": None if enc == "pixels" else enc, "seed": seed,
                                 "method": method})
    # the slowest runs first, so that the workers end together
    cost = {"replay": 0, "prd": 1, "ewc": 2, "lwf": 3, "dkvb": 4, "naive": 5, "iid": 6}
    work.sort(key=lambda j: (cost.get(j["method"], 9), j["input"] == "pixels"))
    started = time.perf_counter()
    warm = _warm_features(protocol, jobs)
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"[{len(rows)}/{len(work)}] {row['input']} {row['scenario']} seed {row['seed']} {row['method']}: "
              f"train {row['train_seconds']:.1f} s, run {row['run_seconds']:.1f} s", flush=True)

    if jobs <= 1:
        for job in work:
            done(_job_quietly(job))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
            for row in (f.result() for f in [pool.submit(_job_quietly, j) for j in work]):
                done(row)
    rows.sort(key=lambda r: (protocol["encoders"].index(r["input"]), r["scenario"],
                             ALL_METHODS.index(r["method"]), r["seed"]))
    protocol = json.loads(json.dumps(protocol, default=str))  # tuples as lists, as the file holds them
    doc = {"protocol": protocol, "command": _command(protocol, jobs, runner), "runner": runner, "jobs": jobs,
           "seconds": time.perf_counter() - started, "encoder_seconds": warm,
           "run_cpu_seconds": sum(r["run_cpu_seconds"] for r in rows),
           "job_cpu_seconds": sum(r["job_cpu_seconds"] for r in rows), "runs": rows,
           "table": aggregate(rows, protocol)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown_table(doc))
    return doc


def _warm_one(args: tuple[dict[str, Any], str, int]) -> int:
    """The encoder's features of one seed's rows, computed into the cache (or found there)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    protocol, enc, seed = args
    src = protocol_source(dataset=protocol["dataset"], split="class-incremental", tasks=protocol["tasks"], seed=seed,
                          encoder=enc, batch_size=protocol["batch_size"], train_per_class=protocol["train_per_class"],
                          test_per_class=protocol["test_per_class"])
    src.held_out()
    return src.num_rows


def _warm_features(protocol: dict[str, Any], jobs: int = 1) -> float:
    """Compute (or find in the cache) the encoder's features of every seed's rows before the runs,
    so that runs in parallel never encode the same images twice (the cache is keyed by the images,
    and a seed's class-IL and task-IL streams hold the same ones). Returns the seconds it took."""
    import concurrent.futures as cf
    import multiprocessing

    t0 = time.perf_counter()
    todo = [(protocol, enc, seed) for enc in protocol["encoders"] if enc != "pixels" for seed in protocol["seeds"]]
    if jobs <= 1 or len(todo) <= 1:
        for args in todo:
            _warm_one(args)
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
            list(pool.map(_warm_one, todo))
    return time.perf_counter() - t0


def _command(protocol: dict[str, Any], jobs: int, runner: str) -> str:
    """The command that reproduces a comparison (the protocol's options only where they differ)."""
    parts = ["tideflow compare images"]
    for key in ("dataset", "tasks", "train_per_class", "test_per_class", "batch_size", "epochs", "minibatch"):
        if protocol[key] != PROTOCOL[key]:
            parts.append(f"--set {key}={'none' if protocol[key] is None else protocol[key]}")
    lists = {"seeds": (protocol["seeds"], PROTOCOL["seeds"]),
             "scenarios": (list(protocol["scenarios"]), list(PROTOCOL["scenarios"])),
             "inputs": (protocol["encoders"], PROTOCOL["encoders"]),
             "methods": (protocol["methods"], PROTOCOL["methods"])}
    for key, (got, default) in lists.items():
        if got != default:
            parts.append(f"--set {key}={','.join(str(x) for x in got)}")
    if jobs > 1:
        parts.append(f"--jobs {jobs}")
    if runner != "local":
        parts.append(f"--runner {runner}")
    return " ".join(parts)
