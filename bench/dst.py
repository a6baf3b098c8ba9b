"""Dynamic sparse training (`tf.SparseTraining`): layer densities, growth criteria and density.

Two comparisons, every run through the engine (``Pipeline.learn``, held-out evaluation at every
task boundary, ``RunResult.cl_metrics``), task-incremental (each row's task id from the schema's
task column; the heads are per task, so a class-incremental row would read "n/a: needs a task
id"):

* **split Fashion-MNIST** (`tf.ImageStream("fashion-mnist", split="task-incremental")`: 5 tasks of
  2 classes in a seeded class order, 12 000 training rows per task, the 2 000 test rows of its
  classes held out, pixels standardised): ERK vs uniform layer densities x the four growth
  criteria (random, unfired, gradient, momentum) x densities 0.2 and 0.05, and dense fine-tuning
  (the same learner at density 1 with nothing frozen) as the reference. MLP 784-200-200 with a
  head per task; one batch per task, ``--epochs`` passes over it (minibatches of 64), Adam 1e-3
  with x0.1 at 50 % and 75 % of the task's steps, a mask update every 50 steps (every tenth of a
  task's steps when a task has fewer than 500, as ``--quick`` has: `update_interval`), the drop
  fraction cosine from 0.5 to 0.005 over the task's steps;
* **permuted digits**, the test suite's protocol (tests/strategies/test_dst.py): permuted digits
  (`tf.ImageStream("digits", split="domain-incremental", domain="permutation")`) with each row's
  task id added as a task column, MLP 64-200-200, one batch per task and 100 passes (the task's
  steps: 100 x its minibatches); the spec's toy rows (dense; d=0.2 ERK random and gradient; d=0.2
  uniform random; d=0.05 uniform random) under two protocols: every task the whole training set in
  its permutation (``rows_per_task="all"``, the standard permuted-MNIST benchmark, which the test
  suite's floors use) and a stratified fifth of the training rows per task (the stream's default,
  the floors' protocol before), each with pixels unscaled (as the spec's toy had them: its dense
  row is approached only so) and standardised;
* **a table**, data of another kind: scikit-learn's ``make_classification`` (6 000 rows, 24
  numeric columns, 10 classes, seeded), standardised, as 5 tasks of 2 classes in batches of 100
  rows with 200 rows per task held out; 5 passes per batch, minibatches of 32; the spec's toy
  rows with MLP 24-200-200, and d=0.3 ERK random on a small MLP 24-64-64 (capacity running out).

Columns: task-IL average accuracy after the last task and BWT (means over seeds, the spread
in brackets); **share used**: the share of the hidden layers' weights some task holds at the end
(`SparseTraining.network_share`); **FLOPs vs dense**: the FLOPs the learner counts (active weights
only) over the dense reference's; **CPU s vs dense**: the whole run's CPU time (stream, learning,
held-out evaluation) over the dense reference's, which other jobs on the machine do not inflate;
**learn s vs dense**: wall-clock seconds in ``learn`` over the dense reference's (inflated by
other jobs on a shared machine). The kernels are dense, so time does not fall with density: the
masks and the mask updates cost extra. **mask updates**: per run (0 where no layer is sparse);
**notices**: capacity events raised (``capacity_low`` / ``capacity_exhausted``).

Usage::

    .venv/bin/python bench/dst.py                  # all three parts, seeds 0 and 1 (about 5 CPU-minutes a seed)
    .venv/bin/python bench/dst.py --seeds 0        # seed 0 only: what results/dst.md holds (seed 1 was cut for time)
    .venv/bin/python bench/dst.py --quick          # a smoke run: 200 training rows per class, 1 pass
    .venv/bin/python bench/dst.py --jobs 2         # runs in parallel processes, one thread each
    .venv/bin/python bench/dst.py --parts digits   # re-run one part; the other parts' runs in dst.json are kept

It writes ``results/dst.json`` (every run's metrics, the protocol, the machine) and
``results/dst.md`` (the tables), or ``dst_quick.*`` with ``--quick``; ``--out`` names another folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _common import REPO, machine_info, write_json  # noqa: E402

OUT = REPO / "results"
GROWTHS = ("random", "unfired", "gradient", "momentum")
LAYERS = ("erk", "uniform")
DENSITIES = (0.2, 0.05)
#: the spec's toy rows on permuted digits: (name, density, layer density, growth); density 1 = dense
DIGITS_ROWS = (("dense fine-tuning", 1.0, "uniform", "random"), ("d=0.2 ERK random", 0.2, "erk", "random"),
               ("d=0.2 ERK gradient", 0.2, "erk", "gradient"), ("d=0.2 uniform random", 0.2, "uniform", "random"),
               ("d=0.05 uniform random", 0.05, "uniform", "random"))
TABLE_ROWS = (*DIGITS_ROWS, ("d=0.3 ERK random, MLP 24-64-64", 0.3, "erk", "random"))
#: permuted digits' two protocols (`tf.ImageStream`'s ``rows_per_task``): every training row in every task
#: (the standard benchmark, the test suite's floors) and a stratified fifth per task (the floors' protocol before)
DIGITS_PROTOCOLS = ("all", "share")
PARTS = ("fashion", "digits", "table")
MINIBATCH = 64
#: optimiser steps between mask updates (dT) on Fashion-MNIST and permuted digits
UPDATE_EVERY = 50
#: the table's minibatch and mask-update interval (200 steps per task there)
TABLE_MINIBATCH, TABLE_EVERY = 32, 20
#: a task gets at least this many mask-update points (see `update_interval`)
MIN_UPDATES = 10


def update_interval(every: int, steps: int) -> int:
    """The mask-update interval for a task of ``steps`` optimiser steps: ``every``, shortened so that
    the task has at least `MIN_UPDATES` update points. Masks move only at steps below
    ``steps_per_task``: with fewer steps than ``every`` (``--quick``: 400 rows per task in
    minibatches of 64, 7 steps) no mask would ever move, and the growth criteria, which differ only
    in where a mask update grows, would give the same run. The full protocol keeps ``every``
    (Fashion-MNIST 564 steps, digits 500, the table 200)."""
    return max(1, min(every, steps // MIN_UPDATES))


def fashion_stream(seed: int, quick: bool) -> Any:
    import tideflow as tf

    caps = {"train_per_class": 200, "test_per_class": 100} if quick else {}
    # one batch per task: the stream cuts batches where a task ends
    return tf.ImageStream("fashion-mnist", split="task-incremental", tasks=5, seed=seed, batch_size=100_000, **caps)


def permuted_digits(seed: int, standardize: bool, rows_per_task: str = "share") -> Any:
    """Permuted digits (``rows_per_task``: a fifth of the training rows per task, or all of them)
    with each row's task id as the schema's task column, one batch per task."""
    import numpy as np
    import pyarrow as pa

    import tideflow as tf

    src = tf.ImageStream("digits", split="domain-incremental", domain="permutation", tasks=5, seed=seed,
                         batch_size=100_000, standardize=standardize, rows_per_task=rows_per_task)
    task = src.plan.task
    schema = tf.Schema({"image": tf.Tensor((8, 8)), "label": "int64", "task": "int64"}, target="label", task="task")
    batches = [tf.Batch(b.data.append_column("task", pa.array(task[b.offsets], type=pa.int64())), b.stream_id,
                        b.end_of_task) for b in src]
    held = {t: tf.Batch(h.data.append_column("task", pa.array(np.full(len(h), t), type=pa.int64())), h.stream_id)
            for t, h in src.held_out().items()}
    return tf.MemorySource(batches, schema, held_out=held)


def warm_up() -> None:
    """Import torch and train a tiny learner once, so that no measured run pays for the set-up."""
    import numpy as np

    import tideflow as tf
    from tideflow.strategies.dst import SparseTraining

    rng = np.random.default_rng(0)
    batch = tf.Batch.from_pydict({"offset": np.arange(64), "x": tf.tensor_array(rng.normal(size=(64, 8)).astype("f4")),
                                  "y": rng.integers(0, 2, 64)}, stream_id="warm-up")
    s = SparseTraining(2, hidden=(8,), epochs=2)
    s.bind(tf.Schema({"x": tf.Tensor((8,)), "y": "int64"}, target="y"))
    s.learn(batch)
    s.predict(batch)


def table_stream(seed: int) -> Any:
    """A synthetic table of 24 scalar columns as 5 tasks of 2 classes (module docstring)."""
    import numpy as np
    from sklearn.datasets import make_classification

    import tideflow as tf

    x, y = make_classification(n_samples=6000, n_features=24, n_informative=12, n_classes=10,
                               n_clusters_per_class=1, random_state=seed)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    rng = np.random.default_rng(seed)
    cols = [f"f{i}" for i in range(x.shape[1])]
    schema = tf.Schema({**{c: "float64" for c in cols}, "label": "int64", "task": "int64"}, target="label",
                       task="task")

    def batch(rows: Any, task: int, offsets: Any, stream: str) -> Any:
        data = {"offset": offsets, **{c: x[rows, i] for i, c in enumerate(cols)}, "label": y[rows],
                "task": np.full(len(rows), task)}
        return tf.Batch.from_pydict(data, stream_id=stream)

    batches, held, offset = [], {}, 0
    for t in range(5):
        rows = rng.permutation(np.flatnonzero(np.isin(y, [2 * t, 2 * t + 1])))
        held[t] = batch(rows[:200], t, np.arange(200), "table:held-out")
        for start in range(200, len(rows), 100):
            part = rows[start:start + 100]
            batches.append(batch(part, t, np.arange(offset, offset + len(part)), "table"))
            offset += len(part)
    return tf.MemorySource(batches, schema, held_out=held)


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration on one seed (in a worker process when ``--jobs`` > 1)."""
    import tideflow as tf
    from tideflow.strategies.dst import SparseTraining

    minibatch = TABLE_MINIBATCH if job["part"] == "table" else MINIBATCH
    if job["part"] == "fashion":
        source = fashion_stream(job["seed"], job["quick"])
        rows_per_task = max(source.metadata()["task_rows"])
        hidden, epochs = (200, 200), job["epochs"]
        steps = math.ceil(rows_per_task / MINIBATCH) * epochs
    elif job["part"] == "digits":
        source = permuted_digits(job["seed"], job["standardize"], job.get("rows_per_task", "share"))
        hidden, epochs = (200, 200), 100
        steps = math.ceil(max(len(b) for b in source.batches_) / MINIBATCH) * epochs  # one batch per task
    else:
        source = table_stream(job["seed"])
        hidden, epochs = tuple(job["hidden"]), 5
        steps = math.ceil(100 / TABLE_MINIBATCH) * epochs * 10  # 10 batches of 100 rows per task
    dense = job["density"] >= 1.0
    every = update_interval(TABLE_EVERY if job["part"] == "table" else UPDATE_EVERY, steps)
    strategy = SparseTraining(10, hidden=hidden, density=job["density"], layer_density=job["layers"],
                              growth=job["growth"], isolate=not dense, epochs=epochs, minibatch=minibatch,
                              steps_per_task=steps, update_every=every, lr=1e-3, seed=job["seed"])
    start = time.process_time()
    result = tf.Pipeline("dst-bench").source(source).learn(strategy, name="s").run(tracking=False, progress=False)
    m = result.cl_metrics["s"]
    trained = result.strategies["s"]
    summary = result.summary["s"]
    return {**job, "steps_per_task": steps, "update_every": every, "accuracy_til": m.average_accuracy_til,
            "bwt_til": m.bwt_til,
            "forgetting_til": m.forgetting_til, "fwt_til": m.fwt_til, "matrix_til": m.matrix_til,
            "share_used": trained.network_share, "flops": summary["extra"]["flops"],
            "train_seconds": summary["train_seconds"], "cpu_seconds": time.process_time() - start,
            "mask_updates": summary["extra"].get("mask_updates", 0.0), "errors": summary["errors"],
            "notices": [e.statistic for e in result.drift_events if e.detector == "SparseTraining"]}


def jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for seed in args.seeds:
        base = {"seed": seed, "quick": args.quick, "epochs": args.epochs}
        if "fashion" in args.parts:
            out.append({**base, "part": "fashion", "name": "dense fine-tuning", "density": 1.0,
                        "layers": "uniform", "growth": "random"})
            for density in DENSITIES:
                for layers in LAYERS:
                    for growth in GROWTHS:
                        out.append({**base, "part": "fashion", "name": f"d={density} {layers} {growth}",
                                    "density": density, "layers": layers, "growth": growth})
        if not args.quick and "digits" in args.parts:
            for rows_per_task in DIGITS_PROTOCOLS:
                for standardize in (False, True):
                    for name, density, layers, growth in DIGITS_ROWS:
                        out.append({**base, "part": "digits", "rows_per_task": rows_per_task,
                                    "standardize": standardize, "name": name, "density": density,
                                    "layers": layers, "growth": growth})
        if not args.quick and "table" in args.parts:
            for name, density, layers, growth in TABLE_ROWS:
                hidden = [64, 64] if "24-64-64" in name else [200, 200]
                out.append({**base, "part": "table", "name": name, "density": density, "layers": layers,
                            "growth": growth, "hidden": hidden})
    return out


def _stat(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values) * scale:.{digits}f}..{max(values) * scale:.{digits}f})"


