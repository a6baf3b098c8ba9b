"""The broker connector contract, one suite run against each real broker on 127.0.0.1.

Each broker leg runs the same checks: a round trip that reads every message once and
acknowledges it, malformed messages counted and quarantined (never dropped), and a job
that dies mid-stream and resumes from its checkpoint while the broker itself restarts:
no message lost, none learned twice, the same metrics as an uninterrupted run.

* Redis Streams: a real ``redis-server`` (Debian's package, installed by the fixture when
  missing), started per test on a free loopback port with an append-only file, so that
  its restart keeps the stream and the consumer group.
* NATS JetStream: a real ``nats-server -js`` (Debian's package, installed the same way),
  per test on a free loopback port with file storage, so that its restart keeps the
  stream and the durable consumer.
* Kafka: a real Kafka-protocol broker from the ``kafka_bootstrap`` fixture
  (``tests/connectors/conftest.py``): Tansu, started per test on a free loopback port, or
  the broker ``KAFKA_BOOTSTRAP`` names (an Apache Kafka; topics get a random suffix). That
  leg restarts only the job: Tansu's build here keeps messages in memory only (its
  PostgreSQL storage is not compiled in), and an outside broker is not ours to restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tideflow as tf
from tideflow.connectors.kafka import KafkaSource
from tideflow.connectors.nats_jetstream import NatsJetStreamSource
from tideflow.connectors.redis_streams import RedisStreamSource, offset_of
from tideflow.testing import PauseOnce, comparable

# the test's strategy class travels to Ray workers by value (they cannot import this file)
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = tf.Schema({"x0": "float64", "x1": "float64", "y": "float64"}, target="y")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server_binary() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        # Debian's package, as CI machines start without it
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        res = subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env,
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            res = subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env,
                                 capture_output=True, text=True, timeout=600)
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(f"redis-server could not be installed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return exe


class RedisServer:
    """A real redis-server on 127.0.0.1 (append-only file in ``root``); `restart` keeps its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.exe = _redis_server_binary()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdout=open(self.root / "redis.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start:\n{(self.root / 'redis.log').read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _nats_server_binary() -> str:
    exe = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if exe is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        res = subprocess.run(["apt-get", "install", "-y", "-q", "nats-server"], env=env,
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            res = subprocess.run(["apt-get", "install", "-y", "-q", "nats-server"], env=env,
                                 capture_output=True, text=True, timeout=600)
        exe = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                              else None)
        if exe is None:
            pytest.fail(f"nats-server could not be installed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return exe


class NatsServer:
    """A real nats-server with JetStream on 127.0.0.1 (file storage in ``root``); `restart` keeps its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.exe = _nats_server_binary()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root / "js")],
            stdout=open(self.root / "nats.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                _nats(self.url, lambda js: js.account_info())
                return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nats-server did not start:\n{(self.root / 'nats.log').read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _nats(url: str, work):
    """Runs ``await work(jetstream)`` on a fresh connection (the tests' producer and inspector)."""
    import asyncio

    import nats

    async def main():
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def _messages(n: int, seed: int = 5, bad: dict[int, object] | None = None) -> list[object]:
    """n messages of a noisy linear relation (field maps of text); ``bad`` replaces some."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: list[object] = []
    for i in range(n):
        x0, x1 = rng.normal(size=2)
        fields = {"x0": repr(float(x0)), "x1": repr(float(x1)), "y": repr(float(2 * x0 - x1 + 0.1 * rng.normal()))}
        out.append(bad[i] if bad and i in bad else fields)
    return out


class RedisLeg:
    """The contract's view of Redis Streams: produce, count unacknowledged, restart, make a source."""

    name = "redis"
    json_payloads = False
    can_restart = True

    def __init__(self, root: Path) -> None:
        self.server = RedisServer(root)
        self.server.start()

    def produce(self, topic: str, messages: list[object]) -> list[int]:
        import redis

        pipe = redis.Redis.from_url(self.server.url).pipeline()
        for fields in messages:
            pipe.xadd(topic, fields)
        return [offset_of(i) for i in pipe.execute()]

    def unacknowledged(self, topic: str, group: str, n: int) -> int:
        import redis

        return int(redis.Redis.from_url(self.server.url).xpending(topic, group)["pending"])

    def source(self, topic: str, group: str, *, batch_size: int, idle_stop_s: float):
        return RedisStreamSource(topic, SCHEMA, url=self.server.url, group=group, consumer="job-0",
                                 batch_size=batch_size, idle_stop_s=idle_stop_s)

    def restart(self) -> None:
        self.server.restart()

    def close(self) -> None:
        self.server.stop()


class NatsLeg:
    """The contract's view of NATS JetStream (one stream per topic, subject ``<topic>.in``)."""

    name = "nats"
    json_payloads = True
    can_restart = True

    def __init__(self, root: Path) -> None:
        self.server = NatsServer(root)
        self.server.start()

    def produce(self, topic: str, messages: list[object]) -> list[int]:
        import json

        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        async def work(js):
            try:
                await js.stream_info(topic)
            except NotFoundError:
                await js.add_stream(StreamConfig(name=topic, subjects=[f"{topic}.in"]))
            seqs = []
            for m in messages:
                payload = m if isinstance(m, bytes) else json.dumps(m).encode()
                seqs.append((await js.publish(f"{topic}.in", payload)).seq)
            return seqs

        return _nats(self.server.url, work)

    def unacknowledged(self, topic: str, group: str, n: int) -> int:
        async def work(js):
            last = (await js.stream_info(topic)).state.last_seq
            info = await js.consumer_info(topic, group)
            return int(last - info.ack_floor.stream_seq)

        return _nats(self.server.url, work)

    def source(self, topic: str, group: str, *, batch_size: int, idle_stop_s: float):
        return NatsJetStreamSource(topic, SCHEMA, url=self.server.url, durable=group, batch_size=batch_size,
                                   fetch_timeout_s=0.3, idle_stop_s=idle_stop_s)

    def restart(self) -> None:
        self.server.restart()

    def close(self) -> None:
        self.server.stop()


class KafkaLeg:
    """The contract's view of a Kafka broker (the ``kafka_bootstrap`` fixture's): one partition
    per topic; what is unacknowledged is counted from the offsets produced (Tansu's high
    watermark is not the log end)."""

    name = "kafka"
    json_payloads = True
    can_restart = False

    def __init__(self, root: Path, bootstrap: str) -> None:
        import uuid

        self.bootstrap = bootstrap
        self.suffix = uuid.uuid4().hex[:8]
        self.ends: dict[str, int] = {}  # topic -> one past the last offset produced

    def topic(self, topic: str) -> str:
        return f"tideflow-test-{topic}-{self.suffix}"

    def produce(self, topic: str, messages: list[object]) -> list[int]:
        import json

        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for fut in admin.create_topics([NewTopic(self.topic(topic), num_partitions=1, replication_factor=1)]).values():
            try:
                fut.result(30)
            except Exception as exc:  # noqa: BLE001 - an existing topic is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        offsets: list[int] = []
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        for m in messages:
            payload = m if isinstance(m, bytes) else json.dumps(m).encode()
            producer.produce(self.topic(topic), payload, partition=0,
                             on_delivery=lambda err, msg: offsets.append(msg.offset()) if err is None else None)
        assert producer.flush(60) == 0 and len(offsets) == len(messages)
        self.ends[topic] = max(self.ends.get(topic, 0), max(offsets) + 1)
        return sorted(offsets)

    def unacknowledged(self, topic: str, group: str, n: int) -> int:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{group}-{self.suffix}"})
        try:
            committed = c.committed([TopicPartition(self.topic(topic), 0)], timeout=30)[0].offset
            return int(self.ends[topic] - max(committed, 0))
        finally:
            c.close()

    def source(self, topic: str, group: str, *, batch_size: int, idle_stop_s: float):
        # a killed job's consumer holds its partition until the broker's session timeout: the
        # shortest a broker allows by default, so that the resumed job waits little
        return KafkaSource(self.topic(topic), SCHEMA, bootstrap=self.bootstrap, group=f"{group}-{self.suffix}",
                           batch_size=batch_size, idle_stop_s=idle_stop_s, poll_timeout_s=0.2,
                           config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})

    def restart(self) -> None:
        pass

    def close(self) -> None:
        pass


_LEGS = {"redis": RedisLeg, "nats": NatsLeg, "kafka": KafkaLeg}


@pytest.fixture(params=["redis", "nats", "kafka"])
def broker(request, tmp_path):
    if request.param == "kafka":
        leg = KafkaLeg(tmp_path, request.getfixturevalue("kafka_bootstrap"))
    else:
        leg = _LEGS[request.param](tmp_path)
    yield leg
    leg.close()


def _linear():
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LinearRegression()


# -- the contract ----------------------------------------------------------------------------

def test_round_trip_reads_each_message_once_and_acknowledges_it(broker):
    offsets_sent = broker.produce("events", _messages(1000))
    src = broker.source("events", "g", batch_size=128, idle_stop_s=0.5)
    sink = tf.MemorySink()
    result = (tf.Pipeline("broker-rt").source(src).validate().learn(tf.RiverStrategy(_linear()), name="lin")
              .sink(sink).run(runner="local", tracking=False, progress=False))
    assert result.rows == 1000 and result.batches == 8  # 7 x 128 + 104
    offsets = [o for b in sink.batches for o in b.offsets.tolist()]
    assert offsets == offsets_sent  # broker order, broker-derived offsets
    assert broker.unacknowledged("events", "g", 1000) == 0  # every message acknowledged
    assert src.stats()["read"] == 1000 and src.stats()["acked"] == 1000
    assert result.summary["lin"]["samples_trained"] == 1000
    # a second reader of the same group gets nothing more: nothing is delivered twice
    again = broker.source("events", "g", batch_size=128, idle_stop_s=0.3)
    assert sum(len(b) for b in again.batches()) == 0
    again.close()


def test_malformed_messages_are_counted_and_quarantined(broker):
    bad: dict[int, object] = {
        3: {"x0": "abc", "x1": "1.0", "y": "2.0"},          # not a number
        7: {"x0": "nan", "x1": "1.0", "y": "2.0"},          # NaN where finite values are required
        11: {"x1": "1.0", "y": "2.0"},                      # missing field
        13: {"x0": "1e400", "x1": "1.0", "y": "2.0"},       # overflows to inf
        17: {"x0": "0.5", "x1": "1.0", "y": "2.0", "z": "9"},  # extra field: kept row, counted
    }
    if broker.json_payloads:
        bad[19] = b'{"x0": 0.5, "x1":'  # a truncated payload
        bad[23] = {"x0": [1, 2], "x1": True, "y": 2.0}  # JSON of the wrong types
    broker.produce("messy", _messages(50, bad=bad))
    src = broker.source("messy", "g", batch_size=16, idle_stop_s=0.5)
    result = (tf.Pipeline("broker-bad").source(src).validate().learn(tf.RiverStrategy(_linear()), name="lin")
              .run(runner="local", tracking=False, progress=False))
    assert result.rows == 50  # every message came through the source
    stats = src.stats()
    n_bad = 4 + (2 if broker.json_payloads else 0)
    assert stats["unparsable.x0"] == 1 + (1 if broker.json_payloads else 0)
    assert stats["missing_field"] == 1 + (3 if broker.json_payloads else 0)
    assert stats["extra_fields"] == 1
    if broker.json_payloads:
        assert stats["not_a_map"] == 1 and stats["unparsable.x1"] == 1
    # the bad rows are quarantined with a reason; the rest were learned
    assert result.quarantined == n_bad
    assert result.summary["lin"]["samples_trained"] == 50 - n_bad
    assert broker.unacknowledged("messy", "g", 50) == 0


def test_job_dies_broker_restarts_job_resumes_nothing_lost_or_learned_twice(broker, tmp_path, ray_session):
    n, batch = 2000, 100
    broker.produce("live", _messages(n))

    def pipeline(group, marker, at):
        src = broker.source("live", group, batch_size=batch, idle_stop_s=1.0)
        return (tf.Pipeline("broker-job").source(src).validate().detect(tf.DetectDrift(on="x0"))
                .learn(PauseOnce(_linear(), marker=str(marker), at=at), name="lin", detector="ADWIN"))

    # the reference: an uninterrupted run over the same messages (its own consumer group)
    baseline = pipeline("reference", tmp_path / "never", -1).run(runner="local", tracking=False, progress=False)
    assert baseline.rows == n

    marker, ckpt = tmp_path / "reached", tmp_path / "ckpt"
    killed: list[str] = []

    def killer():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in ray_session.util.list_named_actors():
            if name.startswith("tideflow.broker-job.") and "learn.lin" in name:
                ray_session.kill(ray_session.get_actor(name), no_restart=False)
                killed.append(name)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(ray.exceptions.RayActorError):
        pipeline("job", marker, 13).run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt,
                                        checkpoint_every=5, max_restarts=0, max_in_flight=2)
    thread.join(timeout=10)
    assert killed
    # entries up to the last checkpoint are acknowledged; the ones after it are still pending
    pending = broker.unacknowledged("live", "job", n)
    assert 0 < pending < n

    if broker.can_restart:
        broker.restart()  # the broker goes down and comes back with its stored data
        assert broker.unacknowledged("live", "job", n) == pending

    resumed = pipeline("job", marker, 13).run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt,
                                              resume=True, checkpoint_every=5, max_in_flight=2)
    assert resumed.rows == n and resumed.batches == n // batch
    assert resumed.summary["lin"]["samples_trained"] == n  # learned once each
    assert comparable(resumed.per_batch) == comparable(baseline.per_batch)
    assert resumed.summary["lin"]["mae"] == baseline.summary["lin"]["mae"]
    assert broker.unacknowledged("live", "job", n) == 0  # all acknowledged at the end
