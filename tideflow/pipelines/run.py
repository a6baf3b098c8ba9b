"""Running a graph: options, the run's own copies of the operators, tracking, a runner, the result.

`run_graph` validates the graph, copies its operators (a run never trains or
changes the user's strategy objects: the trained copies come back in
``RunResult.strategies``), opens the MLflow run, hands the copies to a runner
(`tideflow.pipelines.runners`: ``local`` runs every step in this process,
``ray`` one actor per step) with a `Collector` that records every batch, and
turns what the collector holds into the `RunResult`, the summary file and the
final MLflow metrics.

The copies: data-path operators and strategies are deep copies (a warm-started
model is copied as it is, never rebuilt from its constructor parameters). The
source and the sinks are the user's own: a source is read (its position
advances on the local runner; the Ray runner reads a copy in its source actor)
and a sink is written.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tideflow.pipelines.collector import Collector, NullTracker
from tideflow.pipelines.graph import Graph
from tideflow.pipelines.options import CheckpointOptions, RayOptions, RunOptions, split_options
from tideflow.pipelines.result import RunResult, TrainedStrategies, print_summary_table

RUNNERS = ("local", "ray")


def _source_total(source: Any) -> int | None:
    try:
        for attr in ("n", "num_rows"):
            v = getattr(source, attr, None)
            if isinstance(v, int):
                return max(0, v - source.position)
            if callable(v):
                return max(0, int(v()) - source.position)
    except Exception:  # noqa: BLE001 - a total is only for the progress bar (a source may not seek)
        return None
    return None


def _position(source: Any) -> int:
    try:
        return int(source.position or 0)
    except Exception:  # noqa: BLE001 - a source that cannot say where it is gets no warning
        return 0


def working_copy(graph: Graph) -> Graph:
    """The graph with deep copies of its data-path operators and strategies (see module docstring)."""
    steps = [s if s.kind in ("source", "sink") else dataclasses.replace(s, op=copy.deepcopy(s.op))
             for s in graph.steps]
    return Graph(graph.name, steps)


def run_graph(graph: Graph, *, runner: str = "local", options: RunOptions | None = None,
              ray: RayOptions | None = None, checkpoints: CheckpointOptions | None = None,
              **kwargs: Any) -> RunResult:
    """Run a graph and return its `RunResult`.

    The options come as objects (`RunOptions`, `RayOptions`, `CheckpointOptions`,
    each field documented in `tideflow.pipelines.options`) or as the flat keywords
    ``run()`` has always taken (``label_delay=1``, ``max_in_flight=2``,
    ``checkpoint_dir=...``); a keyword that is no option is a ``TypeError``.
    """
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}: use 'local' or 'ray'")
    opts, ray_opts, ckpt = split_options(kwargs, run=options, ray=ray, checkpoints=checkpoints)
    graph.validate()
    work = working_copy(graph)
    schema = work.validate()  # binds the copies
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(opts.output_dir) if opts.output_dir is not None else \
        Path("runs") / graph.name / f"{stamp}-{os.getpid()}"
    store = _checkpoint_store(graph, runner, opts, ckpt, out)
    out.mkdir(parents=True, exist_ok=True)
    observers = opts.observers
    # learn steps send their predictions when the run keeps them or an observer reads them; the
    # collector holds them (memory grows with the stream) only when the result must have them
    retain = opts.keep_predictions or any(o.needs_predictions for o in observers)
    emit = retain or any(o.streams_predictions for o in observers)
    if emit != opts.keep_predictions:
        opts = dataclasses.replace(opts, keep_predictions=emit)

    if opts.tracking:
        from tideflow.pipelines.tracking import Tracker

        tracker: Any = Tracker(experiment=opts.experiment, tracking_uri=opts.tracking_uri,
                               run_name=f"{graph.name}-{runner}", spill_path=out / "mlflow-backlog.jsonl")
    else:
        tracker = NullTracker()
    # the whole graph as params: one dotted key per step setting (steps.<name>.params.<param>)
    params = {"pipeline": graph.name, "runner": runner, "label_delay": opts.label_delay,
              "steps": {s.name: s.to_dict() for s in graph.steps}, "graph_hash": graph.fingerprint()}
    tracker.start(params)
    for s in graph.learners:
        tracker.start_child(s.name, s.to_dict())
    tracker.log_dict(graph.to_dict(), "graph.json")
    if ckpt.mlflow and store is not None:
        from tideflow.pipelines.checkpoint import MlflowMirror

        store.mirror = MlflowMirror(tracker, out / "checkpoint-upload")

    source = work.source.op
    total = _source_total(source)
    if total == 0 and not ckpt.resume and _position(source):
        # a source keeps its position (a broker's consumer does too): a second run of the same
        # source object starts where the first stopped; an empty run should not look like a result
        logging.getLogger("tideflow").warning(
            "%s: the source is at its end (position %d): an earlier run read it, so this run gets no rows; "
            "call source.seek(0) to read it again", graph.name, _position(source))
    per_batch = getattr(source, "batch_size", None)  # a recording's batches have no fixed size
    if opts.max_batches is not None and total is not None and per_batch:
        total = min(total, opts.max_batches * per_batch)
    bar, advance = _progress(opts.progress, total, f"{graph.name} [{runner}]")
    collector = Collector(work, tracker=tracker, output_dir=out, progress=advance,
                          metrics_every_s=opts.metrics_every_s, observers=observers, retain_predictions=retain)
    for obs in observers:
        obs.on_start(work)
    start = time.perf_counter()
    status = "FAILED"
    strategies: Any = TrainedStrategies()
    try:
        if bar is not None:
            bar.start()
        if runner == "local":
            from tideflow.pipelines.runners.local import run_local

            strategies = TrainedStrategies(run_local(work, schema, collector, opts))
        else:
            from tideflow.pipelines.runners.ray import run_on_ray

            strategies = run_on_ray(work, schema, collector, opts, ray_opts, ckpt, store)
        status = "FINISHED"
    finally:
        if bar is not None:
            bar.stop()
        seconds = time.perf_counter() - start
        if status != "FINISHED":
            for obs in observers:
                obs.on_abort()
        result = _finish(graph, runner, collector, tracker, out, seconds, strategies, status)
    for obs in observers:
        obs.on_finish(result)
        result.metrics[obs.name] = obs.result()
    if opts.print_summary:
        print_summary_table(result)
    return result


def _checkpoint_store(graph: Graph, runner: str, opts: RunOptions, ckpt: CheckpointOptions, out: Path) -> Any:
    """The `CheckpointStore` the options ask for (None: checkpoints only in memory, for recovery)."""
    if ckpt.mlflow and not opts.tracking:
        raise ValueError("checkpoint_mlflow=True copies checkpoints to the MLflow run: it needs tracking=True")
    directory = ckpt.dir if ckpt.dir is not None or not ckpt.mlflow else out / "checkpoints"
    if directory is None and not ckpt.resume:
        return None
    if runner != "ray":
        raise ValueError("checkpoints are taken by the Ray runner: use runner='ray'")
    from tideflow.pipelines.checkpoint import CheckpointStore

    store = CheckpointStore(directory, fingerprint=graph.fingerprint(), meta=ckpt.meta)
    if ckpt.resume and not store.files():
        raise FileNotFoundError(f"no checkpoint to resume from in {directory}")
    if not ckpt.resume and store.files():
        raise FileExistsError(f"{directory} already holds checkpoints of a run: pass resume=True "
                              f"(tideflow resume {directory}) to continue it, or use an empty folder")
    return store


def _finish(graph: Graph, runner: str, collector: Collector, tracker: Any, out: Path, seconds: float,
            strategies: TrainedStrategies, status: str) -> RunResult:
    """The result, the summary file and the final MLflow records of a run that ended (or failed)."""
    collector.quarantine.close()
    summary = collector.summary()
    result = RunResult(
        pipeline=graph.name, runner=runner, summary=summary, per_batch=collector.per_batch,
        quarantine=dict(collector.quarantine_counts), drift_events=collector.events,
        rows=collector.rows, batches=collector.batches, seconds=seconds, output_dir=out,
        run_id=tracker.run_id, predictions=collector.prediction_arrays(),
        extra={"restarts": collector.restarts, "restart_log": list(collector.restart_log)},
        strategies=strategies,
        evaluations={n: list(v) for n, v in collector.evaluations.items() if v},
        tracking_uri=getattr(tracker, "tracking_uri", None),
    )
    _say_shortfall(result)
    if result.evaluations:
        from tideflow.pipelines.metrics.continual import continual_metrics

        for name, records in result.evaluations.items():
            result.cl_metrics[name] = continual_metrics(records)
            summary[name]["continual"] = result.cl_metrics[name].scalars()
    summary_doc = {
        "pipeline": graph.name, "runner": runner, "rows": result.rows, "batches": result.batches,
        "seconds": round(seconds, 3), "events_per_second": round(result.events_per_second, 1),
        "quarantine": result.quarantine, "quarantined_rows": result.quarantined,
        "restarts": collector.restart_log,
        "drift_events": [e.to_dict() for e in collector.events], "strategies": summary,
    }
    if result.evaluations:
        summary_doc["evaluations"] = result.evaluations
        summary_doc["accuracy_matrices"] = {n: m.to_dict() for n, m in result.cl_metrics.items()}
    (out / "summary.json").write_text(json.dumps(summary_doc, indent=2, default=str))
    final = {"events_per_second": result.events_per_second, "rows_total": float(result.rows),
             "quarantined_total": float(result.quarantined), "wall_seconds": seconds}
    final.update({f"quarantine.{k}": float(v) for k, v in result.quarantine.items()})
    tracker.log_metrics(None, final, step=collector.batches)
    for name, s in summary.items():
        tracker.log_metrics(name, {f"final_{k}": float(v) for k, v in s.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
                            | {f"final_{k}": float(v) for k, v in s["extra"].items()}
                            | {f"final_skipped.{k}": float(v) for k, v in s["skipped_rows"].items()}
                            | {f"cl.{k}": v for k, v in s.get("continual", {}).items()},
                            step=collector.batches)
    # a store that went down mid-run gets time to come back before the artifacts go
    tracker.flush(getattr(tracker, "end_wait_s", 0.0))
    try:
        tracker.log_dict(summary_doc, "summary.json")
        if collector.quarantine.rows:
            tracker.log_artifact(str(collector.quarantine.path))
        if result.cl_metrics and result.run_id:
            _log_matrices(result, tracker, out)
        if result.run_id:
            _log_timeline(result, tracker, out)
    except Exception as exc:  # noqa: BLE001 - both are in the output folder as well
        logging.getLogger("tideflow").error("MLflow artifacts not stored (%s); they are in %s", exc, out)
    tracker.end(status)
    stats = getattr(tracker, "stats", None)
    if callable(stats):
        result.extra["tracking"] = stats()
    return result


def _log_matrices(result: RunResult, tracker: Any, out: Path) -> None:
    """Each learn step's accuracy matrix into its MLflow run: the table (JSON) and a heatmap."""
    from tideflow.pipelines.metrics.continual import heatmap

    for name, metrics in result.cl_metrics.items():
        tracker.log_dict(metrics.to_dict(), "accuracy_matrix.json", name=name)
        png = heatmap(metrics, out / f"accuracy_matrix_{name}.png", title=f"{result.pipeline}: {name}")
        tracker.log_artifact(str(png), name=name)


