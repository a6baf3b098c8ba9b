"""A three-node Ray cluster on this machine; the strategy's node is killed mid-stream.

Run by ``test_cluster.py`` in a process of its own (the test session's Ray stays as
it is): ``python tests/pipelines/two_node_job.py RECORDING OUT.json [chained|unfused]``.

The cluster is Ray's own ``ray.cluster_utils.Cluster`` (the processes ``ray start``
starts): a head with 1 CPU and two worker nodes with 1 CPU and the custom resource
``strategy_node`` each, every node on 127.0.0.1, Ray's token authentication on. The
learn step asks for ``resources={"strategy_node": 1}``, so its actor lands on one of
the two workers; when that node is removed (its raylet and workers killed, no
graceful shutdown) the runner must restore the last checkpoint on the other one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

# Ray 2.60 turns a 127.0.0.1 node address into the machine's own (and listens on every
# interface) unless this is 0; set before Ray is imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

BATCHES = 40
ROWS = 100
AT = 25


def _strategy(marker: str, at: int):
    from river import linear_model, preprocessing

    from tideflow.testing import PauseOnce

    # marks the batch at ``at`` and pauses, so the node can be killed at that point
    return PauseOnce(preprocessing.StandardScaler() | linear_model.LinearRegression(), marker=marker, at=at,
                     pause_s=3.0)


def _pipeline(recording: str, marker: str, at: int, resources: dict | None):
    import tideflow as tf
    from tideflow.connectors.recording import RecordingSource

    return (tf.Pipeline("twonode").source(RecordingSource(recording)).validate()
            .detect(tf.DetectDrift(on="x0"))
            .learn(_strategy(marker, at), name="lin", detector="ADWIN", resources=resources))


def _gpu_placement(cluster, recording: str, work: Path, store: int) -> dict:
    """A node that declares one GPU joins; a learn step with ``num_gpus=1`` must run there.

    This machine has no GPU: Ray schedules by declared resources, so the node's GPU is
    a logical one (``ray.get_gpu_ids()`` inside the actor names it; CUDA is not used)."""
    import ray
    from river import linear_model

    import tideflow as tf
    from tideflow.connectors.recording import RecordingSource

    where = work / "gpu-placement.json"

    class WhereAmI(tf.RiverStrategy):
        def learn(self, batch):
            ctx = ray.get_runtime_context()
            where.write_text(json.dumps({"node": ctx.get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()]}))
            return super().learn(batch)

    gpu = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1", object_store_memory=store)
    cluster.wait_for_nodes()
    result = (tf.Pipeline("gpujob").source(RecordingSource(recording)).validate()
              .learn(WhereAmI(linear_model.LinearRegression()), name="lin", num_gpus=1)
              .run(runner="ray", tracking=False, progress=False, ray_address=cluster.address, max_batches=5))
    got = json.loads(where.read_text())
    return {"gpu_node": gpu.node_id, "gpu_actor_node": got["node"], "gpu_actor_gpus": got["gpus"],
            "gpu_job_batches": result.batches}


def main(recording: str, out: str, mode: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from tideflow.pipelines.runners.ray_session import enable_token_auth, ensure_ray
    from tideflow.testing import comparable

    work = Path(out).parent
    marker = str(work / f"reached-{mode}")
    baseline = _pipeline(recording, str(work / "never"), -1, None).run(runner="local", tracking=False,
                                                                       progress=False)
    enable_token_auth()
    store = 150 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "object_store_memory": store})
    doc: dict = {"mode": mode}
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"strategy_node": 1}, node_ip_address="127.0.0.1",
                                    object_store_memory=store) for _ in range(2)]
        cluster.wait_for_nodes()
        ensure_ray(cluster.address)
        doc["nodes"] = len(ray.nodes())
        doc["auth_mode"] = os.environ.get("RAY_AUTH_MODE")
        placed: list[str] = []
        killed: list[str] = []

        def killer() -> None:
            deadline = time.monotonic() + 180
            actor = None
            while actor is None and time.monotonic() < deadline:
                names = [n for n in ray.util.list_named_actors() if n.startswith("tideflow.twonode.")
                         and "learn.lin" in n]
                if names:
                    actor = ray.get_actor(names[0])
                else:
                    time.sleep(0.05)
            if actor is None:
                return
            node_id = ray.get(actor.node.remote())
            placed.append(node_id)
            while not Path(marker).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            for w in workers:
                if w.node_id == node_id:
                    cluster.remove_node(w, allow_graceful=False)
                    killed.append(node_id)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        t = time.perf_counter()
        result = _pipeline(recording, marker, AT, {"strategy_node": 1}).run(
            runner="ray", tracking=False, progress=False, ray_address=cluster.address, checkpoint_every=10,
            max_in_flight=2, ray_fuse_chain=(mode == "chained"))
        doc["seconds"] = time.perf_counter() - t
        thread.join(timeout=10)
        doc.update({
            "placed_on": placed, "killed": killed,
            "worker_nodes": [w.node_id for w in workers],
            "restarts": result.extra["restarts"], "restart_log": result.extra["restart_log"],
            "batches": result.batches, "rows": result.rows,
            "samples_trained": result.summary["lin"]["samples_trained"],
            "mae": result.summary["lin"]["mae"], "baseline_mae": baseline.summary["lin"]["mae"],
            "per_batch_equal": comparable(result.per_batch) == comparable(baseline.per_batch),
            "drift_equal": [(e.step, e.offset) for e in result.drift_events]
            == [(e.step, e.offset) for e in baseline.drift_events],
            "expected_batches": BATCHES, "expected_rows": BATCHES * ROWS,
        })
        if mode == "chained":
            doc.update(_gpu_placement(cluster, recording, work, store))
    finally:
        Path(out).write_text(json.dumps(doc, indent=2, default=str))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "chained")
