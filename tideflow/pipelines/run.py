"""Running a graph: the driver loop shared by the runners, results, tracking, summary.

`run_graph` picks a runner (``local``: every step in this process; ``ray``: one
actor per step, see `tideflow.pipelines.ray_runner`). Both hand the driver the
same three things per batch, in stream order: the rows read, the side outputs of
the data-path steps (quarantined rows, drift events), and each learn step's
`LearnResult`. The `Collector` below turns those into per-batch metrics, the run
summary, the quarantine file and MLflow records, identically for both runners.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from tideflow.pipelines.evaluation import Learner, LearnResult, Scores, add_extra
from tideflow.pipelines.graph import Graph
from tideflow.stream.drift import DriftEvent
from tideflow.stream.operator import SideOutput
from tideflow.stream.validate import QUARANTINE_SCHEMA
from tideflow.strategies.base import COMPUTE_EXTRA


@dataclass
class RunResult:
    """What a pipeline run produced."""

    pipeline: str
    runner: str
    summary: dict[str, dict[str, Any]]
    per_batch: dict[str, list[dict[str, Any]]]
    quarantine: dict[str, int]
    drift_events: list[DriftEvent]
    rows: int
    batches: int
    seconds: float
    output_dir: Path
    run_id: str | None = None
    # per strategy: {"offset", "prediction", "truth"} arrays sorted by offset (keep_predictions=True)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def quarantined(self) -> int:
        return sum(v for k, v in self.quarantine.items() if k != "extra_field_dropped")


class QuarantineWriter:
    """Appends quarantined rows to an Arrow IPC file in the run's folder (opened on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pa.ipc.new_stream(str(self.path), QUARANTINE_SCHEMA)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Collector:
    """Driver-side bookkeeping of one run (see module docstring)."""

    def __init__(self, graph: Graph, *, tracker: Any, output_dir: Path, progress: Any,
                 metrics_every_s: float = 1.0) -> None:
        self.graph = graph
        # per-batch metrics are summed over the batches of an interval and logged at most every
        # `metrics_every_s` seconds (0: every batch): each MLflow point costs ~0.16 ms on SQLite
        # and ~11 are written per strategy, which at 500-row batches added 18-31 % to a run
        self.metrics_every_s = metrics_every_s
        self._last_log = time.monotonic() - metrics_every_s  # the first batch is logged at once
        self._pending_seq: int | None = None
        self._window = {s.name: Scores() for s in graph.learners}
        self._window_parent: dict[str, float] = {}
        self.tracker = tracker
        self.output_dir = output_dir
        self.progress = progress
        self.problems = {s.name: s.op.problem for s in graph.learners}
        self.totals = {s.name: Scores() for s in graph.learners}
        self.compute = {s.name: {"samples": 0, "fits": 0, "train_seconds": 0.0} for s in graph.learners}
        self.extra: dict[str, dict[str, float]] = {s.name: {} for s in graph.learners}
        self.errors: dict[str, list[str]] = {s.name: [] for s in graph.learners}
        self.predictions: dict[str, list[tuple[list[int], list[Any], list[Any]]]] = {
            s.name: [] for s in graph.learners}
        self.per_batch: dict[str, list[dict[str, Any]]] = {s.name: [] for s in graph.learners}
        self.quarantine_counts: dict[str, int] = {}
        self.quarantine = QuarantineWriter(output_dir / "quarantine.arrow")
        self.events: list[DriftEvent] = []
        self.rows = 0
        self.batches = 0
        # Recovery (Ray runner): after a failure the run rolls back to a checkpoint and the
        # batches after it come again. Everything up to `emitted_through` already left the
        # process (MLflow points, quarantine rows, sink writes) and is not emitted twice;
        # the in-memory totals are rolled back and recomputed. `_cuts` are the batches at
        # which a metrics interval was logged, so a replay cuts its intervals where the
        # first pass did and every batch is in exactly one logged interval.
        self.last_seq = -1
        self.emitted_through = -1
        self._cuts: set[int] = set()
        self.restarts = 0
        self.restart_log: list[dict[str, Any]] = []

    # small state, copied whole at a checkpoint; the histories below only grow, so a
    # checkpoint records their lengths (a copy of them would cost O(run length) each time)
    _STATE = ("_window", "_window_parent", "_pending_seq", "totals", "compute", "extra",
              "quarantine_counts", "rows", "batches", "last_seq")

    def checkpoint(self) -> dict[str, Any]:
        """The bookkeeping after the last added batch (see `rollback`): the small state, and
        the lengths of the per-batch records, predictions, errors and events."""
        import copy

        state = copy.deepcopy({k: getattr(self, k) for k in self._STATE})
        state["lengths"] = {"per_batch": {n: len(v) for n, v in self.per_batch.items()},
                            "predictions": {n: len(v) for n, v in self.predictions.items()},
                            "errors": {n: len(v) for n, v in self.errors.items()},
                            "events": len(self.events)}
        return state

    def history(self, since: dict[str, Any] | None, upto: dict[str, Any]) -> dict[str, Any]:
        """The history records between two checkpoints' lengths (plain data, for the disk)."""
        lo = since or {"per_batch": {}, "predictions": {}, "errors": {}, "events": 0}
        return {
            "per_batch": {n: self.per_batch[n][lo["per_batch"].get(n, 0):k] for n, k in upto["per_batch"].items()},
            "predictions": {n: [list(map(list, p)) for p in self.predictions[n][lo["predictions"].get(n, 0):k]]
                            for n, k in upto["predictions"].items()},
            "errors": {n: self.errors[n][lo["errors"].get(n, 0):k] for n, k in upto["errors"].items()},
            "events": [e.to_dict() for e in self.events[lo["events"]:upto["events"]]],
        }

    def load_history(self, parts: list[dict[str, Any]]) -> None:
        """Rebuild the histories from `history` records (a resume from disk), oldest first."""
        for part in parts:
            for n, recs in part["per_batch"].items():
                self.per_batch[n].extend(recs)
            for n, preds in part["predictions"].items():
                self.predictions[n].extend(tuple(p) for p in preds)  # type: ignore[misc]
            for n, errs in part["errors"].items():
                self.errors[n].extend(errs)
            self.events.extend(DriftEvent(**e) for e in part["events"])

    def commit(self, seq: int) -> None:
        """A checkpoint at batch ``seq`` is durable: no rollback will go before it."""
        self._cuts = {c for c in self._cuts if c > seq}

    def rollback(self, state: dict[str, Any]) -> None:
        """Back to a `checkpoint`; batches added since then will come again and are not re-emitted."""
        import copy

        self.emitted_through = max(self.emitted_through, self.last_seq)
        state = copy.deepcopy(state)
        lengths = state.pop("lengths")
        for k, v in state.items():
            setattr(self, k, v)
        for n, k in lengths["per_batch"].items():
            del self.per_batch[n][k:]
        for n, k in lengths["predictions"].items():
            del self.predictions[n][k:]
        for n, k in lengths["errors"].items():
            del self.errors[n][k:]
        del self.events[lengths["events"]:]

    def log_restart(self, n: int, error: str, from_seq: int) -> None:
        """A recovery: which restart, what was lost, which checkpoint it went back to."""
        self.restart_log.append({"restart": n, "error": error, "from_batch": from_seq,
                                 "emitted_through": self.emitted_through})
        self.tracker.log_metrics(None, {"restarts": float(n)}, step=max(self.emitted_through, 0))

    def replaying(self, seq: int) -> bool:
        """Whether batch ``seq``'s outputs were emitted before a rollback."""
        return seq <= self.emitted_through

    def add(self, seq: int, rows: int, side: SideOutput, results: dict[str, LearnResult]) -> None:
        replay = self.replaying(seq)
        self.last_seq = seq
        self.rows += rows
        self.batches += 1
        quarantined = 0
        for table in side.quarantine:
            if not replay:
                self.quarantine.write(table)
            quarantined += table.num_rows
            for reason in table.column("reason").to_pylist():
                self.quarantine_counts[reason] = self.quarantine_counts.get(reason, 0) + 1
        self._window_parent["rows"] = self._window_parent.get("rows", 0.0) + rows
        if quarantined:
            self._window_parent["quarantined_rows"] = self._window_parent.get("quarantined_rows", 0.0) + quarantined
        for e in side.drift_events:  # events are rare and each one matters: logged at once
            self.events.append(e)
            if not replay:
                self.tracker.log_metrics(None, {f"drift.{e.step}": float(e.offset)}, step=seq)
        for name, res in results.items():
            task = self.problems[name]
            batch_scores = res.combined()
            self.totals[name].add(batch_scores)
            self._window[name].add(batch_scores)
            c = self.compute[name]
            c["samples"] += res.samples
            c["fits"] += res.fits
            c["train_seconds"] += res.train_seconds
            add_extra(self.extra[name], res.extra)
            record = {"seq": seq, **batch_scores.metrics(task), "samples": res.samples, "fits": res.fits,
                      "train_seconds": res.train_seconds, "drift_events": len(res.events)}
            if res.extra:
                record["extra"] = dict(res.extra)
            self.per_batch[name].append(record)
            for e in res.events:
                self.events.append(e)
                if not replay:
                    self.tracker.log_metrics(name, {"drift_offset": float(e.offset)}, step=seq)
            self.predictions[name].extend(res.predictions)
            if res.errors:
                self._errors(name, res.errors)
        self._pending_seq = seq
        if replay:
            if seq in self._cuts:
                self.log_window(emit=False)
            return
        now = time.monotonic()
        if now - self._last_log >= self.metrics_every_s:
            self._last_log = now
            self.log_window()
        if self.progress is not None:
            self.progress(rows)

    def log_window(self, emit: bool = True) -> None:
        """Log the metrics of the batches since the last call, at the step of the newest batch.

        ``emit=False`` (a replay after a rollback) closes the interval without logging: its
        points are in MLflow from the first pass.
        """
        seq = self._pending_seq
        if seq is None:
            return
        self._pending_seq = None
        if emit:
            self._cuts.add(seq)
            self.tracker.log_metrics(None, self._window_parent, step=seq)
        self._window_parent = {}
        for name in self.problems:
            task = self.problems[name]
            c = self.compute[name]
            metrics = {k: float(v) for k, v in self._window[name].metrics(task).items()}
            self._window[name] = Scores()
            metrics.update({f"cum_{k}": float(v) for k, v in self.totals[name].metrics(task).items()
                            if k != "rows_scored"})
            metrics["samples_trained"] = float(c["samples"])
            metrics["train_seconds"] = float(c["train_seconds"])
            metrics["fits"] = float(c["fits"])
            # compute counters a strategy reports beside samples/fits/seconds (training rows, FLOPs, ...)
            metrics.update({f"cum_{k}": v for k, v in self.extra[name].items() if k in COMPUTE_EXTRA})
            if self.errors[name]:
                metrics["strategy_errors"] = float(len(self.errors[name]))
            if emit:
                self.tracker.log_metrics(name, metrics, step=seq)

    def _errors(self, name: str, errors: list[str]) -> None:
        import logging

        if not self.errors[name]:
            logging.getLogger("tideflow").warning("strategy %r failed on a batch (the job goes on): %s",
                                                  name, errors[0])
        self.errors[name].extend(errors)

    def finish(self, results: dict[str, LearnResult]) -> None:
        self.log_window()
        for name, res in results.items():
            if res.errors:
                self._errors(name, res.errors)
            c = self.compute[name]
            c["samples"] += res.samples
            c["fits"] += res.fits
            c["train_seconds"] += res.train_seconds
            add_extra(self.extra[name], res.extra)
        self.quarantine.close()

    def prediction_arrays(self) -> dict[str, dict[str, Any]]:
        import numpy as np

        out: dict[str, dict[str, Any]] = {}
        for name, parts in self.predictions.items():
            if not parts:
                continue
            offsets = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
            order = np.argsort(offsets, kind="stable")
            preds = np.concatenate([np.asarray(p[1], dtype=object) for p in parts])[order]
            truth = np.concatenate([np.asarray(p[2], dtype=object) for p in parts])[order]
            if self.problems[name] == "regression":
                preds, truth = preds.astype(float), truth.astype(float)
            out[name] = {"offset": offsets[order], "prediction": preds, "truth": truth}
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for s in self.graph.learners:
            name = s.name
            events = sum(1 for e in self.events if e.step == name)
            out[name] = {
                "strategy": s.describe(),
                "problem": self.problems[name],
                **self.totals[name].metrics(self.problems[name]),
                "samples_trained": self.compute[name]["samples"],
                "fits": self.compute[name]["fits"],
                "train_seconds": round(self.compute[name]["train_seconds"], 4),
                "error_drift_events": events,
                "extra": dict(self.extra[name]),
                "errors": len(self.errors[name]),
                "first_error": self.errors[name][0] if self.errors[name] else None,
            }
        return out


