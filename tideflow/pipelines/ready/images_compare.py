"""The images comparison (``tideflow compare images``): every continual learner of the ``images``
pipeline on the issue's protocol, one table.

`compare` runs each (scenario, input, seed, method) as one run of the pipeline with that one
learner (`tideflow.pipelines.ready.images.run_job`) and writes ``<out>.json`` (every run, the
protocol, each invocation's time) and ``<out>.md`` (the table,
`tideflow.pipelines.ready.images_results.markdown_table`).

``merge=True`` runs only the methods asked and merges their runs into the ``<out>.json`` an earlier
invocation wrote, so that a method added later joins a table without running the others again.
What makes that sound: the merged runs share the earlier ones' protocol in everything but the
methods list (data set, tasks, scenarios, inputs, seeds, row caps, batch size, passes, minibatch,
Avalanche's task mode); a different protocol is refused before anything runs, naming what
differs. A method run again replaces its earlier runs. Each invocation keeps its own wall and CPU
time (``invocations``), and the table's header says the comparison's time is their sum.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tideflow.pipelines.ready.images import (ALL_METHODS, PROTOCOL, _integer, _job_quietly, _names,
                                             _optional_integer, _refuse_unknown, avalanche_experiences,
                                             dst_steps_per_task, ear_settings, make_strategy, protocol_source)
from tideflow.pipelines.ready.images_results import aggregate, markdown_table

#: the protocol's keys a merge may differ in: the methods run, and their settings
MERGE_FREE = ("methods", "settings")
#: roughly how long each method's run takes, longest first, so that parallel workers end together
COST_ORDER = ("ear", "replay", "prd", "dst", "ewc", "lwf", "dkvb", "naive", "iid")

COMPARE_OPTIONS = ("dataset", "tasks", "seeds", "scenarios", "inputs", "methods", "train_per_class", "test_per_class",
                   "batch_size", "epochs", "minibatch", "runner", "jobs", "out", "merge")


def _seeds(value: Any) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    seeds = [_integer("seed", str(x).strip(), 0) for x in items if str(x).strip()]
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"images compare: seeds is a comma list of distinct integers, got {value!r}")
    return seeds


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"images compare option {name} is true or false, got {value!r}")


def _settings(protocol: dict[str, Any]) -> dict[str, Any]:
    """Each method's constructor settings as the runs use them (seed and columns aside). EAR's
    depend on the input (`ear_settings`): one entry per input. SparseTraining's schedule length
    is the protocol's: the steps of its longest task on the first seed's stream."""
    augment = "crop" if protocol["dataset"] == "digits" else "auto"
    common = {"n_classes": 10, "seed": 0, "epochs": protocol["epochs"], "minibatch": protocol["minibatch"],
              "augment": augment}
    steps = None
    if "dst" in protocol["methods"]:
        src = protocol_source(dataset=protocol["dataset"], tasks=protocol["tasks"], seed=protocol["seeds"][0],
                              batch_size=protocol["batch_size"], train_per_class=protocol["train_per_class"],
                              test_per_class=protocol["test_per_class"])
        steps = dst_steps_per_task(src.metadata()["task_rows"], batch_size=protocol["batch_size"],
                                   minibatch=protocol["minibatch"], epochs=protocol["epochs"])

    def params(name: str, features: str | None = None) -> dict[str, Any]:
        learner = make_strategy(name, **common, features=features, steps_per_task=steps)
        return {k: v for k, v in learner.params().items() if k not in ("seed", "n_classes", "target", "features")}

    out: dict[str, Any] = {}
    for name in protocol["methods"]:
        if name == "ear":
            out[name] = {enc: params(name, None if enc == "pixels" else enc) for enc in protocol["encoders"]}
        else:
            out[name] = params(name)
    return out


def compare(*, dataset: str | None = None, tasks: Any = None, seeds: Any = None, scenarios: Any = None,
            inputs: Any = None, methods: Any = None, train_per_class: Any = "protocol",
            test_per_class: Any = "protocol", batch_size: Any = None, epochs: Any = None, minibatch: Any = None,
            runner: str = "local", jobs: int = 1, out: Path | str = Path("results/images"), merge: Any = False,
            **unknown: Any) -> dict[str, Any]:
    """Run the comparison (`PROTOCOL`, or the options given) and write ``<out>.json`` and ``<out>.md``.

    Every (scenario, input, seed, method) is one run of the pipeline with that one learner (the
    iid bound: one run per input and seed, on the class-incremental stream's rows shuffled, scored
    class-IL and, masked per task, task-IL). ``jobs`` runs at once, each in a fresh process with
    one torch thread, so that its peak memory is its own; with ``jobs=1`` they run one after the
    other in this process. The encoder's features are computed (and cached) before any run, once
    per input and seed. ``train_per_class`` / ``test_per_class``: the protocol's caps unless given
    (None: every row). ``merge``: add these methods' runs to ``<out>.json`` (module docstring).
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
    jobs = _integer("jobs", jobs, 1)
    out = Path(out)
    # what is merged into is read and checked before anything runs: a refusal costs nothing
    earlier = _earlier(out, protocol) if _flag("merge", merge) else None
    protocol["settings"] = _settings(protocol)
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
    work.sort(key=lambda j: (COST_ORDER.index(j["method"]), j["input"] == "pixels"))
    started, load = time.perf_counter(), _load()
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
    protocol = json.loads(json.dumps(protocol, default=str))  # tuples as lists, as the file holds them
    invocation = {"command": _command(protocol, jobs, runner, merge=earlier is not None), "runner": runner,
                  "jobs": jobs, "methods": protocol["methods"], "seconds": time.perf_counter() - started,
                  "encoder_seconds": warm, "run_cpu_seconds": sum(r["run_cpu_seconds"] for r in rows),
                  "job_cpu_seconds": sum(r["job_cpu_seconds"] for r in rows), "cores": os.cpu_count(),
                  "load_at_start": load, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    doc = _document(protocol, rows, [invocation]) if earlier is None else _merged(earlier, protocol, rows, invocation)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown_table(doc))
    return doc


