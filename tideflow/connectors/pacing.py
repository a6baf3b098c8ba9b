"""Pacing a replay by event time, so that it arrives as a live stream would.

A replay normally runs as fast as it can. With a ``speed``, `Pacer` holds each
batch back until its latest event is due, event time advancing ``speed`` times
faster than wall time from the first event seen. Used by
`tideflow.connectors.recording.RecordingSource` and
`tideflow.connectors.weather.WeatherSource` (their ``speed=`` argument).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.stream.batch import Batch


def event_seconds(column: pa.Array) -> np.ndarray:
    """Event times as float seconds (NaN for nulls), for pacing a replay."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[t.unit]
        ints = column.cast(pa.int64())
    elif pa.types.is_date32(t):
        scale, ints = 86400.0, column.cast(pa.int32())
    elif pa.types.is_date64(t):
        scale, ints = 1e-3, column.cast(pa.int64())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        scale, ints = 1.0, column
    else:
        raise ValueError(f"cannot pace a replay by a time column of type {t}")
    filled = pc.fill_null(ints.cast(pa.float64()), float("nan"))
    return filled.to_numpy(zero_copy_only=False) * scale


def pace_type_ok(t: pa.DataType) -> bool:
    """Whether `event_seconds` can read a column of type ``t`` (checked before a replay starts)."""
    return (
        pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_date(t)
        or pa.types.is_integer(t) or pa.types.is_floating(t)
    )


class Pacer:
    """Sleeps so that event time advances ``speed`` times faster than wall time.

    A batch is released when its latest event would have happened: a live
    source cannot deliver a batch before its last row exists.
    """

    def __init__(self, speed: float, time_column: str | None) -> None:
        if time_column is None:
            raise ValueError("pacing needs a time column")
        self.speed = speed
        self.column = time_column
        self.t0: float | None = None
        self.e0: float | None = None

    def wait(self, batch: Batch) -> None:
        secs = event_seconds(batch.column(self.column))
        if not len(secs) or np.all(np.isnan(secs)):
            return
        if self.t0 is None:
            self.t0 = time.monotonic()
            self.e0 = float(np.nanmin(secs))
        due = self.t0 + (float(np.nanmax(secs)) - self.e0) / self.speed  # type: ignore[operator]
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