class _NullTracker:
    run_id = None

    def start(self, params: dict[str, Any]) -> None:
        return None

    def start_child(self, name: str, params: dict[str, Any]) -> None:
        return None

    def log_metrics(self, name: str | None, values: dict[str, float], step: int) -> None:
        pass

    def flush(self, wait_s: float = 0.0) -> bool:
        return True

    def log_dict(self, obj: dict[str, Any], artifact_file: str, name: str | None = None) -> None:
        pass

    def log_artifact(self, local_path: str, name: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any], name: str | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def make_learners(graph: Graph, schema: Any, *, label_delay: int, shard: tuple[int, int] = (0, 1),
                  keep_predictions: bool = False) -> dict[str, Learner]:
    """One `Learner` per learn step (on the local runner: all keys in one)."""
    return {s.name: make_learner(graph, s.name, schema, label_delay=label_delay, shard=shard,
                                 keep_predictions=keep_predictions) for s in graph.learners}


def make_learner(graph: Graph, name: str, schema: Any, *, label_delay: int, shard: tuple[int, int] = (0, 1),
                 strategy: Any = None, keep_predictions: bool = False) -> Learner:
    step = graph.step(name)
    senders = {d.name for d in graph.chain if d.kind == "detect" and (d.to is None or name in d.to)}
    return Learner(
        name,
        strategy if strategy is not None else step.op,
        schema,
        key=step.route.key if step.route else None,
        shard=shard,
        detector=step.detector,
        detector_params=step.detector_params,
        accept_events_from=senders,
        label_delay=label_delay,
        keep_predictions=keep_predictions,
    )


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


