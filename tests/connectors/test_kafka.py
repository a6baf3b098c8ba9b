"""Kafka beyond the broker contract: multi-partition topics, keys, one group member, bad input,
the Kafka sink. Against a real Kafka-protocol broker (the ``kafka_bootstrap`` fixture: Tansu
on 127.0.0.1, or ``KAFKA_BOOTSTRAP``); every topic and group name is new per test."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.connectors.kafka import KafkaGroupConflict, KafkaSource
from tideflow.connectors.kafka_sink import KafkaSink, KafkaSinkError
from tideflow.testing import PauseOnce

# the test's strategy class travels to Ray workers by value (they cannot import this file)
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = tf.Schema({"x0": "float64", "x1": "float64", "y": "float64", "k": "string"}, target="y", key="k")
# a session timeout a broker allows by default: a killed job's member is gone soon after
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _name(what: str) -> str:
    return f"tideflow-{what}-{uuid.uuid4().hex[:8]}"


def _topic(bootstrap: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = _name("t")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        fut.result(30)
    return topic


def _produce(bootstrap: str, topic: str, messages: list[tuple[str | None, object]]) -> list[tuple[int, int]]:
    """(key, value) messages, value a dict (sent as JSON) or raw bytes; Kafka's partitioner
    places them by key. Returns each message's (partition, offset), in order."""
    from confluent_kafka import Producer

    where: dict[int, tuple[int, int]] = {}
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, (key, value) in enumerate(messages):
        payload = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()

        def done(err, msg, i=i):
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())

        producer.produce(topic, payload, key=None if key is None else key.encode(), on_delivery=done)
    assert producer.flush(60) == 0
    return [where[i] for i in range(len(messages))]


