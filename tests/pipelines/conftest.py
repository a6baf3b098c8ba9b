"""Fixtures for pipeline tests: a real MLflow tracking server (no mocks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

_SERVER_START_TIMEOUT_S = 60.0


def _free_port() -> int:
    # Racy by nature (the port could be taken before the server binds), but the server
    # would then fail fast and the fixture reports it with the server's log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_cmd() -> list[str]:
    # Prefer the venv's own console script next to the interpreter running the tests, so the
    # server is the same mlflow as the client; fall back to `python -m mlflow`.
    exe = Path(sys.executable).with_name("mlflow")
    if exe.exists() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "mlflow"]


def _server_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-8000:]
    except OSError:
        return "<no log>"


@pytest.fixture(scope="session")
def mlflow_server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the test server: server.db, server.log, artifacts/."""
    return tmp_path_factory.mktemp("mlflow_server")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts under
    ``root``; `stop` and `start` again keep its port and store (an outage and its end)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.cmd = [
            *_mlflow_cmd(), "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
            # Artifacts go through the server (mlflow-artifacts:/ URIs, HTTP upload/download),
            # like a remote deployment, and land under <root>/artifacts.
            "--serve-artifacts",
            "--artifacts-destination", str(root / "artifacts"),
            # One worker: the default (4) only costs start-up time here.
            "--workers", "1",
            # 127.0.0.1 is in mlflow 3's default --allowed-hosts / CORS lists, so the security
            # middleware can stay on; naming it keeps that true if the defaults change.
            "--allowed-hosts", f"127.0.0.1:{self.port},127.0.0.1,localhost:{self.port},localhost",
        ]

    def start(self) -> str:
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        # Local requests must not go through a proxy set for the outside world.
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        # mlflow 3 also starts a job runner with ~7 huey consumer processes (for GenAI jobs and
        # trace rollups); each imports mlflow, which triples start-up time on a small machine.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.root, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so uvicorn's workers die with it
        )
        deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with code {self.proc.returncode} before answering "
                    f"/health.\ncommand: {' '.join(self.cmd)}\n--- server log ---\n"
                    f"{_server_log(self.log_path)}"
                )
            try:
                with opener.open(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self.uri
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not answer {self.uri}/health within "
                    f"{_SERVER_START_TIMEOUT_S:.0f}s.\ncommand: {' '.join(self.cmd)}\n"
                    f"--- server log ---\n{_server_log(self.log_path)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc is not None:
            # uvicorn workers might outlive the leader briefly; make sure the group is gone.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@pytest.fixture
def no_proxy_local() -> Iterator[None]:
    # urllib (and mlflow's requests session) honour *_proxy env vars; bypass them for us too.
    old = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_root: Path) -> Iterator[str]:
    """Start `mlflow server` on a free local port with a SQLite backend and proxied
    artifacts in a temp folder; yield its http URI; kill its process group at the end."""
    server = MlflowServer(mlflow_server_root)
    old_no_proxy = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    try:
        yield server.start()
    finally:
        for k, v in old_no_proxy.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
