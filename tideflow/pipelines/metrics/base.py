"""The observer contract: a metric that watches a run instead of living in its loop.

As Avalanche's evaluation plugins observe its training loop, an `Observer` is
handed every batch the run's collector records (`tideflow.pipelines.collector`),
in stream order, on every runner alike, and returns its figure at the end. A
ready pipeline or a bench script adds observers (``run(observers=[...])``); it
never copies the runner's loop or patches the collector. Their results are in
``RunResult.metrics[observer.name]``.

Recovery on the Ray runner: after a lost actor, the run goes back to a checkpoint
and the batches after it come again (``record.replay`` is True for those that were
recorded before). ``on_rollback(seq)`` is called first: an observer that keeps
per-batch data forgets what it holds after batch ``seq``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class BatchRecord:
    """One batch as the collector recorded it."""

    seq: int  # the batch's position in the run (0, 1, ...)
    rows: int  # rows read from the source (before validation)
    side: Any  # `SideOutput` of the data path: quarantined rows, drift events
    results: dict[str, Any]  # learn step name -> `LearnResult` (keyed steps: merged over actors)
    replay: bool  # the batch was recorded before a recovery rolled the run back
    time: float  # time.perf_counter() when the collector recorded it


class Observer:
    """Base of the metric observers (see module docstring)."""

    #: the run keeps every prediction in ``RunResult.predictions`` when an observer needs them
    needs_predictions: ClassVar[bool] = False
    #: the learn steps send their predictions with every batch (``record.results[step].predictions``:
    #: (offsets, predictions, truth, keys, times) per part) without the run holding them all
    streams_predictions: ClassVar[bool] = False
    name: str = ""

    def __init__(self) -> None:
        if not self.name:
            self.name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def on_start(self, graph: Any) -> None:
        """Before the first batch."""

    def on_batch(self, record: BatchRecord) -> None:
        """After the collector recorded a batch."""

    def on_rollback(self, seq: int) -> None:
        """A recovery went back to the checkpoint after batch ``seq``; later batches come again."""

    def on_finish(self, result: Any) -> None:
        """After the run (``result``: the `RunResult`, its ``metrics`` not filled in yet)."""

    def on_abort(self) -> None:
        """The run failed: release what the observer holds open (files); no result follows."""

    def result(self) -> Any:
        """The observer's figure, stored in ``RunResult.metrics[self.name]``."""
        return None
