"""Drift detection: adapters over River's `drift` module, and the `DriftEvent` they emit.

We wrap River's detectors (ADWIN, PageHinkley, KSWIN, DDM, EDDM, HDDM_A,
HDDM_W, ...) instead of re-implementing them. A `RiverDetector` feeds values to
one detector and turns each detection into a `DriftEvent`. `DetectDrift` is the
pipeline step that watches a column; the learn step uses a `RiverDetector` on a
strategy's prequential error (``learn(..., detector=...)``).

>>> import numpy as np
>>> d = RiverDetector("ADWIN", statistic="x")
>>> values = np.r_[np.zeros(500), np.ones(500)]
>>> events = d.update(values, offsets=np.arange(1000), stream_id="s")
>>> len(events) >= 1 and 500 <= events[0].offset < 700
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tideflow.stream.batch import Batch
from tideflow.stream.operator import Operator, SideOutput
from tideflow.stream.state import from_plain, to_plain

#: detectors fed with a 0/1 error indicator rather than a real value
BINARY_DETECTORS = {"DDM", "EDDM", "HDDM_A", "HDDM_W"}


@dataclass(frozen=True)
class DriftEvent:
    """A detector fired: on which stream, at which offset, which detector, on what statistic."""

    stream_id: str
    offset: int
    detector: str
    statistic: str
    step: str = ""
    value: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_river_detector(name: str, params: dict[str, Any] | None = None) -> Any:
    from river import drift
    from river.drift import binary

    cls = getattr(drift, name, None) or getattr(binary, name, None)
    if cls is None:
        raise ValueError(f"unknown River drift detector {name!r}")
    return cls(**(params or {}))


class RiverDetector:
    """One River drift detector fed from arrays, emitting `DriftEvent`s."""

    def __init__(self, detector: str = "ADWIN", *, params: dict[str, Any] | None = None,
                 statistic: str = "value", step: str = "") -> None:
        self.detector = detector
        self.detector_params = dict(params or {})
        self.statistic = statistic
        self.step = step
        self._river = make_river_detector(detector, self.detector_params)
        self.n_detections = 0

    def update(self, values: np.ndarray, *, offsets: np.ndarray, stream_id: str) -> list[DriftEvent]:
        events = []
        river = self._river
        update = river.update
        for v, off in zip(np.asarray(values, dtype=float).tolist(), offsets.tolist()):
            update(v)
            if river.drift_detected:
                self.n_detections += 1
                events.append(DriftEvent(stream_id, int(off), self.detector, self.statistic, self.step, v))
        return events

    def snapshot(self) -> dict[str, Any]:
        return {"river": to_plain(self._river), "n_detections": self.n_detections}

    def restore(self, state: dict[str, Any]) -> None:
        self._river = from_plain(state["river"])
        self.n_detections = state["n_detections"]


class DetectDrift(Operator):
    """Pipeline step: run a River drift detector over one numeric column.

    The batch passes through unchanged; detections are emitted as drift events,
    which reach every strategy downstream (``on_drift``) and the tracker.

    Args:
        on: the column to watch.
        detector: a River detector class name (``"ADWIN"``, ``"PageHinkley"``, ``"KSWIN"``, ...).
        params: its constructor arguments.
        name: step name written into the events.
    """

    kind = "detect"

    def __init__(self, on: str, detector: str = "ADWIN", *, params: dict[str, Any] | None = None,
                 name: str | None = None) -> None:
        self.on = on
        self.detector = detector
        self.params_ = dict(params or {})
        self.name = name or f"{detector.lower()}_{on}"
        self._impl = RiverDetector(detector, params=self.params_, statistic=on, step=self.name)
        self._pending: list[DriftEvent] = []

    def params(self) -> dict[str, Any]:
        return {"on": self.on, "detector": self.detector, "params": self.params_, "name": self.name}

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"on": "x"}

    def process(self, batch: Batch) -> Batch | None:
        if len(batch):
            self._pending.extend(
                self._impl.update(batch.numpy(self.on), offsets=batch.offsets, stream_id=batch.stream_id)
            )
        return batch

    def drain(self) -> SideOutput:
        out = SideOutput(drift_events=self._pending)
        self._pending = []
        return out

    def snapshot(self) -> dict[str, Any]:
        return self._impl.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self._impl.restore(state)
        self._pending = []
