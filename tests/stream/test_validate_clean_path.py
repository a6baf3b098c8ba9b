"""Validate's clean path does no per-row Python work, and its shortcuts keep every rule.

A clean batch (offsets rising past every offset seen, finite values, time going forward per
key) is checked with array operations only; a batch with a bad row takes the row-by-row path.
The cost is counted, not timed: the Python calls one ``process`` makes, which must not grow
with the batch's rows. The rules are checked against a row-by-row model of them written here,
on a stream of another shape than the project's own (sensor readings of 37 stations, keyed by
an integer id, with a date-time clock, redeliveries and late rows).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.stream.batch import OFFSET
from tideflow.stream.validate import Validate

T0 = datetime(2025, 1, 6)


def _python_calls(fn: Any) -> int:
    """The Python and C-function calls ``fn()`` makes (a count of work, independent of speed)."""
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def _stations(rows: int, first: int, keys: int = 37, key_type: str = "int64") -> tf.Batch:
    rng = np.random.default_rng(first)
    ids = rng.integers(0, keys, size=rows)
    cols = {
        "station": pa.array(ids if key_type == "int64" else [f"st-{i}" for i in ids], key_type),
        "t": pa.array([T0 + timedelta(minutes=first + i) for i in range(rows)], pa.timestamp("s")),
        "temp": rng.normal(5.0, 3.0, size=rows),
        "wind": rng.gamma(2.0, 2.0, size=rows),
    }
    return tf.Batch.from_pydict(cols, stream_id="stations", first_offset=first)


def _schema(key_type: str = "int64") -> tf.Schema:
    return tf.Schema({"station": key_type, "t": "timestamp[s]", "temp": "float64", "wind": "float64"},
                     target="wind", key="station", time="t")


@pytest.mark.parametrize("keyed", [False, True], ids=["offsets_and_floats", "time_order_per_key"])
def test_a_clean_batch_costs_the_same_python_calls_at_any_size(keyed):
    # the shortcuts make the count of calls per batch flat in the batch's rows; row-by-row
    # checks (an offset window filled one offset at a time, rows grouped by key one by one)
    # would make 10x the rows cost about 10x the calls
    key_type = "string" if keyed else "int64"
    schema = _schema(key_type) if keyed else tf.Schema(
        {"station": "int64", "t": "timestamp[s]", "temp": "float64", "wind": "float64"}, target="wind")
    counts = []
    for rows in (1_000, 10_000):
        v = Validate(schema)
        v.process(_stations(rows, 0, key_type=key_type))  # the first batch sets up the state
        batch = _stations(rows, rows, key_type=key_type)
        out: list[Any] = []
        counts.append(_python_calls(lambda: out.append(v.process(batch))))
        assert len(out[0]) == rows and v.quarantined == 0
    assert counts[1] <= counts[0] + 50, counts


def _model(batches: list[tf.Batch], window: int) -> tuple[list[int], dict[int, str]]:
    """The rules row by row: a duplicate offset (one of the last ``window`` seen), an offset below
    the newest one, a time earlier than the newest accepted time of the row's station."""
    kept, bad = [], {}
    seen: list[int] = []
    running = None
    newest: dict[Any, Any] = {}
    for b in batches:
        for row in b.data.to_pylist():
            off, key, t = row[OFFSET], row["station"], row["t"]
            if off in seen[-window:]:
                bad[off] = "duplicate_offset"
                continue
            seen.append(off)
            if running is not None and off < running:
                bad[off] = "out_of_order_offset"
                continue
            running = off
            if row["temp"] != row["temp"]:
                bad[off] = "nan"
                continue
            if key in newest and t < newest[key]:
                bad[off] = "time_out_of_order"
                continue
            newest[key] = t if key not in newest else max(t, newest[key])
            kept.append(off)
    return kept, bad


def test_shortcuts_keep_duplicates_late_offsets_and_late_times_apart():
    # clean batches (the shortcut) between batches with a redelivery of an offset two batches
    # back, a late offset, a NaN, a station whose clock goes back, and a null station id
    batches = [_stations(200, 0), _stations(200, 200), _stations(200, 400)]
    rows = batches[1].data.slice(10, 3).to_pylist() + batches[2].data.slice(0, 2).to_pylist()
    nan = dict(batches[2].data.slice(5, 1).to_pylist()[0], temp=float("nan"))
    back = dict(batches[2].data.slice(7, 1).to_pylist()[0], t=T0 + timedelta(minutes=100))
    gap = dict(back, station=None, t=T0)  # a null key is a key of its own
    # 310: a redelivery inside the window; 211: late, outside it; 600 and 601 carry the times
    # of offsets 400 and 401, behind their stations' newest
    mixed = [dict(r, **{OFFSET: o}) for r, o in zip(rows + [nan, back, gap], [310, 211, 600, 601, 700, 701, 702, 703])]
    batches.append(tf.Batch(pa.RecordBatch.from_pylist(mixed, schema=batches[0].data.schema), "stations"))
    batches.append(_stations(200, 800))
    schema = tf.Schema({"station": "int64", "t": "timestamp[s]", "temp": "float64", "wind": "float64"},
                       target="wind", key="station", time="t", nullable=("station",))
    window = 300
    v = Validate(schema, offset_window=window)
    kept, bad = [], {}
    for b in batches:
        out = v.process(b)
        kept += out.offsets.tolist() if out is not None else []
        for q in v.drain().quarantine:
            bad.update(zip(q.column("offset").to_pylist(), q.column("reason").to_pylist()))
    want_kept, want_bad = _model(batches, window)
    assert bad == want_bad and kept == want_kept
    assert {reason for reason in bad.values()} == {
        "duplicate_offset", "out_of_order_offset", "nan", "time_out_of_order"}
