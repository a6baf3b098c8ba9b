"""Validate checks a declared time role: time that goes back within a key is quarantined (or kept
and counted), ties pass, and the newest time per key survives snapshot/restore."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.stream.checks import yield_operator_checks
from tideflow.stream.validate import Validate

T0 = datetime(2024, 3, 1)
SCHEMA = tf.Schema({"k": "string", "t": "timestamp[s]", "x": "float64", "y": "float64"},
                   target="y", key="k", time="t")

# (key, hour, x) per batch; two keys interleaved. "late" rows jump back within their key; "tie"
# rows repeat their key's newest hour (or the other key's); the NaN row (a far-future hour,
# quarantined for its x) must not make the rows after it late.
ROWS = [
    [("a", 0, 1.0), ("b", 0, 1.0), ("a", 1, 1.0), ("b", 1, 1.0), ("a", 1, 1.0), ("b", 1, 1.0)],  # ties
    [("a", 2, 1.0), ("b", 2, 1.0), ("a", 1, 1.0),  # late: a's newest is 2
     ("a", 100, float("nan")), ("b", 3, 1.0), ("a", 3, 1.0), ("b", 2, 1.0)],  # b at 2: late
    [("a", 2, 1.0), ("b", 3, 1.0), ("a", 4, 1.0), ("b", 4, 1.0)],  # a at 2 late (across batches), b tie
]
LATE_OFFSETS = [8, 12, 13]
NAN_OFFSET = 9


def _batches() -> list[tf.Batch]:
    out, first = [], 0
    for rows in ROWS:
        cols = {"k": [r[0] for r in rows],
                "t": pa.array([T0 + timedelta(hours=r[1]) for r in rows], pa.timestamp("s")),
                "x": [r[2] for r in rows], "y": [float(r[1]) for r in rows]}
        out.append(tf.Batch.from_pydict(cols, stream_id="two-keys", first_offset=first))
        first += len(rows)
    return out


def _run(v: Validate) -> tuple[list[int], pa.Table]:
    kept, tables = [], []
    for b in _batches():
        out = v.process(b)
        kept += out.offsets.tolist() if out is not None else []
        tables += v.drain().quarantine
    return kept, pa.concat_tables(tables)


def test_time_going_back_within_a_key_is_quarantined_and_ties_pass():
    v = Validate(SCHEMA)
    kept, q = _run(v)
    assert v.counts == {"time_out_of_order": 3, "nan": 1}
    late = [o for o, r in zip(q.column("offset").to_pylist(), q.column("reason").to_pylist())
            if r == "time_out_of_order"]
    assert late == LATE_OFFSETS
    total = sum(len(r) for r in ROWS)
    assert kept == [o for o in range(total) if o not in LATE_OFFSETS + [NAN_OFFSET]]  # ties kept
    detail = dict(zip(q.column("offset").to_pylist(), q.column("detail").to_pylist()))
    assert detail[8] == "k=a: 2024-03-01 01:00:00 < 2024-03-01 02:00:00"
    row = json.loads(q.filter(pa.compute.equal(q.column("offset"), 12)).column("row")[0].as_py())
    assert row["k"] == "b" and row["y"] == 2.0  # the row itself is kept in quarantine


def test_without_a_key_the_whole_stream_is_one_clock():
    # station a's clock runs ahead of b's: fine per key, late on one clock
    cols = {"k": ["a", "b", "a", "b"], "t": pa.array([T0 + timedelta(hours=h) for h in (5, 1, 6, 2)],
                                                     pa.timestamp("s")),
            "x": [1.0] * 4, "y": [1.0] * 4}
    batch = tf.Batch.from_pydict(cols)
    keyed = Validate(SCHEMA)
    assert len(keyed.process(batch)) == 4 and keyed.counts == {}
    one_clock = Validate(tf.Schema(dict(SCHEMA.fields), target="y", time="t"))  # k: a plain column
    assert one_clock.process(batch).offsets.tolist() == [0, 2]
    assert one_clock.counts == {"time_out_of_order": 2}


def test_keep_lets_late_rows_through_and_counts_them():
    v = Validate(SCHEMA, time_order="keep")
    kept, q = _run(v)
    assert set(LATE_OFFSETS) <= set(kept)
    assert v.counts == {"time_out_of_order_kept": 3, "nan": 1} and v.quarantined == 1
    assert q.column("reason").to_pylist() == ["nan"]
    off = Validate(SCHEMA, time_order="off")
    _run(off)
    assert off.counts == {"nan": 1} and off.snapshot()["newest_time"] == {}


def test_a_time_column_without_order_is_a_clear_error():
    text_time = tf.Schema({"t": "string", "y": "float64"}, target="y", time="t")
    with pytest.raises(ValueError, match="time column 't' is string.*time_order='off'"):
        Validate(text_time)
    Validate(text_time, time_order="off")  # the user's explicit choice


def test_newest_times_survive_snapshot_restore():
    v = Validate(SCHEMA)
    first, *rest = _batches()
    v.process(first)
    v.drain()
    state = json.loads(json.dumps(v.snapshot()))  # plain data, as a checkpoint holds it
    hour1 = int((T0 + timedelta(hours=1) - datetime(1970, 1, 1)).total_seconds())  # timestamp[s] as stored
    assert state["newest_time"] == {"two-keys": {"a": hour1, "b": hour1}}
    w = Validate(SCHEMA)
    w.restore(state)
    for b in rest:
        w.process(b)
        w.drain()
    assert w.counts == {"time_out_of_order": 3, "nan": 1}


def _keyed_stream(n_batches: int, seed: int) -> list[tf.Batch]:
    """Three keys, float hours with jumps back, so the check suite's restore has late rows to find."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        n = 32
        hours = i * 10 + np.sort(rng.uniform(0, 10, n)) - (rng.random(n) < 0.2) * 15
        cols = {"k": rng.choice(["p", "q", "r"], n).tolist(), "t": hours, "x": rng.normal(size=n),
                "y": rng.normal(size=n)}
        out.append(tf.Batch.from_pydict(cols, stream_id="keyed", first_offset=i * n))
    return out


