"""The driver's bookkeeping of a run: per-batch metrics, summary, quarantine file, MLflow records.

Both runners hand the `Collector` the same three things per batch, in stream order:
the rows read, the side outputs of the data-path steps (quarantined rows, drift
events), and each learn step's `LearnResult`. The collector turns them into
per-batch records, the run summary, the quarantine file and MLflow points,
identically for both runners, and passes every batch on to the run's metric
observers (`tideflow.pipelines.metrics`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from tideflow.pipelines.evaluation import Scores, add_extra, combine
from tideflow.pipelines.graph import Graph
from tideflow.pipelines.learn_step import LearnResult
from tideflow.pipelines.metrics.base import BatchRecord, Observer
from tideflow.stream.events import DriftEvent
from tideflow.stream.operator import SideOutput
from tideflow.stream.validate import QUARANTINE_SCHEMA
from tideflow.strategies.base import COMPUTE_EXTRA


#: extra fields that are levels (a size at that batch: a selection stage's pool, its non-empty
#: clusters), not counts: a run's total keeps the newest value, since their sum means nothing
LEVEL_EXTRA = frozenset({"select.pool", "select.clusters"})


def _add_extra(total: dict[str, float], more: dict[str, float]) -> None:
    """`add_extra`, except that a level (`LEVEL_EXTRA`) takes its newest value."""
    add_extra(total, more)
    for k in LEVEL_EXTRA.intersection(more):
        total[k] = float(more[k])


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
                 metrics_every_s: float = 1.0, observers: tuple[Observer, ...] = (),
                 retain_predictions: bool = True) -> None:
        self.graph = graph
        self.observers = tuple(observers)
        # predictions held for the result (False: they only pass by, to observers that stream them)
        self.retain_predictions = retain_predictions
        # per-batch metrics are summed over the batches of an interval and logged at most every
        # `metrics_every_s` seconds (0: every batch): several points per strategy and batch,
        # each one written to the store, would cost small batches a sizeable share of the run
        # (bench/tracking_overhead.py)
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
        # per task, on task streams only (a stream without a task column has none)
        self.task_totals: dict[str, dict[Any, Scores]] = {s.name: {} for s in graph.learners}
        self.error_events = {s.name: 0 for s in graph.learners}  # the step's error detector fired
        self.emitted = {s.name: 0 for s in graph.learners}  # events the strategy raised
        # rows each strategy could not use, per reason (StepReport.skipped)
        self.skipped: dict[str, dict[str, int]] = {s.name: {} for s in graph.learners}
        self.boundaries = {s.name: 0 for s in graph.learners}
        # held-out evaluations (plain records: task, after which task, metrics), per learn step
        self.evaluations: dict[str, list[dict[str, Any]]] = {s.name: [] for s in graph.learners}
        self.compute = {s.name: {"samples": 0, "fits": 0, "train_seconds": 0.0} for s in graph.learners}
        self.extra: dict[str, dict[str, float]] = {s.name: {} for s in graph.learners}
        self.errors: dict[str, list[str]] = {s.name: [] for s in graph.learners}
        self.predictions: dict[str, list[tuple[list[Any], ...]]] = {
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
    _STATE = ("_window", "_window_parent", "_pending_seq", "totals", "task_totals", "compute", "extra",
              "error_events", "emitted", "boundaries", "skipped", "quarantine_counts", "rows", "batches",
              "last_seq")

    def checkpoint(self) -> dict[str, Any]:
        """The bookkeeping after the last added batch (see `rollback`): the small state, and
        the lengths of the per-batch records, predictions, errors and events."""
        import copy

        state = copy.deepcopy({k: getattr(self, k) for k in self._STATE})
        state["lengths"] = {"per_batch": {n: len(v) for n, v in self.per_batch.items()},
                            "predictions": {n: len(v) for n, v in self.predictions.items()},
                            "errors": {n: len(v) for n, v in self.errors.items()},
                            "evaluations": {n: len(v) for n, v in self.evaluations.items()},
                            "events": len(self.events)}
        return state

    def history(self, since: dict[str, Any] | None, upto: dict[str, Any]) -> dict[str, Any]:
        """The history records between two checkpoints' lengths (plain data, for the disk)."""
        lo = since or {"per_batch": {}, "predictions": {}, "errors": {}, "evaluations": {}, "events": 0}
        return {
            "evaluations": {n: self.evaluations[n][lo.get("evaluations", {}).get(n, 0):k]
                            for n, k in upto.get("evaluations", {}).items()},
            "per_batch": {n: self.per_batch[n][lo["per_batch"].get(n, 0):k] for n, k in upto["per_batch"].items()},
            "predictions": {n: [[list(x) if x is not None else None for x in p]
                                for p in self.predictions[n][lo["predictions"].get(n, 0):k]]
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
            for n, evs in part.get("evaluations", {}).items():
                self.evaluations[n].extend(evs)
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
        for n, k in lengths.get("evaluations", {}).items():
            del self.evaluations[n][k:]
        del self.events[lengths["events"]:]
        for obs in self.observers:
            obs.on_rollback(self.last_seq)

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
            _add_extra(self.extra[name], res.extra)
            record = {"seq": seq, **batch_scores.metrics(task), "samples": res.samples, "fits": res.fits,
                      "train_seconds": res.train_seconds, "drift_events": len(res.events)}
            if res.extra:
                record["extra"] = dict(res.extra)
                selection = {k: float(v) for k, v in res.extra.items() if k.startswith("select.")}
                if selection and not replay:  # a selection point's report, as it was (not summed)
                    self.tracker.log_metrics(name, selection, step=seq)
            if res.emitted:
                record["events_emitted"] = len(res.emitted)
            if res.skipped:
                record["skipped"] = dict(res.skipped)
                self._skipped(name, res.skipped)
            if res.boundaries:
                record["task_boundaries"] = len(res.boundaries)
                self.boundaries[name] += len(res.boundaries)
            self.per_batch[name].append(record)
            self._tasks(name, res)
            for e in res.events:
                self.events.append(e)
                self.error_events[name] += 1
                if not replay:
                    self.tracker.log_metrics(name, {"drift_offset": float(e.offset)}, step=seq)
            # (the helpers below are called only when there is something: most batches have none)
            if res.emitted:
                self._emitted(name, res.emitted, seq, replay)
            if res.evaluations:
                self._evaluations(name, res, seq, replay)
            if self.retain_predictions:
                self.predictions[name].extend(res.predictions)
            if res.errors:
                self._errors(name, res.errors)
        self._pending_seq = seq
        if self.observers:
            record = BatchRecord(seq, rows, side, results, replay, time.perf_counter())
            for obs in self.observers:
                obs.on_batch(record)
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
            metrics.update({f"skipped.{k}": float(v) for k, v in self.skipped[name].items()})
            if self.errors[name]:
                metrics["strategy_errors"] = float(len(self.errors[name]))
            if emit:
                self.tracker.log_metrics(name, metrics, step=seq)

    def _skipped(self, name: str, skipped: dict[str, int]) -> None:
        """Rows a strategy could not use: counted per reason, and said once per reason."""
        import logging

        counts = self.skipped[name]
        for reason, n in skipped.items():
            if n and reason not in counts:
                logging.getLogger("tideflow").warning(
                    "strategy %r could not use %d row(s) of a batch (%s); counted in the summary's "
                    "skipped_rows and MLflow's skipped.%s", name, n, reason, reason)
            counts[reason] = counts.get(reason, 0) + int(n)

    def _tasks(self, name: str, res: LearnResult) -> None:
        for _, task in res.parts:
            if task is not None:
                break
        else:  # a stream without tasks
            return
        totals = self.task_totals[name]
        for task, scores in res.by_task().items():
            totals.setdefault(task, Scores()).add(scores)

    def _emitted(self, name: str, events: list[DriftEvent], seq: int, replay: bool) -> None:
        """Events a strategy raised: kept with the run's events and logged as they come."""
        for e in events:
            self.events.append(e)
            self.emitted[name] += 1
            if not replay:
                self.tracker.log_metrics(name, {f"event.{e.detector}": float(e.offset)}, step=seq)

    def _evaluations(self, name: str, res: LearnResult, seq: int, replay: bool) -> None:
        problem = self.problems[name]
        for ev in res.evaluations:
            metrics = combine(ev["parts"]).metrics(problem)
            record = {"seq": seq, "point": ev["point"], "after_task": ev["after_task"], "offset": ev["offset"],
                      "task": ev["task"], **metrics}
            if "parts_til" in ev:
                til = combine(ev["parts_til"]).metrics(problem)
                if "accuracy" in til:
                    record["accuracy_til"] = til["accuracy"]
            self.evaluations[name].append(record)
            if not replay and seq >= 0:
                label = ev["task"] if ev["task"] is not None else "all"
                value = metrics.get("accuracy", metrics.get("mae"))
                if value is not None:
                    self.tracker.log_metrics(name, {f"heldout.{label}": float(value)}, step=seq)

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
            _add_extra(self.extra[name], res.extra)
            self._skipped(name, res.skipped)
            self._emitted(name, res.emitted, self.batches, False)
            self.boundaries[name] += len(res.boundaries)
            self._evaluations(name, res, -1, False)
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
            out[name] = {
                "strategy": s.describe(),
                "problem": self.problems[name],
                **self.totals[name].metrics(self.problems[name]),
                "samples_trained": self.compute[name]["samples"],
                "fits": self.compute[name]["fits"],
                "train_seconds": round(self.compute[name]["train_seconds"], 4),
                "error_drift_events": self.error_events[name],
                "events_emitted": self.emitted[name],
                "task_boundaries": self.boundaries[name],
                "skipped_rows": dict(self.skipped[name]),
                "extra": dict(self.extra[name]),
                "errors": len(self.errors[name]),
                "first_error": self.errors[name][0] if self.errors[name] else None,
            }
            if self.task_totals[name]:
                out[name]["by_task"] = {task: scores.metrics(self.problems[name])
                                        for task, scores in self.task_totals[name].items()}
        return out


class NullTracker:
    """The tracker of a run with ``tracking=False``: records nothing."""

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
