"""Validate: every kind of bad row is quarantined with its reason and counted; good rows go on, cast."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.stream.validate import Validate

SCHEMA = tf.Schema({"x": "float64", "n": "int64", "y": "float64"}, target="y")


def _drain(v):
    side = v.drain()
    return pa.concat_tables(side.quarantine) if side.quarantine else None


def test_good_rows_pass_and_are_cast():
    v = Validate(SCHEMA)
    b = tf.Batch.from_pydict({"x": [1, 2], "n": [1.0, 2.0], "y": [0.5, 1.5]})  # int x, float n: safe casts
    out = v.process(b)
    assert out.schema.field("x").type == pa.float64() and out.schema.field("n").type == pa.int64()
    assert v.counts == {} and _drain(v) is None


@pytest.mark.parametrize(
    "columns, reason, bad_rows",
    [
        ({"x": [1.0, float("nan")], "n": [1, 2], "y": [1.0, 2.0]}, "nan", 1),
        ({"x": [1.0, float("-inf")], "n": [1, 2], "y": [1.0, 2.0]}, "inf", 1),
        ({"x": ["1.0", "abc"], "n": [1, 2], "y": [1.0, 2.0]}, "wrong_type", 1),
        ({"x": [1.0, 2.0], "n": [1.5, 2.0], "y": [1.0, 2.0]}, "wrong_type", 1),  # 1.5 is no int64
        ({"x": [1.0, None], "n": [1, 2], "y": [1.0, 2.0]}, "null", 1),
        ({"x": [1.0, 2.0], "y": [1.0, 2.0]}, "missing_field", 2),
        ({"x": [1.0, 2.0], "n": [1, 2], "y": [1.0, 2.0], "z": [0, 0]}, "extra_field", 2),
        ({"x": [1.0, 2.0], "n": [1, 2], "y": [1e308 * 10, 2.0]}, "inf", 1),  # overflow to inf
    ],
)
def test_each_fault_is_quarantined_with_its_reason(columns, reason, bad_rows):
    v = Validate(SCHEMA)
    out = v.process(tf.Batch.from_pydict(columns))
    assert v.counts == {reason: bad_rows}
    assert (0 if out is None else len(out)) == 2 - bad_rows
    q = _drain(v)
    assert q.num_rows == bad_rows and set(q.column("reason").to_pylist()) == {reason}
    for row in q.column("row").to_pylist():
        json.loads(row)  # the row is kept, readable, even with wrong types or NaN


def test_extra_fields_can_be_dropped_with_a_count():
    v = Validate(SCHEMA, extra="drop")
    out = v.process(tf.Batch.from_pydict({"x": [1.0], "n": [1], "y": [1.0], "z": [0], "w": [1]}))
    assert len(out) == 1 and "z" not in out.column_names
    assert v.counts == {"extra_field_dropped": 2} and v.quarantined == 0


def test_offsets_duplicate_and_out_of_order():
    v = Validate(SCHEMA)
    mk = lambda offs: tf.Batch.from_pydict({"x": [1.0] * len(offs), "n": [1] * len(offs),  # noqa: E731
                                            "y": [1.0] * len(offs), "offset": offs})
    assert len(v.process(mk([0, 1, 2, 5]))) == 4
    out = v.process(mk([2, 3, 6, 6, 7]))  # 2 seen; 3 late (never seen, below 5); 6 twice
    assert out.offsets.tolist() == [6, 7]
    assert v.counts == {"duplicate_offset": 2, "out_of_order_offset": 1}


def test_wrong_tensor_shape_and_nonfinite_pixels():
    schema = tf.Schema({"image": tf.Tensor((2, 2)), "label": "int64"}, target="label")
    v = Validate(schema)
    imgs = np.zeros((3, 2, 2), dtype=np.float32)
    imgs[1, 0, 0] = np.nan
    out = v.process(tf.Batch.from_pydict({"image": imgs, "label": [0, 1, 2]}))
    assert len(out) == 2 and v.counts == {"nan": 1}
    assert out.tensor("image").shape == (2, 2, 2)
    out = v.process(tf.Batch.from_pydict({"image": np.zeros((2, 3, 3), dtype=np.float32), "label": [0, 1]},
                                         first_offset=10))
    assert out is None and v.counts["wrong_shape"] == 2


def test_snapshot_restore_keeps_offset_memory():
    v = Validate(SCHEMA)
    mk = lambda offs: tf.Batch.from_pydict({"x": [1.0] * len(offs), "n": [1] * len(offs),  # noqa: E731
                                            "y": [1.0] * len(offs), "offset": offs})
    v.process(mk([0, 1, 2]))
    w = Validate(SCHEMA)
    w.restore(v.snapshot())
    assert w.process(mk([2, 3])).offsets.tolist() == [3]
    assert w.counts == {"duplicate_offset": 1}
