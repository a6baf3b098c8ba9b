"""Joining an existing Ray cluster through ``RAY_ADDRESS``, as the README tells a user to.

One cluster for the module: a head started with Ray's CLI (``.venv/bin/ray start --head``)
and a worker node joined to it (``ray start --address=...``, through
``ray_worker_node.py``: Ray 2.60's CLI cannot keep a worker node on loopback), both on
127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), on free ports, with Ray's token
authentication on and a token of the cluster's own (``RAY_AUTH_TOKEN_PATH``), and a Ray
folder of its own (``--temp-dir``: no other Ray on this machine takes it for "the latest
cluster"). The drivers are ``tideflow`` commands in subprocesses, with only what the
README tells a user to set. The nodes run ``--block``, so stopping their ``ray start``
process stops each node; nothing here calls ``ray stop``, which would stop every Ray on
the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import tideflow as tf
from tideflow.connectors.recording import RecordingSource, record
from tideflow.pipelines.ready import load_pipeline

HERE = Path(__file__).parent
RAY = Path(sys.executable).with_name("ray")
PIPELINE = HERE / "join_pipeline.py"
NODE_START_TIMEOUT_S = 90


def _free_port() -> int:
    # racy by nature; a node that cannot bind fails fast and the fixture shows its log
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(*flags: str) -> list[str]:
    return [f"--{flag}={_free_port()}" for flag in flags]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray setting (the session's own Ray sets some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _started(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"a Ray node did not start (exit {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop one node: SIGTERM to its ``ray start --block`` (which stops the node's processes),
    then SIGKILL to the process group it leads, in case something is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of this node only (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cli_cluster() -> Iterator[dict[str, Any]]:
    # a short folder: Ray's socket paths inside it must stay under the OS limit (107 bytes)
    root = Path(tempfile.mkdtemp(prefix="tfj-", dir="/tmp"))
    token = root / "cluster-token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    port = _free_port()
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                     RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    agents = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port")  # every node's own: Ray's defaults may be taken by another Ray here
    common = ["--num-cpus=1", f"--object-store-memory={100 * 1024 * 1024}", "--disable-usage-stats",
              "--block"]
    head_cmd = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                f"--temp-dir={root / 'ray'}", "--include-dashboard=false", *common,
                *_ports(*agents, "dashboard-port", "ray-client-server-port")]
    worker_cmd = [sys.executable, str(HERE / "ray_worker_node.py"), "start", f"--address=127.0.0.1:{port}",
                  "--resources={\"strategy_node\": 1}", *common, *_ports(*agents)]
    procs: list[subprocess.Popen] = []
    try:
        # both at once: the worker's `ray start` waits for the head's GCS to answer
        for name, cmd in (("head", head_cmd), ("worker", worker_cmd)):
            with (root / f"{name}.log").open("w") as out:
                # a session of its own: the node's processes are one group, stopped together
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True, cwd=root))
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        for name, proc in zip(("head", "worker"), procs):
            _started(proc, root / f"{name}.log", deadline)
        yield {"address": f"127.0.0.1:{port}", "token": token, "root": root, "head": procs[0],
               "worker": procs[1]}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("join") / "sea.arrow"
    record(tf.SyntheticSource("sea-drift", n=3000, batch_size=250, seed=5), path, progress=False)
    return path


def _tideflow(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[Any, float]:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tideflow.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t


def _replay(recording: Path, out: Path, env: dict[str, str], timeout: float = 120) -> tuple[Any, float]:
    return _tideflow(["replay", str(recording), "--pipeline", str(PIPELINE), "--runner", "ray",
                      "--no-tracking", "--no-progress", "--output-dir", str(out)], env, timeout)


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    return {"rows": summary["rows"], "batches": summary["batches"], "drift_events": summary["drift_events"],
            "strategies": {name: {k: v for k, v in s.items() if k != "train_seconds"}
                           for name, s in summary["strategies"].items()}}


def test_replay_joins_a_cluster_started_with_ray_start(cli_cluster, recording, tmp_path):
    # what the README tells a user to set: the address, and where the cluster's token is;
    # no RAY_AUTH_MODE, no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    env = _clean_env(RAY_ADDRESS=cli_cluster["address"], RAY_AUTH_TOKEN_PATH=str(cli_cluster["token"]))
    proc, seconds = _replay(recording, tmp_path / "ray", env)
    assert proc.returncode == 0, f"{seconds:.0f} s\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    joined = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert joined["runner"] == "ray"
    local = load_pipeline(str(PIPELINE), source=RecordingSource(str(recording))).run(
        runner="local", tracking=False, progress=False, output_dir=tmp_path / "local")
    reference = json.loads((local.output_dir / "summary.json").read_text())
    # the pinned step can only have run on the worker node (the one node with strategy_node)
    assert joined["strategies"]["pinned"]["samples_trained"] == 3000
    assert _comparable(joined) == _comparable(reference)


def test_an_address_where_nothing_listens_fails_within_the_bound(recording, tmp_path):
    port = _free_port()
    env = _clean_env(RAY_ADDRESS=f"127.0.0.1:{port}")
    try:
        proc, seconds = _replay(recording, tmp_path / "out", env, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("joining an address where nothing listens hung for 90 s")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"nothing answers at 127.0.0.1:{port}" in proc.stderr
    assert seconds < 60


def test_a_wrong_token_is_refused_with_a_clear_message(cli_cluster, recording, tmp_path):
    env = _clean_env(RAY_ADDRESS=cli_cluster["address"], RAY_AUTH_TOKEN="not-the-cluster-token")
    proc, seconds = _replay(recording, tmp_path / "out", env, timeout=90)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("tideflow: error:")]
    assert line and "refused this client, which sent the token from RAY_AUTH_TOKEN" in line[0], \
        proc.stderr[-3000:]
    assert "ray get-auth-token" in line[0]
    assert seconds < 60


def test_a_stopped_raylet_is_a_clear_error_not_a_hang(cli_cluster, recording, tmp_path):
    """The GCS answers but the raylet of this machine's node does not (stopped for real)."""
    head = psutil.Process(cli_cluster["head"].pid)
    raylet = next(p for p in head.children(recursive=True) if p.name() == "raylet")
    env = _clean_env(RAY_ADDRESS=cli_cluster["address"], RAY_AUTH_TOKEN_PATH=str(cli_cluster["token"]),
                     TIDEFLOW_RAY_START_TIMEOUT_S="4")
    raylet.suspend()
    try:
        proc, seconds = _replay(recording, tmp_path / "out", env, timeout=90)
    finally:
        raylet.resume()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the raylet of this machine's node does not" in proc.stderr
    assert seconds < 20  # the bound (4 s) plus the command's own start


