"""What the ``images`` pipeline measures and writes: one run's report, a run's peak memory, the
iid bound's task-IL accuracy, and the comparison's table (`tideflow.pipelines.ready.images`).

Peak memory is the process's high-water resident set (``VmHWM``), reset to the current size just
before a run (Linux ``/proc/self/clear_refs``), so that it is the peak of that run: the
interpreter, torch and the stream's arrays that every method shares, plus what the method's run
adds (its ``+run``). Where the mark cannot be reset (not Linux, or a run whose learners live in
other processes) no figure is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.stream.batch import Batch
from tideflow.strategies.base import Strategy


# -- one run ------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def report(result: Any) -> dict[str, dict[str, Any]]:
    """Print each learner's final accuracy, forgetting, BWT, FWT (class-IL, and task-IL where the
    stream has task ids) and its accuracy matrix; returns them per learner."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)
    table = Table(title=f"{result.pipeline}: held-out accuracy (%) after the last task; R[i][j] below")
    cols = ("strategy", "acc", "forgetting", "BWT", "FWT", "acc task-IL", "forgetting task-IL", "train s",
            "rows trained")
    for c in cols:
        table.add_column(c, justify="left" if c == "strategy" else "right")
    out: dict[str, dict[str, Any]] = {}
    for name, m in result.cl_metrics.items():
        s = result.summary.get(name, {})
        out[name] = {**m.scalars(), "matrix": m.matrix, "matrix_til": m.matrix_til}
        table.add_row(name, _pct(m.average_accuracy), _pct(m.forgetting), _pct(m.bwt), _pct(m.fwt),
                      _pct(m.average_accuracy_til), _pct(m.forgetting_til), f"{s.get('train_seconds', 0.0):.1f}",
                      str(int(s.get("extra", {}).get("train_rows", 0))))
    console.print(table)
    for name, m in result.cl_metrics.items():
        rows = "; ".join(" ".join(_pct(v) for v in row) for row in m.matrix)
        console.print(f"{name}: R = [{rows}]", markup=False)
    if not result.cl_metrics:
        console.print("no held-out evaluation: the run read no batch, or the source has no held-out rows")
    return out


