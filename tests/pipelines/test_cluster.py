"""Three Ray nodes on this machine; the strategy's node is killed mid-stream.

The cluster runs in a process of its own (``two_node_job.py``), so the test
session's Ray is left alone. The job must finish with the metrics of an
uninterrupted run on the same recording and learn every batch exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tideflow as tf
from tideflow.connectors.recording import record

HERE = Path(__file__).parent


@pytest.mark.parametrize("mode", ["chained", "unfused"])
def test_strategy_node_killed_mid_stream(tmp_path, mode):
    rec = tmp_path / "friedman.arrows"
    record(tf.SyntheticSource("friedman-drift", n=4000, batch_size=100, seed=11), rec, progress=False)
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(HERE / "two_node_job.py"), str(rec), str(out), mode],
                          env=env, capture_output=True, text=True, timeout=420)
    assert out.exists(), f"no result; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())
    assert proc.returncode == 0, f"{doc}\n{proc.stderr[-6000:]}"
    assert doc["nodes"] == 3
    # the strategy ran on a worker node, and that node was killed mid-stream
    assert doc["placed_on"] and doc["placed_on"][0] in doc["worker_nodes"]
    assert doc["killed"] == doc["placed_on"][:1]
    # Ray learns of the lost node asynchronously: a restart can land on it once more
    assert 1 <= doc["restarts"] <= 3, doc["restart_log"]
    assert doc["batches"] == doc["expected_batches"] and doc["rows"] == doc["expected_rows"]
    assert doc["samples_trained"] == doc["expected_rows"]  # every batch learned once
    assert doc["per_batch_equal"] and doc["drift_equal"]
    assert doc["mae"] == doc["baseline_mae"]
    if mode == "chained":
        # a learn step that asks for a GPU runs on the node that has one (a logical GPU here)
        assert doc["gpu_job_batches"] == 5
        assert doc["gpu_actor_node"] == doc["gpu_node"] and doc["gpu_actor_gpus"] == ["0"]


def test_tideflow_submit_runs_a_pipeline_as_a_ray_job(tmp_path):
    out = tmp_path / "submit.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(HERE / "submit_job.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=420)
    assert out.exists(), f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())
    assert doc["returncode"] == 0, doc
    assert "SUCCEEDED" in doc["stdout"]
    # the job itself ran the pipeline on the cluster (RAY_ADDRESS) and wrote its summary
    assert doc["summary"]["runner"] == "ray" and doc["summary"]["batches"] == 6
