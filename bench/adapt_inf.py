"""Adapt-∞ data selection on a redundant, imbalanced class stream: accuracy against training rows.

The protocol (the spec's toy, fixed before any outcome was looked at; the test suite runs
the digits part, ``tests/strategies/test_adapt_inf.py``, through `redundant_stream` and
`run_method` of this file):

* **Stream.** An image set with 10 classes in 5 tasks; task t brings class 2t, *common*: every
  training image with 8 noisy duplicates, and class 2t + 1, *rare*: its training images once.
  Per class a seeded share of the images is held out (digits: 1/3; Fashion-MNIST: its own test
  split), never learned. Pixels are standardised with the statistics of the original training
  images, fixed before any learning; a duplicate adds Gaussian noise of 0.1 on that
  standardised scale (noise in raw grey levels would be blown up on the nearly blank border
  pixels, whose standard deviation is tiny, and make the copies unlike any real image). A task's rows
  are shuffled and cut into batches of 250; its last batch carries the end-of-task mark (where
  the engine evaluates the held-out rows). No task column: a selection hands the learner rows
  of every task at once, and a learner that splits its input by task id
  (``AvalancheStrategy(experiences="task")``) would learn them old tasks first, new task last.
* **Learner.** ``AvalancheStrategy("Naive")`` with an MLP d-128-10, SGD lr 0.05, minibatch 32,
  20 epochs over what it is handed, seed = the run's seed. The epochs were calibrated on the
  floor's reference row alone: the issue's floors are distances from the spec's "random from
  pool" row (76.4 / 55.6 on digits), and how far random selection gets depends on how hard the
  learner fits its few rare rows. Of 15, 20, 25, 30 and 50 epochs, 20 brings our random row
  nearest the spec's (77.0 / 56.6, seeds 0-1; 50, our first and uncalibrated choice, gives
  82.4 / 66.8). The gaps at every epoch count are in the results (``--epochs-sweep``); Adapt-∞
  at 20 epochs had been seen in that sweep when the calibration was run, which the method page
  says.
* **Selection.** A selection point at every task's end; 200 selected rows per point; the pool
  holds every row seen (or 10 % of the stream's rows with pruning).
* **Scores.** The final model on every held-out row: accuracy, rare-class accuracy (classes
  2t + 1), worst class; training rows (``train_rows``: rows through the net, epochs counted),
  the learner's counted training FLOPs, the CPU seconds of the run (this process: selection,
  scoring and training) and its wall seconds next to them. Means over seeds.

Methods (``--methods``; each a selector configuration):

=============  ======================================================================
sequential     200 random rows of the task just seen (no pool)
random         200 rows drawn uniformly from the whole pool
ccs-el2n       coverage-centric sampling on EL2N over the whole pool (no clusters)
clusters       10 gradient clusters, equal budgets, random within (no experts, no guard)
adapt          Adapt-∞: clusters, per-cluster expert, coverage sampling, new-class guard
adapt-pruned   Adapt-∞ with the pool pruned to 10 % of the stream's rows
full           the whole pool at every point (the upper bound)
=============  ======================================================================

and the ablations (``--ablations``): each one part of ``adapt`` changed (one cluster, a fixed
expert per name, top scores instead of coverage sampling, the spec's CCS cut at both ends
instead of ours at the low end only, no guard, the proxy model instead of the MLP's own,
first-layer gradients through torch.func, 5 and 20 clusters).

A third part follows one selector over a long stream (``--memory-batches``): pool rows, the
sealed snapshot's bytes and the process's resident memory every 10 batches.

Run: ``.venv/bin/python bench/adapt_inf.py`` (digits and Fashion-MNIST, methods and ablations,
2 seeds, the memory trace) writes ``results/adapt_inf.json`` and ``results/adapt_inf.md``. Seconds are wall
time on a machine whose 2 cores other jobs share: they are inflated and noisy, compare them
within one table only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import tideflow as tf  # noqa: E402
from tideflow.strategies.selection import Selection, Selector  # noqa: E402

TASKS, CLASSES = 5, 10
BUDGET = 200
DUPLICATES = 8
NOISE = 0.1  # standard deviations of each pixel
BATCH = 250
MLP = {"hidden": 128, "lr": 0.05, "epochs": 20, "mb_size": 32}
#: the epoch counts the committed sweep ran (`--epochs-sweep 5,10,15,20,25,30,50`; module docstring)
SWEEP_EPOCHS = (5, 10, 15, 20, 25, 30, 50)
#: the spec's toy "random from pool" row on digits (acc, rare-class acc), the floors' reference
SPEC_RANDOM = (76.4, 55.6)

METHODS: dict[str, dict[str, Any] | None] = {
    "sequential": None,  # `NewRowsOnly`
    "random": {"clusters": 1, "experts": (), "guard": None},
    "ccs-el2n": {"clusters": 1, "experts": ("el2n",), "guard": None},
    "clusters": {"experts": (), "guard": None},
    "adapt": {},
    "adapt-pruned": {"pool_size": "10%"},
    "full": {"budget": None},
}
ABLATIONS: dict[str, dict[str, Any]] = {
    "adapt, 1 cluster": {"clusters": 1},
    "adapt, 5 clusters": {"clusters": 5},
    "adapt, 20 clusters": {"clusters": 20},
    "adapt, expert=loss": {"experts": ("loss",)},
    "adapt, expert=el2n": {"experts": ("el2n",)},
    "adapt, expert=entropy": {"experts": ("entropy",)},
    "adapt, expert=grad_norm": {"experts": ("grad_norm",)},
    "adapt, no experts (random in cluster)": {"experts": ()},
    "adapt, top scores (no coverage)": {"coverage": False},
    # the spec's step 6 and the reference cut both ends; ours keeps the top 5 % by default
    # (docs/methods/adapt-inf.md): this row is the spec's cut, reported beside ours
    "adapt, CCS cut at 5 % and 95 % (the spec's)": {"trim": (0.05, 0.05)},
    "adapt, no guard": {"guard": None},
    "adapt, proxy model": {"model": "proxy"},
    "adapt, first-layer gradients": {"layers": ("0.weight",)},
}


class NewRowsOnly(Selector):
    """The sequential baseline: at each task's end, ``budget`` random rows of that task only."""

    checkable = False

    def __init__(self, budget: int = BUDGET, seed: int = 0) -> None:
        self.budget, self.seed = budget, seed
        self._rows: list[tf.Batch] = []
        self._points = 0

    def select(self, batch: tf.Batch, strategy: Any) -> Selection:
        self._rows.append(batch)
        if not batch.end_of_task:
            return Selection(None)
        rows = tf.Batch.concat(self._rows)
        self._rows, self._points = [], self._points + 1
        rng = np.random.default_rng([self.seed, self._points])
        idx = np.sort(rng.choice(len(rows), min(self.budget, len(rows)), replace=False))
        return Selection(rows.take(idx), {"selected": float(len(idx))})

    def snapshot(self) -> dict[str, Any]:
        return {"rows": list(self._rows), "points": self._points}

    def restore(self, state: dict[str, Any]) -> None:
        self._rows, self._points = list(state["rows"]), int(state["points"])