def _log_timeline(result: RunResult, tracker: Any, out: Path) -> None:
    """Scores over the stream with every drift event and task boundary drawn, when there is one."""
    from tideflow.pipelines.metrics.timeline import has_marks, timeline

    if has_marks(result):
        tracker.log_artifact(str(timeline(result, out / "timeline.png")["path"]))


def _say_shortfall(result: RunResult) -> None:
    """A learn step that scored fewer rows than reached it says so, with what it knows of why."""
    reached = result.rows - result.quarantined
    for name, s in result.summary.items():
        short = reached - s.get("rows_scored", 0)
        if short <= 0:
            continue
        why = [f"{s['errors']} failed batch step(s)"] if s["errors"] else []
        if s.get("rows_unscored"):
            why.append(f"{s['rows_unscored']} predicted without a target to score against")
        why += [f"{n} skipped as {reason}" for reason, n in sorted(s["skipped_rows"].items())]
        s["shortfall"] = short
        logging.getLogger("tideflow").warning(
            "learn step %r scored %d of the %d rows that reached it (%s)", name, s.get("rows_scored", 0), reached,
            "; ".join(why) if why else "rows the data path dropped, or not predicted")


def _progress(enabled: bool, total: int | None, label: str) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("events"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    task = bar.add_task(label, total=total)
    return bar, lambda n: bar.advance(task, n)


__all__ = ["RunResult", "run_graph", "working_copy"]