def table(runs: list[dict[str, Any]], names: list[str]) -> list[str]:
    ref = [r for r in runs if r["name"] == "dense fine-tuning"]
    flops_ref = statistics.fmean(r["flops"] for r in ref)
    secs_ref = statistics.fmean(r["train_seconds"] for r in ref)
    cpu_ref = statistics.fmean(r["cpu_seconds"] for r in ref)
    lines = ["| config | task-IL acc % | BWT % | share used | FLOPs vs dense | CPU s vs dense | learn s vs dense "
             "| mask updates | notices |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = [r for r in runs if r["name"] == name]
        if not rs:  # a run cut short: only the configurations it finished
            continue
        notices = sorted({n for r in rs for n in r["notices"]})
        lines.append(
            f"| {name} | {_stat([r['accuracy_til'] for r in rs])} | {_stat([r['bwt_til'] for r in rs])} "
            f"| {statistics.fmean(r['share_used'] for r in rs):.2f} "
            f"| {statistics.fmean(r['flops'] for r in rs) / flops_ref:.2f} "
            f"| {statistics.fmean(r['cpu_seconds'] for r in rs) / cpu_ref:.2f} "
            f"| {statistics.fmean(r['train_seconds'] for r in rs) / secs_ref:.2f} "
            f"| {statistics.fmean(r['mask_updates'] for r in rs):.0f} | {', '.join(notices) or '-'} |")
    return lines


def report(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    p = doc["protocol"]
    fashion = [r for r in runs if r["part"] == "fashion"]
    names = list(dict.fromkeys(r["name"] for r in fashion))
    seeds = {part: sorted({r["seed"] for r in runs if r["part"] == part}) for part in PARTS}
    seeds_text = "; ".join(f"{part} seeds {s}" for part, s in seeds.items() if s)
    reruns = "".join(f" Re-run later with `--parts {','.join(r['parts'])}` (seeds {r['seeds']}, {r['date'][:10]}): "
                     f"those parts' runs replaced the earlier ones." for r in doc.get("reruns", []))
    lines = [
        "# Dynamic sparse training (`tf.SparseTraining`)", "",
        f"Written by `bench/dst.py` ({'--quick, ' if p['quick'] else ''}{seeds_text}; "
        f"{len(runs)} of {doc.get('planned_runs', len(runs))} planned runs).{reruns} Task-incremental: the "
        "task id comes from the schema's task column (class-incremental: n/a, the learner needs a task id). "
        "Means over seeds, the range in brackets. Share used: the share of the hidden layers' weights some task "
        "holds at the end. FLOPs count active weights only; the kernels are dense, so time does not fall with "
        "density. CPU s: the whole run's CPU time; learn s: wall time in learn (other jobs inflate it).", "",
        *([f"Cut short{' (the first run; the parts re-run later ran the seeds listed above)' if doc.get('reruns') else ''}: "
           f"{doc['cut']}.", ""] if doc.get("cut") else []),
        f"## Split Fashion-MNIST (5 tasks x 2 classes, MLP 784-200-200, {p['epochs']} pass(es) per task)", "",
        *table(fashion, names), "",
    ]
    for rows_per_task in DIGITS_PROTOCOLS:
        for standardize in (False, True):
            digits = [r for r in runs if r["part"] == "digits" and r["standardize"] == standardize
                      and r.get("rows_per_task", "share") == rows_per_task]
            if digits:
                how = "standardised pixels" if standardize else "pixels unscaled (0..16, the spec's toy)"
                which = ("every training row in every task: the standard benchmark, the test suite's floors"
                         if rows_per_task == "all" else "a fifth of the training rows per task: the floors' "
                         "protocol before")
                steps = sorted({r["steps_per_task"] for r in digits})
                lines += [f"## Permuted digits, {which} ({how}; {steps[0]} steps per task)", "",
                          *table(digits, [n for n, *_ in DIGITS_ROWS]), ""]
    if any(r["part"] == "digits" for r in runs):
        lines += ["The spec's toy rows for comparison: dense fine-tuning 72.5 % (BWT -29.6); d=0.2 ERK random 93.1; "
                  "d=0.2 ERK gradient 94.1; d=0.2 uniform random 93.2; d=0.05 uniform random 91.0 (BWT 0.0).", ""]
    table_runs = [r for r in runs if r["part"] == "table"]
    if table_runs:
        lines += ["## A table: 24 numeric columns, 5 tasks x 2 classes (MLP 24-200-200 unless named; every "
                  "ratio against the dense MLP 24-200-200)", "",
                  *table(table_runs, [n for n, *_ in TABLE_ROWS]), ""]
    still = [f"{r['part']} {r['name']} seed {r['seed']}" for r in runs if r["density"] < 1.0 and not r["mask_updates"]]
    lines += [f"Sparse runs in which no mask moved: {len(still)}{': ' + ', '.join(still) if still else ''}.", ""]
    lines += [f"Errors in runs: {sum(r['errors'] for r in runs)}. Machine: {doc['machine']['cpu_model']}, "
              f"{doc['machine']['cpu_affinity']} CPUs, OMP_NUM_THREADS={doc['machine']['OMP_NUM_THREADS']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3, help="passes over each Fashion-MNIST task")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 training rows per class, 1 pass, no digits")
    parser.add_argument("--parts", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=list(PARTS),
                        help="which parts to run (fashion,digits,table); a subset keeps the other parts' runs "
                             "of an existing dst.json")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of dst.json and dst.md (default: results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {list(PARTS)}")
    todo = jobs(args)
    started = time.time()
    stem = "dst_quick" if args.quick else "dst"
    machine = machine_info()
    earlier: dict[str, Any] = {}
    path = args.out / f"{stem}.json"
    if set(args.parts) != set(PARTS) and path.exists():
        # a partial re-run: the other parts' runs, protocol and machine stay as the earlier run wrote them
        earlier = json.loads(path.read_text())
    kept = [r for r in earlier.get("runs", []) if r["part"] not in args.parts]
    runs: list[dict[str, Any]] = list(kept)

    def save() -> None:
        """Both files after every run, so that a run cut short (a time limit on a shared machine)
        leaves the runs it finished; the header says how many of the planned runs that is."""
        doc = {"protocol": {"seeds": args.seeds, "epochs": args.epochs, "quick": args.quick, "minibatch": MINIBATCH,
                            "update_every": UPDATE_EVERY, "min_updates_per_task": MIN_UPDATES, "lr": 1e-3,
                            "drop": [0.5, 0.005], "hidden": [200, 200], "digits_protocols": list(DIGITS_PROTOCOLS)},
               "planned_runs": len(todo) + len(kept), "wall_seconds": time.time() - started, "machine": machine,
               "runs": runs}
        if earlier:
            doc = {**earlier, "runs": runs, "planned_runs": doc["planned_runs"],
                   "protocol": {**earlier["protocol"], "digits_protocols": list(DIGITS_PROTOCOLS)},
                   "reruns": [*earlier.get("reruns", []),
                              {"parts": args.parts, "seeds": args.seeds, "date": machine["date"],
                               "wall_seconds": time.time() - started, "machine": machine}]}
        write_json(doc, args.out / f"{stem}.json")
        (args.out / f"{stem}.md").write_text(report(doc))

    def done(run: dict[str, Any]) -> None:
        runs.append(run)
        save()
        print(f"{run['part']} {run['name']} seed {run['seed']}: {100 * run['accuracy_til']:.1f} % "
              f"({run['cpu_seconds']:.0f} s)", flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=warm_up) as pool:
            for run in pool.map(one_run, todo):
                done(run)
    else:
        warm_up()
        for job in todo:
            done(one_run(job))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
