"""The broker connector contract, against real brokers on 127.0.0.1.

Each broker leg runs the same checks: a round trip that reads every message once and
acknowledges it, malformed messages counted and quarantined (never dropped), and a job
that dies mid-stream and resumes from its checkpoint while the broker itself restarts:
no message lost, none learned twice, the same metrics as an uninterrupted run.

* Redis Streams: a real ``redis-server`` (Debian's package, installed by the fixture when
  missing), started per test on a free loopback port with an append-only file, so that
  its restart keeps the stream and the consumer group.
* NATS JetStream and Kafka: no connector yet; their legs are reported as skipped.
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
from tideflow.connectors.redis_streams import RedisStreamSource, offset_of

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


def _produce(url: str, stream: str, n: int, seed: int = 5, bad: dict[int, dict] | None = None) -> list[bytes]:
    """n entries of a noisy linear relation; ``bad`` replaces some entries' fields."""
    import numpy as np
    import redis

    r = redis.Redis.from_url(url)
    rng = np.random.default_rng(seed)
    ids = []
    pipe = r.pipeline()
    for i in range(n):
        x0, x1 = rng.normal(size=2)
        fields = {"x0": repr(float(x0)), "x1": repr(float(x1)), "y": repr(float(2 * x0 - x1 + 0.1 * rng.normal()))}
        if bad and i in bad:
            fields = bad[i]
        pipe.xadd(stream, fields)
    ids = pipe.execute()
    return ids


def _pending(url: str, stream: str, group: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).xpending(stream, group)["pending"])


def _linear():
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LinearRegression()


# -- Redis Streams leg ---------------------------------------------------------------------

def test_redis_round_trip_reads_each_message_once_and_acknowledges_it(redis_server):
    ids = _produce(redis_server.url, "events", 1000)
    src = RedisStreamSource("events", SCHEMA, url=redis_server.url, group="g", batch_size=128, idle_stop_s=0.5)
    sink = tf.MemorySink()
    result = (tf.Pipeline("redis-rt").source(src).validate().learn(tf.RiverStrategy(_linear()), name="lin")
              .sink(sink).run(runner="local", tracking=False, progress=False))
    assert result.rows == 1000 and result.batches == 8  # 7 x 128 + 104
    offsets = [o for b in sink.batches for o in b.offsets.tolist()]
    assert offsets == [offset_of(i) for i in ids]  # broker order, broker-derived offsets
    assert _pending(redis_server.url, "events", "g") == 0  # every entry acknowledged
    assert src.stats()["read"] == 1000 and src.stats()["acked"] == 1000
    assert result.summary["lin"]["samples_trained"] == 1000
    # a second reader of the same group gets nothing more: nothing is delivered twice
    again = RedisStreamSource("events", SCHEMA, url=redis_server.url, group="g", batch_size=128, idle_stop_s=0.3)
    assert sum(len(b) for b in again.batches()) == 0


def test_redis_malformed_messages_are_counted_and_quarantined(redis_server):
    bad = {
        3: {"x0": "abc", "x1": "1.0", "y": "2.0"},          # not a number
        7: {"x0": "nan", "x1": "1.0", "y": "2.0"},          # NaN where finite values are required
        11: {"x1": "1.0", "y": "2.0"},                      # missing field
        13: {"x0": "1e400", "x1": "1.0", "y": "2.0"},       # overflows to inf
        17: {"x0": "0.5", "x1": "1.0", "y": "2.0", "z": "9"},  # extra field: kept row, counted
    }
    _produce(redis_server.url, "messy", 50, bad=bad)
    src = RedisStreamSource("messy", SCHEMA, url=redis_server.url, group="g", batch_size=16, idle_stop_s=0.5)
    result = (tf.Pipeline("redis-bad").source(src).validate().learn(tf.RiverStrategy(_linear()), name="lin")
              .run(runner="local", tracking=False, progress=False))
    assert result.rows == 50  # every message came through the source
    stats = src.stats()
    assert stats["unparsable.x0"] == 1 and stats["missing_field"] == 1 and stats["extra_fields"] == 1
    # the four bad rows are quarantined with a reason; the rest were learned
    assert result.quarantined == 4
    assert result.summary["lin"]["samples_trained"] == 46
    assert _pending(redis_server.url, "messy", "g") == 0


class _Marking(tf.RiverStrategy):
    """Marks the batch at ``at`` (a file) and pauses, so a test thread can kill its actor there."""

    def __init__(self, estimator, *, marker: str, at: int, **kw):
        super().__init__(estimator, **kw)
        self.marker = marker
        self.at = at

    def clone(self):
        return _Marking(self.estimator, marker=self.marker, at=self.at, target=self.target, features=self.features)

    def learn(self, batch):
        report = super().learn(batch)
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == self.at and not Path(self.marker).exists():
            Path(self.marker).write_text("reached")
            time.sleep(2.0)
        return report


def _comparable(per_batch):
    return {n: [{k: v for k, v in r.items() if k != "train_seconds"} for r in recs] for n, recs in per_batch.items()}


def test_redis_job_dies_broker_restarts_job_resumes_nothing_lost_or_learned_twice(redis_server, tmp_path,
                                                                                   ray_session):
    n, batch = 2000, 100
    _produce(redis_server.url, "live", n)
    url = redis_server.url

    def pipeline(group, marker, at):
        src = RedisStreamSource("live", SCHEMA, url=url, group=group, consumer="job-0", batch_size=batch,
                                idle_stop_s=1.0)
        return (tf.Pipeline("redis-job").source(src).validate().detect(tf.DetectDrift(on="x0"))
                .learn(_Marking(_linear(), marker=str(marker), at=at), name="lin", detector="ADWIN"))

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
            if name.startswith("tideflow.redis-job.") and "learn.lin" in name:
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
    pending = _pending(url, "live", "job")
    assert 0 < pending < n

    redis_server.restart()  # the broker goes down and comes back with its append-only file
    assert _pending(url, "live", "job") == pending

    resumed = pipeline("job", marker, 13).run(runner="ray", tracking=False, progress=False, checkpoint_dir=ckpt,
                                              resume=True, checkpoint_every=5, max_in_flight=2)
    assert resumed.rows == n and resumed.batches == n // batch
    assert resumed.summary["lin"]["samples_trained"] == n  # learned once each
    assert _comparable(resumed.per_batch) == _comparable(baseline.per_batch)
    assert resumed.summary["lin"]["mae"] == baseline.summary["lin"]["mae"]
    assert _pending(url, "live", "job") == 0  # all acknowledged at the end


@pytest.mark.skip(reason="not run: no NATS JetStream connector yet (nats-server is in Debian; next step)")
def test_nats_jetstream_leg():
    pass


@pytest.mark.skipif(not os.environ.get("KAFKA_BOOTSTRAP"), reason="not run: KAFKA_BOOTSTRAP is not set")
def test_kafka_leg():
    pytest.fail("KAFKA_BOOTSTRAP is set, but there is no Kafka connector yet")
