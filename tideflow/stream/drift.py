"""Drift detection: adapters over River's `drift` module, and the `DriftEvent` they emit.

We wrap River's detectors (ADWIN, PageHinkley, KSWIN, and the binary DDM, EDDM,
HDDMA, HDDMW) instead of re-implementing them. A `RiverDetector` feeds values to
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

import inspect
from typing import Any

import numpy as np

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent
from tideflow.stream.operator import Operator, SideOutput
from tideflow.stream.state import from_plain, to_plain

#: detectors fed with a 0/1 error indicator rather than a real value (River's ``drift.binary``)
BINARY_DETECTORS = {"DDM", "EDDM", "HDDMA", "HDDMW"}  # all fed 1 = error (FHDDM wants 1 = correct: not offered)
#: other spellings of River's class names that we accept
ALIASES = {"HDDM_A": "HDDMA", "HDDM_W": "HDDMW"}


class PerformanceTrigger:
    """Performance-based retraining trigger, with River's detector interface.

    River has no such detector; this is our reading of the trigger in arXiv 2309.15207
    (the paper's own definition could not be obtained, see docs/methods/variance-horizon.md):
    fed one matured forecast error per ``update``, it keeps the rolling mean of the last
    ``k`` errors; the *reference* is the mean of the first ``k`` errors after the last
    trigger (or after the warm-up), i.e. mostly the error of a freshly fitted model (a
    pipeline re-fits at the end of the batch in which the trigger fired, so the errors of
    that batch's remaining rows still come from the old model). The first
    ``warmup`` errors of the stream are skipped altogether (neither reference nor
    age: a model learning online from scratch, or a forecaster that answers
    persistence until its first fit, starts with errors that are no reference for
    anything). It fires
    (``drift_detected``) when the rolling mean exceeds ``tau`` x the reference, or, as
    a fallback of ours, when ``max_age`` errors have passed since the last trigger. After
    firing it starts collecting a new reference.

    >>> t = PerformanceTrigger(k=3, tau=1.5)
    >>> fired = []
    >>> for e in [1, 1, 1, 1, 1, 2, 2, 2]:
    ...     t.update(e)
    ...     fired.append(t.drift_detected)
    >>> fired
    [False, False, False, False, False, False, True, False]
    """

    def __init__(self, k: int = 24, tau: float = 1.2, max_age: int | None = None, warmup: int = 0) -> None:
        if k < 1 or tau <= 0 or (max_age is not None and max_age < 1) or warmup < 0:
            raise ValueError("PerformanceTrigger needs k >= 1, tau > 0, max_age >= 1 (or None), warmup >= 0")
        self.k = k
        self.warmup = warmup
        self.tau = tau
        self.max_age = max_age
        self.seen = 0
        self._reset()

    def _reset(self) -> None:
        self.reference: float | None = None
        self._reference_sum = 0.0
        self._reference_n = 0
        self._window: list[float] = []
        self.age = 0
        self.drift_detected = False

    def update(self, x: float) -> None:
        self.drift_detected = False
        x = float(x)
        if x != x:  # a NaN error (no truth) says nothing: not counted
            return
        self.seen += 1
        if self.seen <= self.warmup:
            return
        self.age += 1
        if self.reference is None:
            self._reference_sum += x
            self._reference_n += 1
            if self._reference_n == self.k:
                self.reference = self._reference_sum / self.k
        else:
            self._window.append(x)
            if len(self._window) > self.k:
                self._window.pop(0)
        worse = (self.reference is not None and len(self._window) == self.k
                 and sum(self._window) / self.k > self.tau * self.reference)
        too_old = self.max_age is not None and self.age >= self.max_age
        if worse or too_old:
            self._reset()
            self.drift_detected = True


#: detectors of ours that the learn step's ``detector=`` accepts beside River's
OUR_DETECTORS = {"PerformanceTrigger": PerformanceTrigger}


def make_river_detector(name: str, params: dict[str, Any] | None = None) -> Any:
    if name in OUR_DETECTORS:
        return OUR_DETECTORS[name](**(params or {}))
    from river import drift
    from river.drift import binary

    name = ALIASES.get(name, name)
    cls = getattr(drift, name, None) or getattr(binary, name, None)
    if cls is None:
        raise ValueError(f"unknown River drift detector {name!r}")
    params = dict(params or {})
    # a detector that samples (KSWIN) is seeded, so that a replay makes the same decisions
    if "seed" in inspect.signature(cls).parameters and params.get("seed") is None:
        params["seed"] = 0
    return cls(**params)


class RiverDetector:
    """One River drift detector fed from arrays, emitting `DriftEvent`s."""

    def __init__(self, detector: str = "ADWIN", *, params: dict[str, Any] | None = None,
                 statistic: str = "value", step: str = "") -> None:
        self.detector = detector
        self.detector_params = dict(params or {})
        self.statistic = statistic
        self.step = step
        self._river = make_river_detector(detector, self.detector_params)
        self.binary = ALIASES.get(detector, detector) in BINARY_DETECTORS
        self.n_detections = 0
        self.skipped = 0
        self._in_warning = False  # the detector's warning zone (detectors that have one: DDM, EDDM, ...)
        self._warnings: list[DriftEvent] = []

    def take_warnings(self) -> list[DriftEvent]:
        """Warnings since the last call: one event where a warning zone starts (detector
        ``"<name>.warning"``), for the detectors that have one (River's binary detectors)."""
        out, self._warnings = self._warnings, []
        return out

    def update(self, values: np.ndarray, *, offsets: np.ndarray, stream_id: str) -> list[DriftEvent]:
        """Feed values in order; returns the detections. Values a detector cannot take (null,
        NaN, inf; for a binary detector anything but 0/1) are skipped and counted in
        ``skipped``: one NaN would otherwise stop ADWIN or Page-Hinkley from ever firing
        again, and a binary detector fails on other values."""
        events = []
        river = self._river
        update = river.update
        vals = np.asarray(values, dtype=float)
        ok = np.isfinite(vals)
        if self.binary:
            ok &= (vals == 0.0) | (vals == 1.0)
        if not ok.all():
            if self.skipped == 0:
                import logging

                first = int(np.asarray(offsets)[~ok][0])
                logging.getLogger("tideflow").warning(
                    "%s on %s (step %r): skipping values it cannot take (null, NaN, inf%s), first at offset "
                    "%d; counted in its snapshot as 'skipped'", self.detector, self.statistic, self.step,
                    ", not 0/1" if self.binary else "", first)
            self.skipped += int((~ok).sum())
            vals, offsets = vals[ok], np.asarray(offsets)[ok]
        for v, off in zip(vals.tolist(), np.asarray(offsets).tolist()):
            update(v)
            warning = bool(getattr(river, "warning_detected", False))
            if warning and not self._in_warning:
                self._warnings.append(DriftEvent(stream_id, int(off), f"{self.detector}.warning", self.statistic,
                                                 self.step, v))
            self._in_warning = warning
            if river.drift_detected:
                self.n_detections += 1
                self._in_warning = False
                events.append(DriftEvent(stream_id, int(off), self.detector, self.statistic, self.step, v))
        return events

    def snapshot(self) -> dict[str, Any]:
        state = {"river": to_plain(self._river), "n_detections": self.n_detections, "skipped": self.skipped}
        if self._in_warning:  # only when set: the snapshots of detectors without warnings keep their form
            state["in_warning"] = True
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._river = from_plain(state["river"])
        self.n_detections = state["n_detections"]
        self.skipped = state.get("skipped", 0)
        self._in_warning = bool(state.get("in_warning", False))
        self._warnings = []


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