def _document(protocol: dict[str, Any], rows: list[dict[str, Any]], invocations: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """The comparison's file: protocol, runs in table order, the invocations and their sums."""
    rows = sorted(rows, key=lambda r: (protocol["encoders"].index(r["input"]), r["scenario"],
                                       ALL_METHODS.index(r["method"]), r["seed"]))
    last = invocations[-1]
    return {"protocol": protocol, "command": _command(protocol, last["jobs"], last["runner"]),
            "runner": last["runner"], "jobs": last["jobs"], "invocations": invocations,
            # the comparison's cost: every invocation's, added up (a merge runs only its methods)
            "seconds": sum(i["seconds"] for i in invocations),
            "encoder_seconds": sum(i.get("encoder_seconds") or 0.0 for i in invocations),
            "run_cpu_seconds": sum(r["run_cpu_seconds"] for r in rows),
            "job_cpu_seconds": sum(r["job_cpu_seconds"] for r in rows), "runs": rows,
            "table": aggregate(rows, protocol)}


def _earlier(out: Path, protocol: dict[str, Any]) -> dict[str, Any]:
    """The comparison to merge into, refused unless its protocol is this one but for the methods."""
    path = out.with_suffix(".json")
    if not path.exists():
        raise ValueError(f"images compare: merge=true adds runs to {path}, which does not exist; run the comparison "
                         f"without merge first (or give --out the file's path without .json)")
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or "protocol" not in doc or "runs" not in doc:
        raise ValueError(f"images compare: {path} is not a comparison's file (no protocol or runs)")
    mine = json.loads(json.dumps(protocol, default=str))
    theirs = doc["protocol"]
    differ = sorted(k for k in set(mine) | set(theirs) if k not in MERGE_FREE and mine.get(k) != theirs.get(k))
    if differ:
        said = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
        raise ValueError(f"images compare: will not merge into {path}: its protocol differs in more than the "
                         f"methods ({said}); give the same options, or another --out")
    return doc


def _merged(earlier: dict[str, Any], protocol: dict[str, Any], rows: list[dict[str, Any]],
            invocation: dict[str, Any]) -> dict[str, Any]:
    """The earlier comparison with these runs added; a method run again replaces its earlier runs."""
    again = set(protocol["methods"])
    kept = [r for r in earlier["runs"] if r["method"] not in again]
    invocation["replaced"] = sorted(again & {r["method"] for r in earlier["runs"]})
    old = earlier["protocol"]
    merged = dict(old)
    methods = set(old["methods"]) | again
    merged["methods"] = [m for m in ALL_METHODS if m in methods]
    merged["settings"] = {**old.get("settings", {}), **protocol["settings"]}
    merged["settings"] = {m: merged["settings"][m] for m in merged["methods"] if m in merged["settings"]}
    before = earlier.get("invocations") or [{  # a file written before invocations were recorded
        "command": earlier.get("command"), "runner": earlier.get("runner"), "jobs": earlier.get("jobs"),
        "methods": old["methods"], "seconds": earlier.get("seconds"),
        "encoder_seconds": earlier.get("encoder_seconds"), "run_cpu_seconds": earlier.get("run_cpu_seconds"),
        "job_cpu_seconds": earlier.get("job_cpu_seconds")}]
    return _document(merged, kept + rows, [*before, invocation])


def _load() -> float | None:
    """The machine's one-minute load average when the comparison starts (None where unknown): what
    says whether other work shared the cores with the runs' wall times."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


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


def _command(protocol: dict[str, Any], jobs: int, runner: str, merge: bool = False) -> str:
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
    if merge:
        parts.append("--set merge=true")
    if jobs > 1:
        parts.append(f"--jobs {jobs}")
    if runner != "local":
        parts.append(f"--runner {runner}")
    return " ".join(parts)