def _keyed_messages(n: int, keys: int = 8, seed: int = 3) -> list[tuple[str, dict]]:
    """n rows of a per-key linear relation (each key its own slope), keys k0..k{keys-1}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(keys))
        x0, x1 = rng.normal(size=2)
        out.append((f"k{k}", {"x0": float(x0), "x1": float(x1), "y": float((k + 1) * x0 - x1 + 0.1 * rng.normal())}))
    return out


def _linear():
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def _weights(strategies: dict) -> dict:
    """Each key's trained linear model: weights and intercept (what learning every row once, in
    partition order, fixes exactly)."""
    out = {}
    for key, strat in strategies.items():
        lin = strat._model["LinearRegression"]
        out[key] = (strat.n_learned, dict(lin.weights), lin.intercept)
    return out


def test_multi_partition_job_killed_and_resumed_learns_every_message_once(kafka_bootstrap, tmp_path, ray_session):
    n, batch = 2400, 50
    topic = _topic(kafka_bootstrap, 4)
    placed = _produce(kafka_bootstrap, topic, _keyed_messages(n))
    per_partition = {p: sum(1 for q, _ in placed if q == p) for p in range(4)}
    assert all(per_partition.values()), per_partition  # the keys reach every partition

    def pipeline(group, marker, at, sink=None):
        src = KafkaSource(topic, SCHEMA, bootstrap=kafka_bootstrap, group=group, batch_size=batch,
                          key_column="k", idle_stop_s=1.0, poll_timeout_s=0.2, config=FAST_GROUP)
        p = (tf.Pipeline("kafka-mp").source(src).validate()
             .learn(PauseOnce(_linear(), marker=str(marker), at=at), name="lin", route=tf.Keyed("k", actors=2)))
        return p.sink(sink) if sink is not None else p

    # the reference: an uninterrupted run over the same messages (its own group)
    sink = tf.MemorySink()
    baseline = pipeline(_name("ref"), tmp_path / "never", -1, sink).run(runner="local", tracking=False,
                                                                          progress=False)
    assert baseline.rows == n and baseline.quarantined == 0
    # each batch holds one partition's messages, cut by count from the partition's start
    by_stream: dict[str, list[int]] = {}
    for b in sink.batches:
        by_stream.setdefault(b.stream_id, []).append(len(b))
        assert b.offsets.tolist() == list(range(b.first_offset, b.last_offset + 1))
    assert set(by_stream) == {f"kafka:{topic}/{p}" for p in range(4)}
    for p in range(4):
        sizes = by_stream[f"kafka:{topic}/{p}"]
        assert sum(sizes) == per_partition[p] and all(s == batch for s in sizes[:-1])

    group, marker, ckpt = _name("job"), tmp_path / "reached", tmp_path / "ckpt"
    killed: list[str] = []

    def killer():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in ray_session.util.list_named_actors():
            if name.startswith("tideflow.kafka-mp.") and "learn.lin" in name:
                ray_session.kill(ray_session.get_actor(name), no_restart=False)
                killed.append(name)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(ray.exceptions.RayActorError):
        pipeline(group, marker, 6).run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt,
                                       checkpoint_every=4, max_restarts=0, max_in_flight=2)
    thread.join(timeout=10)
    assert killed

    from confluent_kafka import Consumer, TopicPartition

    def committed() -> dict[int, int]:
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
        try:
            return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(4)],
                                                                  timeout=30)}
        finally:
            c.close()

    # a checkpoint was acknowledged partition by partition, and not everything
    done = committed()
    assert 0 < sum(max(o, 0) for o in done.values()) < n

    resumed = pipeline(group, marker, 6).run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt,
                                             resume=True, checkpoint_every=4, max_in_flight=2)
    assert resumed.rows == n and resumed.quarantined == 0
    assert resumed.summary["lin"]["samples_trained"] == n  # every message learned once
    # per key, the same rows in the same order: the same model and the same prequential errors
    assert _weights(resumed.strategies["lin"]) == _weights(baseline.strategies["lin"])
    assert len(_weights(baseline.strategies["lin"])) == 8
    assert resumed.summary["lin"]["mae"] == pytest.approx(baseline.summary["lin"]["mae"], rel=1e-12)
    # and everything is acknowledged, each partition up to its end
    assert committed() == {p: per_partition[p] for p in range(4)}


def test_partitions_resume_where_they_left_off_and_seek_takes_a_map(kafka_bootstrap):
    topic = _topic(kafka_bootstrap, 3)
    placed = _produce(kafka_bootstrap, topic, _keyed_messages(300, keys=6, seed=4))
    ends = {p: 1 + max(o for q, o in placed if q == p) for p in range(3)}
    group = _name("g")

    def source(**kw):
        kw = {"batch_size": 20, "idle_stop_s": 0.5, **kw}
        return KafkaSource(topic, SCHEMA, bootstrap=kafka_bootstrap, group=group, key_column="k",
                           poll_timeout_s=0.2, config=FAST_GROUP, **kw)

    first = (tf.Pipeline("kafka-part").source(source()).validate().learn(tf.RiverStrategy(_linear()), name="lin")
             .run(runner="local", tracking=False, progress=False, max_batches=5))
    assert first.rows == 100
    # a new job of the group goes on from the group's offsets, partition by partition
    sink = tf.MemorySink()
    rest = (tf.Pipeline("kafka-part").source(source()).validate().learn(tf.RiverStrategy(_linear()), name="lin")
            .sink(sink).run(runner="local", tracking=False, progress=False))
    assert rest.rows == 200 and rest.quarantined == 0
    seen = {(b.stream_id, o) for b in sink.batches for o in b.offsets.tolist()}
    assert len(seen) == 200
    # seek with a map: each partition from its own offset; with linger_s a partition's shorter
    # batch comes once it has waited that long, not only when the stream goes idle
    src = source(linger_s=0.3, idle_stop_s=30.0)
    src.seek({0: ends[0] - 3, 1: 0, 2: ends[2]})
    want = {f"kafka:{topic}/0": list(range(ends[0] - 3, ends[0])), f"kafka:{topic}/1": list(range(ends[1]))}
    got: dict[str, list[int]] = {}
    started = time.monotonic()
    for b in src.batches():
        got.setdefault(b.stream_id, []).extend(b.offsets.tolist())
        if sum(map(len, got.values())) >= sum(map(len, want.values())):
            break
    assert time.monotonic() - started < 15  # well before the idle stop
    assert got == want
    assert src.position == {0: ends[0], 1: ends[1], 2: ends[2]}
    src.close()


def test_a_second_member_of_the_group_is_refused_and_the_first_loses_nothing(kafka_bootstrap):
    topic = _topic(kafka_bootstrap, 4)
    n = 400
    _produce(kafka_bootstrap, topic, _keyed_messages(n, seed=6))
    group = _name("g")
    first = KafkaSource(topic, SCHEMA, bootstrap=kafka_bootstrap, group=group, batch_size=10, key_column="k",
                        idle_stop_s=3.0, poll_timeout_s=0.1, config=FAST_GROUP)
    offsets: list[tuple[str, int]] = []
    joined = threading.Event()
    failure: list[BaseException] = []

    def run_first():
        try:
            for b in first.batches():
                joined.set()
                offsets.extend((b.stream_id, o) for o in b.offsets.tolist())
                first.commit(first.snapshot())
                time.sleep(0.05)  # a slow learner: the stream lasts while the second member tries
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    thread = threading.Thread(target=run_first, daemon=True)
    thread.start()
    assert joined.wait(30)
    second = KafkaSource(topic, SCHEMA, bootstrap=kafka_bootstrap, group=group, batch_size=10, key_column="k",
                         idle_stop_s=3.0, poll_timeout_s=0.1, join_timeout_s=5.0, config=FAST_GROUP)
    with pytest.raises(KafkaGroupConflict, match=f"group '{group}' has another member"):
        next(iter(second.batches()))
    assert second.stats().get("read", 0) == 0  # it read nothing the first one reads
    thread.join(timeout=60)
    assert not failure and not thread.is_alive()
    # the first member got its partitions back and read every message exactly once
    assert len(offsets) == n and len(set(offsets)) == n
    assert first.stats()["rebalances"] >= 2


def test_bad_kafka_messages_are_counted_and_quarantined_with_partition_and_offset(kafka_bootstrap, tmp_path):
    topic = _topic(kafka_bootstrap, 2)
    good = _keyed_messages(40, keys=4, seed=8)
    bad: dict[int, tuple[str | None, object]] = {
        5: ("k1", b"x0=1,x1=2"),                                      # not JSON
        9: ("k2", b"[0.5, 1.0, 2.0]"),                                # a JSON array
        14: ("k3", {"x0": 0.5, "y": 1.0}),                            # a missing field
        20: ("k0", {"x0": 0.5, "x1": 1.0, "y": 2.0, "pad": "z" * 600}),  # oversized
        27: ("k1", None),                                             # a tombstone
    }
    messages = [bad.get(i, m) for i, m in enumerate(good)]
    placed = _produce(kafka_bootstrap, topic, messages)
    src = KafkaSource(topic, SCHEMA, bootstrap=kafka_bootstrap, group=_name("g"), batch_size=8, key_column="k",
                      idle_stop_s=0.5, poll_timeout_s=0.2, max_message_bytes=400, config=FAST_GROUP)
    out = tmp_path / "run"
    result = (tf.Pipeline("kafka-bad").source(src).validate().learn(tf.RiverStrategy(_linear()), name="lin")
              .run(runner="local", tracking=False, progress=False, output_dir=out))
    assert result.rows == 40  # every message came through: none dropped
    stats = src.stats()
    assert stats["not_a_map"] == 3 and stats["oversized"] == 1  # not JSON, array, tombstone; oversized
    assert result.quarantined == len(bad) and result.summary["lin"]["samples_trained"] == 40 - len(bad)
    with pa.ipc.open_stream(out / "quarantine.arrow") as reader:
        quarantined = reader.read_all().to_pylist()
    where = {(r["stream_id"], r["offset"]) for r in quarantined}
    assert where == {(f"kafka:{topic}/{placed[i][0]}", placed[i][1]) for i in bad}


def test_kafka_sink_writes_keyed_rows_once_and_fails_a_batch_it_cannot_deliver(kafka_bootstrap):
    from confluent_kafka import Consumer, TopicPartition

    src_topic, out_topic = _topic(kafka_bootstrap, 2), _topic(kafka_bootstrap, 3)
    n = 120
    _produce(kafka_bootstrap, src_topic, _keyed_messages(n, keys=5, seed=9))
    sink = KafkaSink(out_topic, bootstrap=kafka_bootstrap, key="k")
    result = (tf.Pipeline("kafka-sink")
              .source(KafkaSource(src_topic, SCHEMA, bootstrap=kafka_bootstrap, group=_name("g"), batch_size=16,
                                  key_column="k", idle_stop_s=0.5, poll_timeout_s=0.2, config=FAST_GROUP))
              .validate().learn(tf.RiverStrategy(_linear()), name="lin").sink(sink)
              .run(runner="local", tracking=False, progress=False))
    assert result.rows == n and sink.counts["written"] == n
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": _name("read"), "enable.auto.commit": False})
    c.assign([TopicPartition(out_topic, p, 0) for p in range(3)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        got += [m for m in c.consume(200, 0.5) if m.error() is None]
    c.close()
    rows = [(m.key().decode(), m.partition(), json.loads(m.value()), dict(m.headers())) for m in got]
    assert len(rows) == n
    # every row once: (its stream, its offset) is unique, and the key is the row's k
    assert len({(h["tideflow-stream"], v["offset"]) for _, _, v, h in rows}) == n
    assert all(k == v["k"] for k, _, v, _ in rows)
    # a key stays in one partition (Kafka's partitioner on the message key)
    assert all(len({p for k, p, _, _ in rows if k == key}) == 1 for key in {r[0] for r in rows})

    # a broker that does not answer: the write fails within its bound, and the source has not
    # acknowledged the batch it came from
    group = _name("g")
    dead = KafkaSink(out_topic, bootstrap="127.0.0.1:1", timeout_s=2.0,
                     config={"message.timeout.ms": 1500, "socket.connection.setup.timeout.ms": 1000})
    with pytest.raises(KafkaSinkError, match="not confirmed"):
        (tf.Pipeline("kafka-sink-dead")
         .source(KafkaSource(src_topic, SCHEMA, bootstrap=kafka_bootstrap, group=group, batch_size=16,
                             key_column="k", idle_stop_s=0.5, poll_timeout_s=0.2, config=FAST_GROUP))
         .validate().learn(tf.RiverStrategy(_linear()), name="lin").sink(dead)
         .run(runner="local", tracking=False, progress=False))
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        assert all(tp.offset < 0 for tp in c.committed([TopicPartition(src_topic, p) for p in range(2)], timeout=30))
    finally:
        c.close()