KEYED = tf.Schema({"k": "string", "t": "float64", "x": "float64", "y": "float64"}, target="y", key="k", time="t")


def test_operator_checks_on_a_keyed_time_stream():
    # the suite's snapshot/restore and determinism checks mean something only with late rows
    v = Validate(KEYED)
    for b in _keyed_stream(8, 42):
        v.process(b)
    assert v.counts["time_out_of_order"] > 20 and len(v.snapshot()["newest_time"]["keyed"]) == 3
    for check in yield_operator_checks(Validate, streams=_keyed_stream, params={"schema": KEYED}):
        check()


def test_a_pipeline_run_counts_the_late_rows_in_its_summary(tmp_path):
    from river import linear_model

    source = tf.MemorySource(_batches(), SCHEMA)
    for order, expected in (("quarantine", {"time_out_of_order": 3, "nan": 1}), ("keep", {"nan": 1})):
        pipeline = (tf.Pipeline(f"late-{order}").source(source)
                    .apply(Validate(SCHEMA, time_order=order), name="validate")
                    .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="lr"))
        source.seek(0)
        result = pipeline.run(tracking=False, progress=False, output_dir=str(tmp_path / order))
        summary = json.loads((tmp_path / order / "summary.json").read_text())
        assert result.quarantine == expected and summary["quarantine"] == expected
        assert summary["quarantined_rows"] == sum(expected.values())
    with pa.ipc.open_stream(tmp_path / "quarantine" / "quarantine.arrow") as f:
        table = f.read_all()
    assert sorted(o for o, r in zip(table.column("offset").to_pylist(), table.column("reason").to_pylist())
                  if r == "time_out_of_order") == LATE_OFFSETS
