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
                for key in ("train_seconds", "train_rows", "samples_trained", "peak_rss_mib", "run_rss_mib"):
                    vals = [r.get(key) for r in group]
                    entry[key] = float(np.mean(vals)) if all(v is not None for v in vals) else None
                table.append(entry)
    return table


def _cell(mean: float | None, std: float | None, scale: float = 100.0) -> str:
    if mean is None:
        return "-"
    value = round(scale * mean, 1) + 0.0  # + 0.0: a mean that rounds to zero reads 0.0, never -0.0
    return f"{value:.1f} ± {scale * (std or 0.0):.1f}"


def _cpu_note(doc: dict[str, Any]) -> str:
    """The CPU the runs used (their processes; the encoder's warm-up apart), when recorded."""
    if doc.get("job_cpu_seconds") is None:
        return ""
    return (f"; {doc['job_cpu_seconds'] / 60:.0f} CPU-min in the runs' processes, encoder features "
            f"{doc.get('encoder_seconds', 0.0) / 60:.1f} min")


def markdown_table(doc: dict[str, Any]) -> str:
    """The README's table: one row per input, scenario and method, means ± std over the seeds."""
    p = doc["protocol"]
    cap = ("every row" if p["train_per_class"] is None and p["test_per_class"] is None else
           f"at most {p['train_per_class'] or 'all'} training and {p['test_per_class'] or 'all'} held-out rows "
           f"per class (a seeded choice per seed)")
    lines = [
        f"Split {p['dataset']} ({p['tasks']} tasks, classes in a seeded order), {cap}; batches of "
        f"{p['batch_size']} rows, {p['epochs']} pass(es) over each batch in minibatches of {p['minibatch']} for every "
        f"method; seeds {', '.join(map(str, p['seeds']))}; `{doc['command']}` "
        f"({doc['seconds'] / 60:.0f} min on this machine, runner {doc['runner']}, {doc['jobs']} job(s)"
        f"{_cpu_note(doc)}). "
        f"class-IL: no task id, unmasked prediction; task-IL: the task id in every row, prediction masked to "
        f"the task's classes. Accuracy, forgetting, BWT, FWT in % (mean ± std over seeds) from the held-out "
        f"rows of each task; iid: the Naive MLP on the same rows shuffled (one run per seed, masked per task "
        f"for task-IL). Train s: the learner's own time; rows trained: passes x rows (replayed rows "
        f"included); peak MiB: the run's process (interpreter, torch, the stream), + the rise during the run.",
        "",
        "| input | scenario | method | final acc | forgetting | BWT | FWT | train s | rows trained | peak MiB (+run) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["table"]:
        mem = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f} (+{r['run_rss_mib']:.0f})"
        lines.append(
            f"| {r['input']} | {r['scenario']} | {r['method']} | "
            + " | ".join(_cell(r[k], r[k + "_std"]) for k, _ in METRICS)
            + f" | {r['train_seconds']:.1f} | {r['train_rows']:.0f} | {mem} |")
    return "\n".join(lines) + "\n"