def load_images(name: str, seed: int, *, per_class: int | None = None) -> Any:
    """``digits`` (1/3 of each class held out, seeded) or ``fashion-mnist`` (its own test split;
    ``per_class`` caps the training and test images per class, seeded)."""
    from tideflow.connectors import image_data

    if name == "digits":
        return image_data.digits(seed=seed, test_fraction=1.0 / 3.0)
    data = image_data.fashion_mnist()
    if per_class is not None:
        data = image_data.cap_per_class(data, per_class, per_class, seed)
    return data


def redundant_stream(data: Any, seed: int, *, duplicates: int = DUPLICATES, noise: float = NOISE,
                     batch_size: int = BATCH) -> tf.MemorySource:
    """The redundant/imbalanced task stream of ``data`` (an `ImageData` with 10 classes; module
    docstring). Columns: ``image`` (flattened, standardised, float32) and ``label``."""
    classes = sorted({int(c) for c in data.y[data.train]})
    if len(classes) != TASKS * 2:
        raise ValueError(f"{data.name}: {len(classes)} classes; the protocol needs {TASKS * 2}")
    rng = np.random.default_rng([seed, 7])
    x = data.x.reshape(len(data.x), -1).astype(np.float64)
    mean = x[data.train].mean(axis=0)
    std = x[data.train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    schema = tf.Schema({"image": tf.Tensor((x.shape[1],)), "label": "int64"}, target="label")

    z = (x - mean) / std

    def rows(images: np.ndarray, labels: np.ndarray, offset: int, sid: str) -> tf.Batch:
        return tf.Batch.from_pydict({"image": tf.tensor_array(images.astype(np.float32)),
                                     "label": labels.astype(np.int64)},
                                    stream_id=sid, first_offset=offset)

    batches, held_out, offset = [], {}, 0
    for t in range(TASKS):
        common, rare = classes[2 * t], classes[2 * t + 1]
        train_c = data.train[data.y[data.train] == common]
        train_r = data.train[data.y[data.train] == rare]
        copies = [z[train_c]] + [z[train_c] + rng.normal(0.0, noise, size=z[train_c].shape)
                                 for _ in range(duplicates)]
        images = np.concatenate([*copies, z[train_r]])
        labels = np.concatenate([np.full(len(train_c) * (duplicates + 1), common), np.full(len(train_r), rare)])
        order = rng.permutation(len(labels))
        images, labels = images[order], labels[order]
        for s in range(0, len(labels), batch_size):
            b = rows(images[s:s + batch_size], labels[s:s + batch_size], offset, f"redundant-{data.name}")
            batches.append(tf.Batch(b.data, b.stream_id, s + batch_size >= len(labels)))
            offset += len(b)
        test = np.sort(data.test[np.isin(data.y[data.test], [common, rare])])
        held_out[t] = rows(z[test], data.y[test], 0, f"redundant-{data.name}-held-out")
    return tf.MemorySource(batches, schema, held_out=held_out)


def selector(method: dict[str, Any] | None, seed: int, stream_rows: int, **overrides: Any) -> Selector:
    """The selector of a method's configuration (``pool_size="10%"``: a tenth of the stream)."""
    if method is None:
        return NewRowsOnly(BUDGET, seed)
    kwargs: dict[str, Any] = {"budget": BUDGET, "every": "task", "seed": seed, **method, **overrides}
    if kwargs.get("pool_size") == "10%":
        kwargs["pool_size"] = stream_rows // 10
    return tf.AdaptInfinity(**kwargs)


def run_method(source: tf.MemorySource, method: dict[str, Any] | None, seed: int, *, runner: str = "local",
               epochs: int | None = None, **overrides: Any) -> dict[str, Any]:
    """One run of the protocol; returns the final scores, compute and the selector's totals.
    ``epochs``: the learner's, instead of the protocol's (the sensitivity sweep only)."""
    mlp = {**MLP, "epochs": epochs} if epochs is not None else MLP
    strategy = tf.AvalancheStrategy("Naive", n_classes=CLASSES, seed=seed, device="cpu", **mlp)
    sel = selector(method, seed, source.num_rows, **overrides)
    source.seek(0)  # a source is read as given: every run starts it from the beginning
    start, cpu = time.perf_counter(), time.process_time()
    result = (tf.Pipeline("adapt-inf").source(source).learn(strategy, name="mlp", select=sel)
              .run(runner=runner, tracking=False, progress=False))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    summary = result.summary["mlp"]
    if summary["errors"]:
        raise RuntimeError(f"the run had {summary['errors']} errors; first: {summary['first_error']}")
    model = result.strategies["mlp"]
    held = tf.Batch.concat([source.held_out()[t] for t in sorted(source.held_out())])
    truth = held.numpy("label")
    pred = np.asarray(model.predict(held).to_pylist())
    per_class = {int(c): float((pred[truth == c] == c).mean()) for c in np.unique(truth)}
    classes = sorted(per_class)
    rare = [c for i, c in enumerate(classes) if i % 2]
    extra = summary["extra"]
    return {
        "acc": 100.0 * float((pred == truth).mean()),
        "rare_acc": 100.0 * float((pred == truth)[np.isin(truth, rare)].mean()),
        "worst_class": 100.0 * min(per_class.values()),
        "per_class": {c: 100.0 * v for c, v in per_class.items()},
        "train_rows": float(extra.get("train_rows", 0.0)),
        "flops": float(extra.get("flops", 0.0)),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "select_seconds": float(extra.get("select.seconds", 0.0)),
        "pool_final": float(result.per_batch["mlp"][-1]["extra"].get("select.pool", float("nan"))),
        "selected": float(extra.get("select.selected", 0.0)),
        "stream_rows": source.num_rows,
        "cl_average_accuracy": result.cl_metrics["mlp"].average_accuracy if result.cl_metrics else None,
        "extra": {k: float(v) for k, v in extra.items() if k.startswith("select.")},
    }


def mean_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("acc", "rare_acc", "worst_class", "train_rows", "flops", "seconds", "cpu_seconds", "select_seconds",
            "pool_final", "stream_rows")
    return {k: float(np.mean([r[k] for r in runs])) for k in keys}


def expert_use(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in runs:
        for k, v in r["extra"].items():
            if k.startswith("select.expert."):
                out[k.removeprefix("select.expert.")] = out.get(k.removeprefix("select.expert."), 0.0) + v
    return out


def _table(rows: dict[str, dict[str, Any]], full: dict[str, float] | None) -> list[str]:
    out = ["| method | acc | acc per seed | rare-class acc | rare per seed | worst class | pool at end "
           "| training rows | rows vs full pool | training GFLOP | CPU s | wall s | of which selecting (wall) | experts chosen (clusters) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        m = r["mean"]
        ratio = f"{m['train_rows'] / full['train_rows']:.1%}" if full and full["train_rows"] else "-"
        experts = ", ".join(f"{k} {int(v)}" for k, v in sorted(r["experts"].items())) or "-"
        pool = "-" if np.isnan(m["pool_final"]) else f"{m['pool_final']:.0f}"
        per_seed = {k: ", ".join(f"{run[k]:.1f}" for run in r["runs"]) for k in ("acc", "rare_acc")}
        out.append(f"| {name} | {m['acc']:.1f} | {per_seed['acc']} | {m['rare_acc']:.1f} | {per_seed['rare_acc']} "
                   f"| {m['worst_class']:.1f} | {pool} "
                   f"| {m['train_rows']:.0f} | {ratio} | {m.get('flops', 0.0) / 1e9:.1f} "
                   f"| {m.get('cpu_seconds', float('nan')):.1f} | {m['seconds']:.1f} | {m['select_seconds']:.1f} "
                   f"| {experts} |")
    return out


def memory_run(batches: int = 240, pool_size: int = 600, every: int = 5, seed: int = 0) -> dict[str, Any]:
    """A long-lived job's view: the digits stream replayed (offsets running on) for ``batches``
    batches through the protocol's learner, a point every ``every`` batches, the pool pruned to
    ``pool_size``. Every 10 batches: rows seen, pool rows, the sealed snapshot's bytes, the
    process's resident memory, the seconds of the last selection point."""
    import pickle

    from _common import rss_mb

    from tideflow.stream.state import seal

    base = redundant_stream(load_images("digits", seed), seed)
    strategy = tf.AvalancheStrategy("Naive", n_classes=CLASSES, seed=seed, device="cpu", **MLP)
    strategy.bind(base.schema())
    sel = tf.AdaptInfinity(budget=BUDGET, pool_size=pool_size, every=every, seed=seed)
    trace, seen, last_point = [], 0, 0.0
    period = base.num_rows
    for k in range(batches):
        b = base.batches_[k % len(base.batches_)]
        shift = (k // len(base.batches_)) * period
        column = b.data.schema.get_field_index("offset")
        b = tf.Batch(b.data.set_column(column, "offset", pa.array(b.offsets + shift)), b.stream_id, b.end_of_task)
        strategy.predict(b)  # the engine predicts every batch before its rows reach the selector
        out = sel.select(b, strategy)
        seen += len(b)
        if out.rows is not None:
            strategy.learn(out.rows)
            last_point = out.report["seconds"]
        if (k + 1) % 10 == 0:
            trace.append({"batch": k + 1, "rows_seen": seen, "pool_rows": sel.pool_rows,
                          "snapshot_bytes": len(pickle.dumps(seal(sel.snapshot()))), "rss_mb": rss_mb(),
                          "point_seconds": last_point})
            print(f"memory: batch {k + 1} pool {sel.pool_rows} snapshot {trace[-1]['snapshot_bytes']} B "
                  f"rss {trace[-1]['rss_mb']:.0f} MiB", flush=True)
    return {"batches": batches, "pool_size": pool_size, "every": every, "budget": BUDGET, "seed": seed,
            "trace": trace}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="digits,fashion-mnist")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ablations", default="all", help="'all', 'none' or names separated by ';'")
    ap.add_argument("--fashion-per-class", type=int, default=300,
                    help="training and test images per Fashion-MNIST class (seeded cap; the stream's rows scale "
                         "with it)")
    ap.add_argument("--epochs-sweep", default="",
                    help="learner epochs to run the --sweep-methods at besides the protocol's, e.g. "
                         f"{','.join(map(str, SWEEP_EPOCHS))} (the calibration; empty: no sweep)")
    ap.add_argument("--sweep-methods", default="random,adapt")
    ap.add_argument("--memory-batches", type=int, default=240,
                    help="batches of the long-stream memory trace (0: skip it)")
    ap.add_argument("--out", default=str(REPO / "results" / "adapt_inf"),
                    help="results path without suffix; each (dataset, method) run and the trace replace "
                         "their own entries of an existing JSON there, the others are kept")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    ablations = (list(ABLATIONS) if args.ablations == "all" else [] if args.ablations == "none"
                 else args.ablations.split(";"))
    from _common import machine_info

    out = Path(args.out)
    doc: dict[str, Any] = {"datasets": {}}
    if out.with_suffix(".json").is_file():
        doc = json.loads(out.with_suffix(".json").read_text())
    doc["protocol"] = {"budget": BUDGET, "duplicates": DUPLICATES, "noise": NOISE, "batch": BATCH, "mlp": MLP,
                       "seeds": seeds, "fashion_per_class": args.fashion_per_class}
    machine = machine_info()
    for name in [d for d in args.datasets.split(",") if d]:
        started = time.perf_counter()
        sources = {s: redundant_stream(load_images(name, s, per_class=args.fashion_per_class), s) for s in seeds}
        results: dict[str, Any] = {}
        plan = [(m, METHODS[m], {}) for m in args.methods.split(",")] + [(a, {}, ABLATIONS[a]) for a in ablations]
        for label, method, overrides in plan:
            runs = []
            for s in seeds:
                runs.append(run_method(sources[s], method, s, **overrides))
                print(f"{name} {label} seed {s}: acc {runs[-1]['acc']:.1f} rare {runs[-1]['rare_acc']:.1f} "
                      f"({runs[-1]['seconds']:.1f} s)", flush=True)
            results[label] = {"runs": runs, "mean": mean_of(runs), "experts": expert_use(runs),
                              "config": {"method": method, "overrides": overrides}}
        for r in results.values():
            r["machine"] = machine
        if args.epochs_sweep:
            doc.setdefault("epochs_sweep", {})[name] = sweep(
                sources, [int(e) for e in args.epochs_sweep.split(",")], args.sweep_methods.split(","), machine)
        entry = doc["datasets"].setdefault(name, {"results": {}, "invocations": []})
        if "machine" in entry:  # a file written before runs were merged per method: one invocation
            entry["invocations"] = [{"machine": entry.pop("machine"), "labels": list(entry["results"]),
                                     "seconds": entry.pop("seconds", 0.0)}]
        entry["stream_rows"] = sources[seeds[0]].num_rows
        entry["results"].update(results)
        entry["invocations"] = replaced(entry.get("invocations", []), results)
        entry["invocations"].append({"machine": machine, "labels": list(results),
                                     "seconds": time.perf_counter() - started})
    if args.memory_batches:
        doc["memory"] = {**memory_run(args.memory_batches), "machine": machine}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(report(doc))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


def sweep(sources: dict[int, tf.MemorySource], epochs: list[int], methods: list[str],
          machine: dict[str, Any]) -> dict[str, Any]:
    """Each method at each learner epoch count (seeds of ``sources``): means and per-seed scores."""
    out: dict[str, Any] = {"machine": machine, "seeds": sorted(sources), "epochs": {}}
    for e in epochs:
        row = {}
        for m in methods:
            runs = [run_method(src, METHODS[m], s, epochs=e) for s, src in sources.items()]
            row[m] = {"mean": mean_of(runs), "acc": [r["acc"] for r in runs], "rare_acc": [r["rare_acc"] for r in runs]}
            print(f"sweep {e} epochs {m}: acc {row[m]['mean']['acc']:.1f} rare {row[m]['mean']['rare_acc']:.1f}",
                  flush=True)
        out["epochs"][str(e)] = row
    return out


def _sweep_table(name: str, sw: dict[str, Any]) -> list[str]:
    methods = list(next(iter(sw["epochs"].values())))
    head = " | ".join(f"{m} acc / rare" for m in methods)
    gaps = [m for m in methods if m != "random"] if "random" in methods else []
    lines = [f"### {name}: the learner's epochs (sensitivity; seeds {sw['seeds']}, means)", "",
             f"Floors: accuracy >= random + 10, rare-class >= random + 25. The spec's random row on digits: "
             f"{SPEC_RANDOM[0]} / {SPEC_RANDOM[1]}; distance = |acc - {SPEC_RANDOM[0]}| + |rare - {SPEC_RANDOM[1]}| "
             f"(the calibration's measure). The protocol runs {MLP['epochs']} epochs.", "",
             f"| epochs | {head} | " + " | ".join(f"{m} - random (acc / rare)" for m in gaps)
             + " | random's distance to the spec's row |",
             "|---" * (2 + len(methods) + len(gaps)) + "|"]
    for e, row in sw["epochs"].items():
        cells = [f"{row[m]['mean']['acc']:.1f} / {row[m]['mean']['rare_acc']:.1f}" for m in methods]
        r = row.get("random", {}).get("mean")
        gap = [f"{row[m]['mean']['acc'] - r['acc']:+.1f} / {row[m]['mean']['rare_acc'] - r['rare_acc']:+.1f}"
               for m in gaps] if r else []
        dist = f"{abs(r['acc'] - SPEC_RANDOM[0]) + abs(r['rare_acc'] - SPEC_RANDOM[1]):.1f}" if r else "-"
        lines.append(f"| {e} | " + " | ".join(cells + gap) + f" | {dist} |")
    m = sw["machine"]
    lines += ["", f"Sweep run {m.get('date')} at commit {m.get('git_commit')} (uncommitted changes in the tree: "
              f"{m.get('git_dirty')}).", ""]
    return lines


def replaced(invocations: list[dict[str, Any]], labels: Any) -> list[dict[str, Any]]:
    """Earlier invocations without the ``labels`` a new run replaces (and without those left
    empty), so each result names the run that produced it and no other."""
    out = []
    for inv in invocations:
        kept = [label for label in inv["labels"] if label not in labels]
        if kept:
            out.append({**inv, "labels": kept})
    return out


def report(doc: dict[str, Any]) -> str:
    p = doc["protocol"]
    lines = ["# Adapt-∞ on redundant, imbalanced class streams (`bench/adapt_inf.py`)", "",
             f"Task t brings class 2t with {p['duplicates']} noisy duplicates per training image and class 2t+1 once; "
             f"{p['budget']} selected rows per task end; AvalancheStrategy Naive, MLP d-{p['mlp']['hidden']}-10, "
             f"{p['mlp']['epochs']} epochs, SGD lr {p['mlp']['lr']}; final model on the held-out rows; means over "
             f"seeds {p['seeds']}. Training rows = rows through the network (epochs counted); training GFLOP = the learner's "
             "count (6 x parameters x training rows); CPU s = CPU time of the bench process over the run (selection, "
             "scoring, training: the primary cost measure, one thread). Wall s: the run's wall time on 2 cores "
             "shared with other developers' jobs (inflated, noisy; compare within a table only).", ""]
    for name, d in doc["datasets"].items():
        res = d["results"]
        full = res.get("full", {}).get("mean")
        methods = {k: v for k, v in res.items() if not k.startswith("adapt,")}
        ablations = {k: v for k, v in res.items() if k.startswith("adapt,") or k == "adapt"}
        lines += [f"## {name} ({d['stream_rows']} stream rows)", "", *(_table(methods, full)), ""]
        if len(ablations) > 1:
            lines += [f"### {name}: ablations of adapt (one part changed)", "", *(_table(ablations, full)), ""]
        if name in doc.get("epochs_sweep", {}):
            lines += _sweep_table(name, doc["epochs_sweep"][name])
        invocations = d.get("invocations") or ([{"machine": d["machine"], "labels": list(res),
                                                  "seconds": d.get("seconds", 0.0)}] if "machine" in d else [])
        for inv in invocations:
            m = inv["machine"]
            lines += [f"{'; '.join(inv['labels'])}: run {m.get('date')} at commit {m.get('git_commit')} "
                      f"(uncommitted changes in the tree: {m.get('git_dirty')}), load average at start "
                      f"{m.get('loadavg_at_start')}, {inv['seconds']:.0f} s in all.", ""]
    if "memory" in doc:
        mem = doc["memory"]
        lines += [f"## A long stream: pool, snapshot and memory over time (digits, {mem['batches']} batches)", "",
                  f"The digits stream replayed with offsets running on; a point every {mem['every']} batches, "
                  f"{mem['budget']} rows each, pool_size {mem['pool_size']}. RSS: the whole bench process "
                  "(torch, Avalanche, the data).", "",
                  "| batches | rows seen | pool rows | snapshot bytes | RSS MiB | last point s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['rows_seen']} | {r['pool_rows']} | {r['snapshot_bytes']} "
                  f"| {r['rss_mb']:.0f} | {r['point_seconds']:.2f} |" for r in mem["trace"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
