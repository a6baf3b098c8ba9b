"""Property-based bad input (hypothesis): malformed batches at the validate step, truncated
recordings, malformed broker messages, and a whole job fed malformed batches.

Each malformed row gets a reason (quarantine, counted) or the input a clear error; no
input crashes the step or the job, and no row disappears: rows in = rows out +
rows quarantined, always.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow.connectors.base import MemorySource
from tideflow.connectors.recording import RecordingError, RecordingSource, RecordingWriter
from tideflow.connectors.kafka import KafkaSource
from tideflow.connectors.nats_jetstream import NatsJetStreamSource
from tideflow.connectors.redis_streams import RedisStreamSource
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema, Tensor
from tideflow.stream.validate import Validate

REASONS = {"missing_field", "extra_field", "wrong_type", "wrong_shape", "null", "nan", "inf",
           "duplicate_offset", "out_of_order_offset"}
SCHEMA = Schema({"x": "float64", "k": "int64", "s": "string", "img": Tensor((2, 2), "float32"), "y": "float64"},
                target="y")

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324]),
                   st.none())
ints = st.one_of(st.integers(-2**63, 2**63 - 1), st.none())
texts = st.one_of(st.text(max_size=8), st.none())


@st.composite
def column(draw, name: str, n: int):
    """One column of n rows: right type, a wrong type, or (returned as None) absent."""
    kind = draw(st.sampled_from(["right", "right", "right", "wrong", "missing"]))
    if kind == "missing":
        return None
    if name == "img":
        shape = (2, 2) if kind == "right" else draw(st.sampled_from([(3,), (2, 3), (4, 1)]))
        values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                               min_size=n * int(np.prod(shape)), max_size=n * int(np.prod(shape))))
        arr = np.asarray(values, dtype=np.float32).reshape((n, *shape))
        return pa.FixedShapeTensorArray.from_numpy_ndarray(arr) if n else None
    if kind == "right":
        values = draw(st.lists({"x": floats, "y": floats, "k": ints, "s": texts}[name], min_size=n, max_size=n))
        typ = {"x": pa.float64(), "y": pa.float64(), "k": pa.int64(), "s": pa.string()}[name]
        return pa.array(values, type=typ)
    wrong = draw(st.sampled_from(["text", "float", "int", "bool"]))
    values = draw(st.lists({"text": texts, "float": floats, "int": ints, "bool": st.booleans()}[wrong],
                           min_size=n, max_size=n))
    return pa.array(values, type={"text": pa.string(), "float": pa.float64(), "int": pa.int64(),
                                  "bool": pa.bool_()}[wrong])


@st.composite
def malformed_batch(draw, start: int = 0):
    n = draw(st.integers(1, 12))
    offsets = list(range(start, start + n))
    how = draw(st.sampled_from(["ok", "ok", "dup", "shuffle", "back"]))
    if how == "dup":
        offsets[draw(st.integers(0, n - 1))] = offsets[0]
    elif how == "shuffle":
        offsets = draw(st.permutations(offsets))
    elif how == "back":
        offsets = [o - draw(st.integers(0, 30)) for o in offsets]
    cols = {OFFSET: pa.array(offsets, type=pa.int64())}
    for name in SCHEMA.fields:
        col = draw(column(name, n))
        if col is not None:
            cols[name] = col
    if draw(st.booleans()) and draw(st.booleans()):
        cols["unexpected"] = pa.array(draw(st.lists(ints, min_size=n, max_size=n)), type=pa.int64())
    return Batch(pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols)), "s")


def _accounted(v: Validate, batch: Batch, out: Batch | None) -> int:
    side = v.drain()
    q = sum(t.num_rows for t in side.quarantine)
    for t in side.quarantine:
        assert set(t.column("reason").to_pylist()) <= REASONS
    kept = len(out) if out is not None else 0
    assert kept + q == len(batch), "a row disappeared"
    return kept


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(malformed_batch(), min_size=1, max_size=5))
def test_validate_never_crashes_and_accounts_for_every_row(batches):
    v = Validate(SCHEMA)
    seen_offsets: list[int] = []
    for b in batches:
        out = v.process(b)
        _accounted(v, b, out)
        if out is not None and len(out):
            # what passes fits the schema exactly and is finite where it must be
            assert out.data.schema == SCHEMA.arrow_schema()
            for name in ("x", "y"):
                vals = out.column(name).to_numpy(zero_copy_only=False)
                assert np.isfinite(vals).all()
            assert out.column("img").type.shape == [2, 2]
            assert np.isfinite(out.column("img").to_numpy_ndarray()).all()
            assert out.column("k").null_count == 0 and out.column("s").null_count == 0
            seen_offsets += out.offsets.tolist()
    # accepted offsets never repeat and never go back
    assert seen_offsets == sorted(set(seen_offsets))
    assert v.rows_in == v.rows_out + v.quarantined


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(malformed_batch(), min_size=1, max_size=4))
def test_a_job_fed_malformed_batches_finishes_and_counts_every_row(batches):
    from river import linear_model

    src = MemorySource(batches, SCHEMA, stream_id="s")
    result = (tf.Pipeline("bad").source(src).validate()
              .learn(tf.RiverStrategy(linear_model.LinearRegression(), features=["x"]), name="lin")
              .run(runner="local", tracking=False, progress=False))
    total = sum(len(b) for b in batches)
    assert result.rows == total
    assert result.summary["lin"]["rows_scored"] + result.quarantined == total


@settings(max_examples=60, deadline=None)
@given(cut=st.floats(0.0, 1.0))
def test_truncated_recording_yields_an_intact_prefix_then_a_clear_error(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp("rec") / "r.arrows"
    schema = Schema({"x": "float64", "y": "float64"}, target="y")
    rows = []
    with RecordingWriter(path, schema, stream_id="r") as w:
        for b in range(6):
            xs = [float(b * 10 + i) for i in range(10)]
            rows += xs
            w.write(Batch.from_pydict({"x": xs, "y": xs}, stream_id="r", first_offset=b * 10))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    got: list[float] = []
    try:
        for batch in RecordingSource(path).batches():
            got += batch.column("x").to_pylist()
        complete = True
    except RecordingError:
        complete = False
    assert got == rows[: len(got)]  # a prefix: nothing reordered, nothing invented
    if complete:
        assert int(len(data) * cut) == len(data) and got == rows


fields_maps = st.dictionaries(
    st.sampled_from(["x0", "x1", "y", "extra", "z"]),
    st.one_of(st.text(max_size=6).map(str.encode), st.sampled_from([b"nan", b"inf", b"-1e999", b"1e308", b"",
                                                                    b"\xff\xfe", b"[1,2]", b"0.5"])),
    max_size=5)


@settings(max_examples=200, deadline=None)
@given(st.lists(fields_maps, min_size=1, max_size=20))
def test_redis_decoding_never_crashes_and_keeps_every_entry(entries):
    schema = Schema({"x0": "float64", "x1": "float64", "y": "float64"}, target="y")
    src = RedisStreamSource("s", schema, url="redis://127.0.0.1:1/0")  # never connects: decoding only
    raw = [(1000 + i, f"{1 + i}-0".encode(), fields) for i, fields in enumerate(entries)]
    batch = src._emit(raw)
    assert len(batch) == len(entries)
    assert batch.offsets.tolist() == [r[0] for r in raw]
    v = Validate(schema)
    out = v.process(batch)
    assert _accounted(v, batch, out) == (len(out) if out is not None else 0)
    stats = src.stats()
    missing = sum(1 for f in entries for name in ("x0", "x1", "y") if name not in f)
    assert stats.get("missing_field", 0) == missing


json_values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                        st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
                        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
json_payloads = st.one_of(
    st.dictionaries(st.sampled_from(["x0", "x1", "y", "extra"]), json_values, max_size=4).map(
        lambda d: __import__("json").dumps(d).encode()),
    st.binary(max_size=20),  # not JSON, or JSON that is not an object
    st.sampled_from([b"null", b"[1, 2]", b'"text"', b'{"x0": 1', b"", b"\xff"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(json_payloads, min_size=1, max_size=20), st.sampled_from(["nats", "kafka"]))
def test_json_broker_decoding_never_crashes_and_keeps_every_message(payloads, which):
    schema = Schema({"x0": "float64", "x1": "float64", "y": "float64"}, target="y")
    # never connect: decoding only
    src = (NatsJetStreamSource("s", schema, url="nats://127.0.0.1:1") if which == "nats"
           else KafkaSource("s", schema, bootstrap="127.0.0.1:1"))
    raw = [(7 + 3 * i, None, p) for i, p in enumerate(payloads)]
    if which == "kafka":  # the Kafka source decodes per partition and keeps a position per partition
        src._bufs[0] = list(raw)
        src._buf_since[0] = 0.0
        batch = src._emit_partition(0, len(raw))
    else:
        batch = src._emit(raw)
    assert len(batch) == len(payloads)
    assert batch.offsets.tolist() == [r[0] for r in raw]
    v = Validate(schema)
    out = v.process(batch)
    assert _accounted(v, batch, out) == (len(out) if out is not None else 0)
    expected = {0: raw[-1][0] + 1} if which == "kafka" else raw[-1][0] + 1
    assert src.position == expected and src.stats()["read"] == len(payloads)


def test_wrong_image_shape_is_quarantined_not_raised():
    img = pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((3, 3, 1), dtype=np.float32))
    b = Batch(pa.RecordBatch.from_arrays(
        [pa.array([0, 1, 2], type=pa.int64()), pa.array([1.0, 2.0, 3.0]), pa.array([1, 2, 3]), pa.array(["a"] * 3),
         img, pa.array([0.0, 1.0, 2.0])], names=[OFFSET, "x", "k", "s", "img", "y"]), "s")
    v = Validate(SCHEMA)
    assert v.process(b) is None
    assert v.counts == {"wrong_shape": 3}


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [1e308 * 10]])
def test_nonfinite_target_is_quarantined(bad):
    v = Validate(Schema({"x": "float64", "y": "float64"}, target="y"))
    assert v.process(Batch.from_pydict({"x": [1.0], "y": bad})) is None
    assert sum(v.counts.values()) == 1
