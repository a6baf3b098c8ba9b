"""What a run returns (`RunResult`) and the summary table the command prints."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tideflow.stream.events import DriftEvent


class TrainedStrategies(Mapping[str, Any]):
    """The trained strategies of a run, by learn step: the strategy, or {key value: strategy}
    for a keyed step.

    On the Ray runner they arrive from the actors as pickled bytes (of the run's own
    objects, never read from disk) and are unpickled on first access, so that a driver
    that never looks at them never imports what they are made of (torch: hundreds of MiB).
    """

    def __init__(self, objects: dict[str, Any] | None = None,
                 pickled: dict[str, list[bytes]] | None = None) -> None:
        self._objects = dict(objects or {})
        self._pickled = dict(pickled or {})

    def __getitem__(self, name: str) -> Any:
        if name not in self._objects and name in self._pickled:
            parts = [pickle.loads(b) for b in self._pickled.pop(name)]  # noqa: S301 - our own actors' objects
            if len(parts) == 1:
                self._objects[name] = parts[0]
            else:  # a keyed step over several actors: each holds its share of the keys
                merged: dict[Any, Any] = {}
                for part in parts:
                    merged.update(part)
                self._objects[name] = merged
        return self._objects[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._objects, *(n for n in self._pickled if n not in self._objects)])

    def __len__(self) -> int:
        return len(set(self._objects) | set(self._pickled))

    def __repr__(self) -> str:
        return f"TrainedStrategies({sorted(self)})"


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
    #: the trained strategies, per learn step: the strategy, or {key value: strategy} for a keyed
    #: step (the run trains copies: the graph's own strategy objects are never changed by a run)
    strategies: Mapping[str, Any] = field(default_factory=TrainedStrategies)
    #: what the run's metric observers returned, by observer name
    metrics: dict[str, Any] = field(default_factory=dict)
    #: held-out evaluations per learn step (task streams whose source has held-out sets)
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: the MLflow store the run was logged to (None: not tracked)
    tracking_uri: str | None = None
    #: per learn step with held-out evaluations: the accuracy matrix and its metrics
    #: (`tideflow.pipelines.metrics.continual.ContinualMetrics`)
    cl_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def quarantined(self) -> int:
        return sum(v for k, v in self.quarantine.items() if k != "extra_field_dropped")


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
        if s.get("skipped_rows"):
            counts = ", ".join(f"{k}={v}" for k, v in sorted(s["skipped_rows"].items()))
            console.print(f"[yellow]{name}: rows it could not use: {counts}")
        if s.get("shortfall"):
            console.print(f"[yellow]{name}: scored {s['rows_scored']} of the "
                          f"{s['rows_scored'] + s['shortfall']} rows that reached it")
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