# -- memory and the iid bound --------------------------------------------------
def memory_kib(field: str) -> int | None:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in KiB, from /proc (None elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset this process's peak resident set to its current size (Linux ``clear_refs`` 5), so that
    ``VmHWM`` afterwards is the peak of what runs next. False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def til_accuracy(strategy: Strategy, held_out: dict[Any, Batch], target: str) -> dict[Any, float]:
    """Task-incremental accuracy of a trained learner on each task's held-out rows: its per-class
    scores masked to the task's classes (the classes of the task's held-out labels), as the engine
    masks them on a stream with task ids. For the iid run, whose stream has none."""
    out = {}
    for task, rows in held_out.items():
        truth = rows.column(target).to_pylist()
        allowed = sorted({v for v in truth if v is not None})
        preds = strategy.predict_scores(rows).argmax(allowed)
        out[task] = float(np.mean([p == t for p, t in zip(preds, truth)])) if truth else float("nan")
    return out


# -- the comparison's table --------------------------------------------------
#: the table's metrics: (field in a run's row, column title); accuracies in %
METRICS = (("average_accuracy", "final acc"), ("forgetting", "forgetting"), ("bwt", "BWT"), ("fwt", "FWT"))


def _entry(row: dict[str, Any], scenario: str, key: str) -> float | None:
    """A run's metric as the scenario reads it: task-IL reads the masked (``*_til``) ones."""
    if scenario == "task-IL":
        key = f"{key}_til"
    value = row.get(key)
    return None if value is None else float(value)


def aggregate(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (input, scenario, method); the iid bound's one run
    per seed gives both scenarios' entries."""
    table = []
    for enc in protocol["encoders"]:
        for scenario in protocol["scenarios"]:
            for method in protocol["methods"]:
                group = [r for r in rows if r["input"] == enc and r["method"] == method
                         and (r["scenario"] == scenario or method == "iid")]
                if not group:
                    continue
                entry: dict[str, Any] = {"input": enc, "scenario": scenario, "method": method, "seeds": len(group)}
                for key, _ in METRICS:
                    vals = [_entry(r, scenario, key) for r in group]
                    known = [v for v in vals if v is not None]
                    entry[key] = float(np.mean(known)) if known and len(known) == len(vals) else None
                    entry[key + "_std"] = float(np.std(known)) if known and len(known) == len(vals) else None
                    if key == "average_accuracy":
                        entry["per_seed"] = vals
                for key in ("train_seconds", "run_cpu_seconds", "train_rows", "flops", "samples_trained",
                            "peak_rss_mib", "run_rss_mib"):
                    vals = [r.get(key) for r in group]
                    entry[key] = float(np.mean(vals)) if all(v is not None for v in vals) else None
                table.append(entry)
    return table


def _cell(mean: float | None, std: float | None, scale: float = 100.0) -> str:
    if mean is None:
        return "-"
    value = round(scale * mean, 1) + 0.0  # + 0.0: a mean that rounds to zero reads 0.0, never -0.0
    return f"{value:.1f} ± {scale * (std or 0.0):.1f}"


#: notes under the table for the methods that need one (the class-IL rows of dst are marked)
NOTES = {
    "dst": ("dst: `SparseTraining`, one sparse sub-network per task of an MLP (hidden {hidden}, density {density}, "
            "{layer_density} layer densities, {growth} growth), frozen at the task's end. Task-IL: the task id "
            "from each row's task column. "
            "class-IL (dst†): a task id for training only from the task ends the stream marks (what every "
            "class-IL learner here is told); at prediction there is none, so it predicts through the newest "
            "task's sub-network and head: the method is task-incremental, and these rows say what that costs "
            "where no task id comes with a row. Its FLOPs count only the active weights; the kernels are dense, "
            "so its seconds do not fall with density."),
    "ear": ("ear: `EAR`, a frozen encoder (on pixels its own MLP 256-128, trained on the first task, then "
            "frozen; on the features none of its own) with adaptors grown within 5 % of the encoder's parameters "
            "where a batch is out of distribution for every expert's HDC memory (reconfigurator heads for new "
            "classes on an existing adaptor come on top of that budget). At every batch it makes the "
            "passes over its expert's current-task rows (at most 512), so its rows trained are several times "
            "the others'."),
}


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f}"


def _invocation(inv: dict[str, Any]) -> str:
    """One invocation: its command, wall minutes, runner, jobs, CPU, and the load it started under."""
    cpu = (f"; {inv['job_cpu_seconds'] / 60:.0f} CPU-min in the runs' processes" if inv.get("job_cpu_seconds")
           is not None else "")
    enc = (f", encoder features {inv['encoder_seconds'] / 60:.1f} min" if inv.get("encoder_seconds") is not None
           else "")
    load = ""
    if inv.get("load_at_start") is not None and inv.get("cores"):
        busy = " (other work shared the machine: its seconds are inflated)" if inv["load_at_start"] > 0.5 * inv[
            "cores"] else ""
        load = f"; load average {inv['load_at_start']:.1f} on {inv['cores']} cores when it started{busy}"
    return (f"`{inv['command']}` ({_minutes(inv.get('seconds'))} min on this machine, runner {inv.get('runner')}, "
            f"{inv.get('jobs')} job(s){cpu}{enc}{load})")


def _timing(doc: dict[str, Any]) -> str:
    """How the table was produced and what it took; after a merge, every invocation and the sum."""
    invocations = doc.get("invocations") or [{
        "command": doc["command"], "seconds": doc["seconds"], "runner": doc["runner"], "jobs": doc["jobs"],
        "job_cpu_seconds": doc.get("job_cpu_seconds"), "encoder_seconds": doc.get("encoder_seconds")}]
    if len(invocations) == 1:
        return _invocation(invocations[0])
    parts = [f"{_invocation(inv)} ran {', '.join(inv.get('methods') or [])}" for inv in invocations]
    total = " + ".join(_minutes(inv.get("seconds")) for inv in invocations)
    return (f"{'; then '.join(parts)}, each later one merging its runs into the file (`--set merge=true`): "
            f"the comparison took the invocations' times added up, {total} = {_minutes(doc['seconds'])} min on "
            f"this machine and {doc['job_cpu_seconds'] / 60:.0f} CPU-min in the runs' processes; in one "
            f"invocation: `{doc['command']}`")


def _note(method: str, settings: dict[str, Any]) -> str:
    """A method's note with its settings filled in (``?`` where the file does not hold one)."""
    import string

    keys = [f for _, f, _, _ in string.Formatter().parse(NOTES[method]) if f]
    values = {k: "-".join(map(str, settings[k])) if isinstance(settings.get(k), list) else settings.get(k, "?")
              for k in keys}
    return NOTES[method].format(**values)


def _no_start(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """The methods whose every run scored 0 on every task before its first batch (runs that
    recorded it)."""
    out = []
    for m in methods:
        starts = [v for r in runs if r["method"] == m and "start" in r
                  for v in [*r["start"], *(r.get("start_til") or [])] if v is not None]
        if starts and all(v == 0 for v in starts):
            out.append(m)
    return out


def _method(r: dict[str, Any]) -> str:
    return "dst†" if r["method"] == "dst" and r["scenario"] == "class-IL" else r["method"]


def markdown_table(doc: dict[str, Any]) -> str:
    """The README's table: one row per input, scenario and method, means ± std over the seeds."""
    p = doc["protocol"]
    cap = ("every row" if p["train_per_class"] is None and p["test_per_class"] is None else
           f"at most {p['train_per_class'] or 'all'} training and {p['test_per_class'] or 'all'} held-out rows "
           f"per class (a seeded choice per seed)")
    lines = [
        f"Split {p['dataset']} ({p['tasks']} tasks, classes in a seeded order), {cap}; batches of "
        f"{p['batch_size']} rows, {p['epochs']} pass(es) over each batch in minibatches of {p['minibatch']} for every "
        f"method; seeds {', '.join(map(str, p['seeds']))}; {_timing(doc)}. "
        f"class-IL: no task id, unmasked prediction; task-IL: the task id in every row, prediction masked to "
        f"the task's classes. Accuracy, forgetting, BWT, FWT in % (mean ± std over seeds) from the held-out "
        f"rows of each task; iid: the Naive MLP on the same rows shuffled (one run per seed, masked per task "
        f"for task-IL). Train s: the learner's own wall time; CPU s: the run's process (learning, held-out "
        f"evaluation, the data path); rows trained: passes x rows (replayed rows included); GFLOP: what the "
        f"learner counts for its training; peak MiB: the run's process (interpreter, torch, the stream), + the "
        f"rise during the run. Rows trained and GFLOP do not depend on what else ran on the machine; seconds do.",
        "",
        "| input | scenario | method | final acc | forgetting | BWT | FWT | train s | CPU s | rows trained | GFLOP "
        "| peak MiB (+run) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["table"]:
        mem = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f} (+{r['run_rss_mib']:.0f})"
        cpu = "-" if r.get("run_cpu_seconds") is None else f"{r['run_cpu_seconds']:.1f}"
        flops = "-" if r.get("flops") is None else f"{r['flops'] / 1e9:.1f}"
        lines.append(
            f"| {r['input']} | {r['scenario']} | {_method(r)} | "
            + " | ".join(_cell(r[k], r[k + "_std"]) for k, _ in METRICS)
            + f" | {r['train_seconds']:.1f} | {cpu} | {r['train_rows']:.0f} | {flops} | {mem} |")
    notes = [_note(m, p.get("settings", {}).get(m) or {}) for m in p["methods"] if m in NOTES]
    blank = _no_start(doc["runs"], p["methods"])
    if blank:
        notes.append(f"FWT of {', '.join(blank)}: measured against each run's accuracy before its first batch, which "
                     f"is 0 for these (no class is predicted before one was learned), so a positive FWT of theirs "
                     f"(such as a task's untrained head guessing among its classes under task-IL) is chance, not "
                     f"transfer.")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
