"""A Ray head with its job server on 127.0.0.1; `tideflow submit` runs a pipeline on it.

Run by ``test_cluster.py`` in a process of its own: ``python submit_job.py OUT.json``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: str) -> None:
    from ray.cluster_utils import Cluster

    from tideflow.pipelines.runners.ray_session import enable_token_auth

    enable_token_auth()
    port = _free_port()
    # every port of its own: the test session's Ray (if any) holds Ray's default agent
    # ports, and a head whose dashboard agent cannot bind answers "No available agent"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port, "object_store_memory": 150 * 1024 * 1024,
        "dashboard_agent_listen_port": _free_port(), "runtime_env_agent_port": _free_port(),
        "metrics_export_port": _free_port()})
    doc: dict = {}
    try:
        work = Path(out).parent
        cmd = [sys.executable, "-m", "tideflow.cli", "submit", "--address", f"http://127.0.0.1:{port}",
               "--python", sys.executable, "--timeout", "240", "--",
               "run", "drift", "--runner", "ray", "--max-batches", "6", "--no-progress",
               "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--json", str(work / "summary.json")]
        env = dict(os.environ, RAY_ADDRESS=cluster.address)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=work)
        doc = {"returncode": proc.returncode, "stdout": proc.stdout[-6000:], "stderr": proc.stderr[-4000:],
               "summary": json.loads((work / "summary.json").read_text()) if (work / "summary.json").exists()
               else None}
    finally:
        Path(out).write_text(json.dumps(doc, indent=2, default=str))
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