def test_actors_that_cannot_start_are_an_error_within_the_bound(ray_session):
    """`wait_for_actors`, which the Ray runner calls before the first batch: an actor no node
    can place is an error naming it and what it lacks; a failed constructor is Ray's own error."""
    from tideflow.pipelines.runners.ray_session import ActorsNotStarted, wait_for_actors

    class Probe:
        def __init__(self, fail: bool = False) -> None:
            if fail:
                raise ValueError("constructor failed")

    probe = ray_session.remote(num_cpus=0)(Probe)
    fine = probe.options(name="tideflow.joined.test.fine").remote()
    stuck = probe.options(name="tideflow.joined.test.learn.stuck.0",
                          resources={"tideflow_test_no_node_has_this": 1}).remote()
    broken = probe.remote(fail=True)
    try:
        wait_for_actors(ray_session, [fine])  # started: returns
        t = time.monotonic()
        with pytest.raises(ActorsNotStarted) as err:
            wait_for_actors(ray_session, [fine, stuck], timeout_s=2)
        assert time.monotonic() - t < 10
        message = str(err.value)
        assert message.startswith("1 actor(s) of the run did not start within 2 s"), message
        assert "tideflow.joined.test.learn.stuck.0" in message and "test.fine" not in message
        assert "no node has enough tideflow_test_no_node_has_this" in message
        with pytest.raises(ray_session.exceptions.RayActorError, match="constructor failed"):
            wait_for_actors(ray_session, [broken], timeout_s=30)
    finally:
        for actor in (fine, stuck, broken):
            ray_session.kill(actor)