def run_graph(
    graph: Graph,
    *,
    runner: str = "local",
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "tideflow",
    progress: bool = True,
    label_delay: int = 0,
    max_batches: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    max_in_flight: int = 4,
    ray_address: str | None = None,
    print_summary: bool = False,
    keep_predictions: bool = False,
    metrics_every_s: float = 1.0,
    ray_fuse_chain: bool = True,
    checkpoint_every: int = 100,
    max_restarts: int = 3,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
    checkpoint_every_s: float | None = None,
    checkpoint_mlflow: bool = False,
) -> RunResult:
    """Run a validated graph and return its `RunResult`.

    Args:
        runner: ``"local"`` or ``"ray"``.
        tracking: log to MLflow (one run, a nested run per strategy).
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` here).
        progress: show a progress bar.
        label_delay: batches between a prediction and its labels reaching the learner.
        max_batches: stop after this many batches.
        output_dir: where the quarantine file and summary go (default ``runs/<pipeline>/<time>``).
        max_in_flight: Ray runner: batches in flight at once (backpressure).
        ray_address: Ray runner: cluster to join (default ``RAY_ADDRESS``, else a local Ray).
        print_summary: print the summary table at the end.
        keep_predictions: return every prediction with its offset and truth (for plots
            and per-step analysis; memory grows with the stream).
        metrics_every_s: MLflow gets the per-batch metrics summed over the batches of each
            interval of this many seconds (at the step of the interval's last batch; 0 = one
            point per batch). Drift events are logged as they happen; every batch's record
            stays in ``RunResult.per_batch``.
        ray_fuse_chain: Ray runner: run the data path inside the source actor (default) rather
            than one actor per data-path step (more pipelining, more per-batch overhead).
        checkpoint_every: Ray runner: every actor snapshots its state at the same batch boundary
            every this many batches (0: never, a lost actor then restarts the run from the start).
        max_restarts: Ray runner: how many times a run recovers from a lost actor or node
            (restore the last checkpoint, replay the batches after it) before it fails.
        checkpoint_dir: Ray runner: also write each checkpoint to this folder (atomically,
            no pickle; the newest two are kept), so that a run that died can be resumed.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` (same pipeline graph).
        checkpoint_every_s: Ray runner: also take a checkpoint when this many seconds have passed
            since the last one (whichever of the two comes first; None: by batches only).
        checkpoint_mlflow: also copy each checkpoint into the MLflow run's artifacts
            (``checkpoints/``, see `tideflow.pipelines.checkpoint.MlflowMirror`); the local copy
            goes to ``checkpoint_dir`` or, without one, ``<output_dir>/checkpoints``. Resume
            such a run with ``tideflow resume mlflow:<run_id>``.
        checkpoint_meta: plain data written as ``run.json`` beside the checkpoints (the CLI
            puts its arguments there for ``tideflow resume``).
    """
    if runner not in ("local", "ray"):
        raise ValueError(f"unknown runner {runner!r}: use 'local' or 'ray'")
    schema = graph.validate()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(output_dir) if output_dir is not None else Path("runs") / graph.name / f"{stamp}-{os.getpid()}"
    if checkpoint_mlflow:
        if not tracking:
            raise ValueError("checkpoint_mlflow=True copies checkpoints to the MLflow run: it needs tracking=True")
        if checkpoint_dir is None:
            checkpoint_dir = out / "checkpoints"
    store = None
    if checkpoint_dir is not None or resume:
        from tideflow.pipelines.checkpoint import CheckpointStore

        if runner != "ray":
            raise ValueError("checkpoints are taken by the Ray runner: use runner='ray'")
        if checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        store = CheckpointStore(checkpoint_dir, fingerprint=graph.fingerprint(), meta=checkpoint_meta)
        if resume and not store.files():
            raise FileNotFoundError(f"no checkpoint to resume from in {checkpoint_dir}")
        if not resume and store.files():
            raise FileExistsError(f"{checkpoint_dir} already holds checkpoints of a run: pass resume=True "
                                  f"(tideflow resume {checkpoint_dir}) to continue it, or use an empty folder")
    out.mkdir(parents=True, exist_ok=True)

    if tracking:
        from tideflow.pipelines.tracking import Tracker

        tracker: Any = Tracker(experiment=experiment, tracking_uri=tracking_uri, run_name=f"{graph.name}-{runner}",
                               spill_path=out / "mlflow-backlog.jsonl")
    else:
        tracker = _NullTracker()
    # the whole graph as params: one dotted key per step setting (steps.<name>.params.<param>)
    params = {"pipeline": graph.name, "runner": runner, "label_delay": label_delay,
              "steps": {s.name: s.to_dict() for s in graph.steps}, "graph_hash": graph.fingerprint()}
    tracker.start(params)
    for s in graph.learners:
        tracker.start_child(s.name, s.to_dict())
    tracker.log_dict(graph.to_dict(), "graph.json")
    if checkpoint_mlflow and store is not None:
        from tideflow.pipelines.checkpoint import MlflowMirror

        store.mirror = MlflowMirror(tracker, out / "checkpoint-upload")

    source = graph.source.op
    total = _source_total(source)
    per_batch = getattr(source, "batch_size", None)  # a recording's batches have no fixed size
    if max_batches is not None and total is not None and per_batch:
        total = min(total, max_batches * per_batch)
    bar, advance = _progress(progress, total, f"{graph.name} [{runner}]")
    collector = Collector(graph, tracker=tracker, output_dir=out, progress=advance,
                          metrics_every_s=metrics_every_s)
    start = time.perf_counter()
    status = "FAILED"
    try:
        if bar is not None:
            bar.start()
        if runner == "local":
            _run_local(graph, schema, collector, label_delay=label_delay, max_batches=max_batches,
                       keep_predictions=keep_predictions)
        else:
            from tideflow.pipelines.ray_runner import run_on_ray

            run_on_ray(graph, schema, collector, label_delay=label_delay, max_batches=max_batches,
                       max_in_flight=max_in_flight, address=ray_address, keep_predictions=keep_predictions,
                       fuse_chain=ray_fuse_chain, checkpoint_every=checkpoint_every,
                       checkpoint_every_s=checkpoint_every_s,
                       max_restarts=max_restarts, checkpoints=store, resume=resume)
        status = "FINISHED"
    finally:
        if bar is not None:
            bar.stop()
        seconds = time.perf_counter() - start
        collector.quarantine.close()
        summary = collector.summary()
        result = RunResult(
            pipeline=graph.name, runner=runner, summary=summary, per_batch=collector.per_batch,
            quarantine=dict(collector.quarantine_counts), drift_events=collector.events,
            rows=collector.rows, batches=collector.batches, seconds=seconds, output_dir=out,
            run_id=tracker.run_id, predictions=collector.prediction_arrays(),
            extra={"restarts": collector.restarts, "restart_log": list(collector.restart_log)},
        )
        summary_doc = {
            "pipeline": graph.name, "runner": runner, "rows": result.rows, "batches": result.batches,
            "seconds": round(seconds, 3), "events_per_second": round(result.events_per_second, 1),
            "quarantine": result.quarantine, "quarantined_rows": result.quarantined,
            "restarts": collector.restart_log,
            "drift_events": [e.to_dict() for e in collector.events], "strategies": summary,
        }
        (out / "summary.json").write_text(json.dumps(summary_doc, indent=2, default=str))
        final = {"events_per_second": result.events_per_second, "rows_total": float(result.rows),
                 "quarantined_total": float(result.quarantined), "wall_seconds": seconds}
        final.update({f"quarantine.{k}": float(v) for k, v in result.quarantine.items()})
        tracker.log_metrics(None, final, step=collector.batches)
        for name, s in summary.items():
            tracker.log_metrics(name, {f"final_{k}": float(v) for k, v in s.items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
                                | {f"final_{k}": float(v) for k, v in s["extra"].items()},
                                step=collector.batches)
        # a store that went down mid-run gets time to come back before the artifacts go
        tracker.flush(getattr(tracker, "end_wait_s", 0.0))
        try:
            tracker.log_dict(summary_doc, "summary.json")
            if collector.quarantine.rows:
                tracker.log_artifact(str(collector.quarantine.path))
        except Exception as exc:  # noqa: BLE001 - both are in the output folder as well
            import logging

            logging.getLogger("tideflow").error("MLflow artifacts not stored (%s); they are in %s", exc, out)
        tracker.end(status)
        stats = getattr(tracker, "stats", None)
        if callable(stats):
            result.extra["tracking"] = stats()
    if print_summary:
        print_summary_table(result)
    return result


def _run_local(graph: Graph, schema: Any, collector: Collector, *, label_delay: int, max_batches: int | None,
               keep_predictions: bool = False) -> None:
    learners = make_learners(graph, schema, label_delay=label_delay, keep_predictions=keep_predictions)
    chain = [s.op for s in graph.chain]
    sinks = [s.op for s in graph.sinks]
    source = graph.source.op
    from tideflow.connectors.base import Source

    # a broker source acknowledges a batch once it is processed (no checkpoints here)
    acks = isinstance(source, Source) and type(source).commit is not Source.commit
    try:
        for seq, batch in enumerate(source.batches()):
            if max_batches is not None and seq >= max_batches:
                break
            rows = len(batch)
            side = SideOutput()
            current: Any = batch
            for op in chain:
                if current is None or not len(current):
                    break
                current = op.process(current)
                side.extend(op.drain())
            results = {name: lrn.step(seq, current, side.drift_events) for name, lrn in learners.items()}
            if current is not None and len(current):
                for sink in sinks:
                    sink.write(current)
            collector.add(seq, rows, side, results)
            if acks:
                source.commit(source.snapshot())
    finally:
        if isinstance(source, Source):
            source.close()  # broker connections (a later run reconnects)
    collector.finish({name: lrn.finish() for name, lrn in learners.items()})
    for sink in sinks:
        sink.close()


def _progress(enabled: bool, total: int | None, label: str) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("events"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    task = bar.add_task(label, total=total)
    return bar, lambda n: bar.advance(task, n)


def print_summary_table(result: RunResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.pipeline} on the {result.runner} runner: {result.rows} events, "
                        f"{result.batches} batches, {result.seconds:.1f} s ({result.events_per_second:,.0f} events/s)")
    for col in ("strategy", "problem", "rows scored", "accuracy", "MAE", "RMSE", "MAPE %", "trained on", "fits",
                "train s", "drift (error)"):
        table.add_column(col, justify="left" if col in ("strategy", "problem") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for name, s in result.summary.items():
        table.add_row(name, s["problem"], str(s["rows_scored"]), fmt(s.get("accuracy")), fmt(s.get("mae")),
                      fmt(s.get("rmse")), fmt(s.get("mape")), str(s["samples_trained"]), str(s["fits"]), f"{s['train_seconds']:.2f}",
                      str(s["error_drift_events"]))
    # a pipe or CI log is not a terminal: rich would wrap the table at 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(table)
    for name, s in result.summary.items():
        if s["errors"]:
            console.print(f"[red]{name}: {s['errors']} failed batch step(s); first: {s['first_error']}")
    upstream = [e for e in result.drift_events if e.step not in result.summary]
    if upstream:
        console.print(f"drift events from detectors: {len(upstream)} (first at offsets "
                      f"{', '.join(str(e.offset) for e in upstream[:5])})")
    if result.quarantine:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(result.quarantine.items()))
        console.print(f"[yellow]quarantined rows: {result.quarantined} ({counts}) -> {result.output_dir / 'quarantine.arrow'}")
    else:
        console.print("quarantined rows: 0")
    if result.run_id:
        console.print(f"MLflow run: {result.run_id}")
    console.print(f"summary: {result.output_dir / 'summary.json'}")
