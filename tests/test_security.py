"""Security defaults: a local Ray listens on loopback only; checkpoints load without pickle."""

from __future__ import annotations

import io
import os

import psutil
import pytest
import torch

from tideflow.pipelines.checkpoint import CheckpointMismatch, CheckpointStore

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _ray_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        text = " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
        if any(k in text for k in ("raylet", "gcs_server", "ray::", "ray/dashboard", "ray/_private")):
            out.append(p)
    return out


def test_local_ray_listens_on_loopback_only(ray_session):
    @ray_session.remote
    def touch():
        return os.getpid()

    ray_session.get(touch.remote())  # a worker is up too
    pids = {p.pid for p in _ray_processes()}
    assert pids, "no Ray process found"
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "Ray listens on no port?"
    exposed = sorted({(c.laddr.ip, c.laddr.port) for c in listening if c.laddr.ip not in LOOPBACK})
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    assert ray_session.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but a pickle of it runs a function on load


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from tideflow.stream.state import unseal  # what an actor's restore calls

    store = CheckpointStore(tmp_path, fingerprint="f")
    store.save({"seq": 3, "actors": {}, "collector": {}})
    good = store.files()[-1]
    # a pickle under a checkpoint's name: not JSON, refused before anything is unpickled
    buf = io.BytesIO()
    torch.save({"format": "tideflow-checkpoint", "version": 3, "fingerprint": "f", "seq": 4,
                "state": _Payload()}, buf)
    bad = tmp_path / "ckpt-000000000004.json"
    bad.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointMismatch, match="not a tideflow checkpoint"):
        store.load()  # the newest file is the bad one
    assert store.load(good)["seq"] == 3
    bad.unlink()
    # a valid checkpoint whose sealed learner snapshot carries a pickled object: the file loads
    # (it is JSON), and the actor's unseal refuses the payload (torch.load(weights_only=True))
    store.save({"seq": 5, "actors": {"learners": {"lin": [{"__sealed__": buf.getvalue()}]}}, "collector": {}})
    sealed = store.load()["actors"]["learners"]["lin"][0]
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|not allowed"):
        unseal(sealed)
