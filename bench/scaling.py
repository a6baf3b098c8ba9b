"""Fan-out on the Ray runner: events/s with 1, 2 and 4 strategy actors, and on 1 vs 2 local Ray nodes.

Pipeline (``k`` copies of the same learn step, broadcast: every copy gets every batch)::

    RecordingSource(friedman-drift, batch 1024) -> Validate -> DetectDrift(on="x0")
        -> learn_0 ... learn_{k-1}: RiverStrategy(StandardScaler | LinearRegression)

Each learn step is its own actor, so ``k`` is the number of strategy actors; the
source, validate and detect steps are one actor each (no CPU reserved, as the engine
does). Everything runs on one local ``ray.cluster_utils.Cluster`` whose head has this
machine's CPUs, joined by the engine's own ``ensure_ray(address)`` (the path a
``RAY_ADDRESS`` takes, with the engine's runtime_env). Two parts (``--parts``):

* ``actors``: the head alone, the pipeline with ``k`` = 1, 2, 4 learners (``--actors``).
* ``nodes``: ``--nodes-actors`` (default 4) learners on the head alone (the same run
  as the actors part's, not repeated), then a second node is added
  (``add_node(num_cpus=--second-node-cpus)``, default the head's CPUs) and the same
  pipeline runs again. Ray places the actors itself (the engine's learn steps ask for
  CPUs only, so there is no custom resource to steer them); the node each actor ran
  on is read back from Ray's actor table and shown.

**This machine has 2 cores.** More actors or a second node on the same machine
cannot add compute: 4 learners share the same 2 cores, and the "second node" is
another raylet and object store on them. What the numbers show is the cost of
fan-out: how much of the events/s is lost per added actor (each event is learned
``k`` times, so ``k x events/s`` is the learner work done per second), and what a
second node's extra hops and processes cost. On a machine with more cores, more
actors should hold events/s until the cores run out.

How:

* ``--events`` rows of ``friedman-drift`` (seed 0) are recorded once to a temporary
  Arrow file; every run replays it with ``RecordingSource(path, batch_size)``.
* Starting the cluster's nodes and connecting to it are outside all timings. Starting the
  actors is part of each run: ``ev/s`` is the total (start-up included); **steady
  ev/s** leaves it out: events/s over the batches after the first max(3, 10 %), from
  driver-side completion timestamps of each batch (the engine's ``BatchTimes``
  observer, passed with ``run(observers=[...])``, as in ``runner_overhead.py``).
  ``1st batch s`` is the time to the first batch completed, mostly actor start-up.
* ``vs first``: steady ev/s relative to the part's first row (1 learner; for nodes,
  the head-only run). ``learner ev/s`` = ``k x steady ev/s``.
* Each run is repeated ``--repeats`` times (medians in the table; every repeat in
  the JSON). As a check, the MAE of all learners of a run must be identical (same
  data, same learner); a warning is printed when it is not.
* Security: Ray's token authentication is left as Ray sets it for a new local
  cluster (on unless ``RAY_AUTH_MODE`` says otherwise: ``Cluster`` does not go
  through ``ray.init``, so the script makes the same two calls ``ray.init`` makes
  before it starts a local cluster); the mode in effect is printed and stored. Every node
  is started on 127.0.0.1; Ray 2.60 rewrites a 127.0.0.1 node address to the
  machine's own IP (and then listens on all interfaces) unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which this script sets when it is unset.
* Every Ray instance and cluster started here is shut down at the end, also on error.
  On a busy machine a node's start can time out (Ray's agents miss the raylet's fixed
  start-up window): the head is then tried again (3 tries, the failed attempt's
  processes ended first); a second node that does not start is reported and its row
  left out.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/scaling.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/scaling.py --parts actors --actors 1,2,4,8 --repeats 3

There is no pass/fail; the numbers go to the terminal and to ``--json`` (default
``bench/results/scaling.json``). The machine's load average is printed: other jobs
on the same cores lower every number, the more so as Ray runs its workers at
niceness 15 (its default, kept here so that the engine is measured as it runs), so
they yield to any other job. Single runs on a busy machine vary by tens of percent:
use ``--repeats`` before reading anything into a ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
# keep Ray on the loopback interface (see the docstring); must be set before ray is imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):
    if str(_p) not in sys.path:  # run as a file from anywhere, without installing
        sys.path.insert(0, str(_p))

import tideflow as tf  # noqa: E402
from tideflow.connectors.recording import RecordingSource, record  # noqa: E402
from tideflow.pipelines.metrics.batch_times import BatchTimes  # noqa: E402

from _common import _fmt_eps, _loadavg, _median, machine_info, retry_ray_start, write_json  # noqa: E402

STREAM = "friedman-drift"
SEED = 0
LOCALHOST = "127.0.0.1"


def make_pipeline(path: Path, batch_size: int, learners: int) -> tf.Pipeline:
    """A fresh pipeline with ``learners`` copies of the same learn step (one actor each)."""
    from river import linear_model, preprocessing

    p = (tf.Pipeline(f"scaling-{learners}")
         .source(RecordingSource(path, batch_size=batch_size))
         .validate()
         .detect(tf.DetectDrift(on="x0")))
    for i in range(learners):
        p.learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()),
                name=f"learn_{i}")
    return p


def placement(ray: Any, since_ms: float, node_names: dict[str, str]) -> dict[str, Any]:
    """Where the actors started since ``since_ms`` ran: per class, counts per node name."""
    try:
        table = ray._private.state.actors()
    except Exception as e:  # noqa: BLE001 - placement is informative only
        return {"error": repr(e)}
    out: dict[str, dict[str, int]] = {}
    for a in table.values():
        if (a.get("StartTime") or 0) < since_ms:
            continue
        node = (a.get("Address") or {}).get("NodeID")
        where = node_names.get(node, (node or "?")[:8])
        cls = a.get("ActorClassName", "?")
        out.setdefault(cls, {})
        out[cls][where] = out[cls].get(where, 0) + 1
    return out


def _fmt_placement(p: dict[str, Any]) -> str:
    if "error" in p:
        return "?"
    learners = p.get("LearnerActor", {})
    others: dict[str, int] = {}
    for cls, nodes in p.items():
        if cls != "LearnerActor":
            for n, c in nodes.items():
                others[n] = others.get(n, 0) + c
    fmt = lambda d: " ".join(f"{n}:{c}" for n, c in sorted(d.items())) or "-"  # noqa: E731
    if not learners:  # one learner: the Ray runner chains it into the source actor
        return f"learner chained into the source actor {fmt(others)}"
    return f"learners {fmt(learners)}; data path {fmt(others)}"


def one_run(ray: Any, path: Path, *, batch_size: int, learners: int, out: Path, max_in_flight: int,
            address: str | None, node_names: dict[str, str]) -> dict[str, Any]:
    pipeline = make_pipeline(path, batch_size, learners)
    since_ms = time.time() * 1000 - 1
    times = BatchTimes()
    result = pipeline.run(runner="ray", tracking=False, progress=False, output_dir=out,
                          max_in_flight=max_in_flight, ray_address=address, observers=[times])
    bt = result.metrics[times.name]
    steady = bt["steady_eps"]
    maes = [s.get("mae") for s in result.summary.values()]
    errors = sum(s.get("errors", 0) for s in result.summary.values())
    time.sleep(1.0)  # let the killed actors' processes exit before the next timing
    return {
        "learners": learners, "rows": result.rows, "batches": result.batches, "seconds": result.seconds,
        "eps": result.events_per_second, "steady_eps": steady,
        "learner_steady_eps": steady * learners if steady is not None else None,
        "first_batch_s": bt["first_batch_s"],
        "mae": maes[0] if maes else None,
        "mae_identical": bool(maes) and all(m is not None and abs(m - maes[0]) <= 1e-9 * max(1.0, abs(maes[0]))
                                            for m in maes),
        "strategy_errors": errors,
        "placement": placement(ray, since_ms, node_names),
    }


def summarise(part: str, label: str, nodes: int, reps: list[dict[str, Any]]) -> dict[str, Any]:
    row = {"part": part, "config": label, "nodes": nodes, "learners": reps[0]["learners"],
           "rows": reps[0]["rows"], "batches": reps[0]["batches"], "repeats": reps}
    for k in ("eps", "steady_eps", "learner_steady_eps", "first_batch_s", "seconds"):
        row[k] = _median([r[k] for r in reps])
    row["mae_identical"] = all(r["mae_identical"] for r in reps)
    row["placement"] = reps[-1]["placement"]
    return row


def auth_mode() -> str | None:
    try:
        from ray._private.authentication.authentication_utils import get_authentication_mode_name
        from ray._raylet import get_authentication_mode

        return get_authentication_mode_name(get_authentication_mode())
    except Exception:  # noqa: BLE001 - an older Ray without token authentication
        return None


def token_auth_as_ray_init() -> None:
    """What ``ray.init`` does before it starts a new local cluster: token mode on unless
    ``RAY_AUTH_MODE`` says otherwise, and a token created if there is none. ``Cluster``
    starts its nodes without going through ``ray.init``, so without this its nodes
    would run without authentication."""
    try:
        from ray._private.authentication.authentication_token_setup import (enable_token_auth_by_default,
                                                                             ensure_token_if_auth_enabled)
    except ImportError:  # a Ray without token authentication
        return
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def start_cluster(console: Any, head_args: dict[str, Any], attempts: int = 3) -> Any:
    """A ``Cluster`` with its head, retried on a start-up time-out (`_common.retry_ray_start`)."""
    from ray.cluster_utils import Cluster

    return retry_ray_start(lambda: Cluster(initialize_head=True, head_node_args=head_args), console,
                           "the cluster head", attempts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000,
                    help="events recorded and replayed per run (default 100000)")
    ap.add_argument("--batch-size", type=int, default=1024, help="rows per batch (default 1024)")
    ap.add_argument("--actors", default="1,2,4", help="learn steps (actors) per run in the actors part (default 1,2,4)")
    ap.add_argument("--nodes-actors", type=int, default=4, help="learn steps in the nodes part (default 4)")
    ap.add_argument("--head-cpus", type=int, default=None, help="CPUs of the cluster's head (default: this machine's)")
    ap.add_argument("--second-node-cpus", type=int, default=None,
                    help="CPUs of the added node (default: the head's)")
    ap.add_argument("--node-object-store-mb", type=int, default=256,
                    help="object store per cluster node, MiB (default 256)")
    ap.add_argument("--parts", default="actors,nodes", help="subset of actors,nodes (default both)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats per run; medians are shown (default 1)")
    ap.add_argument("--max-in-flight", type=int, default=4, help="Ray runner backpressure (run_graph default 4)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "scaling.json"),
                    help="where to write the results (default bench/results/scaling.json)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    actors = [int(a) for a in args.actors.split(",") if a.strip()]
    if not parts or any(p not in ("actors", "nodes") for p in parts):
        ap.error("--parts takes actors, nodes")
    if (args.events < 1 or args.batch_size < 1 or args.repeats < 1 or args.nodes_actors < 1 or not actors
            or min(actors) < 1):
        ap.error("--events, --batch-size, --repeats, --nodes-actors and --actors must be >= 1")

    import ray
    from rich.console import Console
    from rich.table import Table

    from tideflow.pipelines.runners.ray_session import ensure_ray

    console = Console() if sys.stdout.isatty() else Console(width=170)
    wall0 = time.perf_counter()
    info = machine_info()
    cpus = info["cpu_affinity"] or info["cpu_count"] or 1
    head_cpus = args.head_cpus or cpus
    second_cpus = args.second_node_cpus or head_cpus
    console.print(f"[bold]scaling[/]: {STREAM} seed={SEED}, {args.events:,} events, batch {args.batch_size}, "
                  f"parts {parts}, {cpus} CPUs, ray {info['ray']}, load average {info['loadavg_at_start']}")
    if cpus < max(actors + [args.nodes_actors]):
        console.print(f"[yellow]only {cpus} CPUs: more learners than cores share them; the numbers show fan-out "
                      "overhead, not speed-up")

    rows: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    cluster = None
    run_no = 0
    # learner counts run on the head alone: the actors part, plus the nodes part's 1-node baseline
    head_runs = list(actors) if "actors" in parts else []
    if "nodes" in parts and args.nodes_actors not in head_runs:
        head_runs.append(args.nodes_actors)
    try:
        with tempfile.TemporaryDirectory(prefix="tideflow-bench-scaling-") as tmp:
            tmpdir = Path(tmp)
            path = tmpdir / "stream.arrows"
            rec = record(tf.SyntheticSource(STREAM, n=args.events, batch_size=4096, seed=SEED), path, progress=False)
            console.print(f"recorded {rec['rows']:,} events")

            token_auth_as_ray_init()
            store = args.node_object_store_mb * 1024 * 1024
            t = time.perf_counter()
            cluster = start_cluster(console, {"num_cpus": head_cpus, "node_ip_address": LOCALHOST,
                                              "include_dashboard": False, "object_store_memory": store})
            ensure_ray(cluster.address)  # joins it the engine's way (as with RAY_ADDRESS), with its runtime_env
            setup["cluster_head_s"] = time.perf_counter() - t
            setup["auth_mode"] = auth_mode()
            names = {cluster.head_node.node_id: "head"}
            console.print(f"cluster head (excluded from timings): {setup['cluster_head_s']:.1f} s at "
                          f"{cluster.address}, {head_cpus} CPUs, token authentication: {setup['auth_mode']}")

            def measure(k: int, n_nodes: int) -> dict[str, Any]:
                nonlocal run_no
                reps = []
                for _ in range(args.repeats):
                    run_no += 1
                    r = one_run(ray, path, batch_size=args.batch_size, learners=k, out=tmpdir / f"run{run_no}",
                                max_in_flight=args.max_in_flight, address=cluster.address, node_names=names)
                    reps.append(r)
                    console.print(f"  {n_nodes} node(s), {k} learner(s): {_fmt_eps(r['eps'])} ev/s total, steady "
                                  f"{_fmt_eps(r['steady_eps'])}, first batch after {r['first_batch_s'] or 0:.1f} s; "
                                  f"{_fmt_placement(r['placement'])}")
                label = f"{n_nodes} node{'s' if n_nodes > 1 else ''}, {k} learner{'s' if k > 1 else ''}"
                return summarise("", label, n_nodes, reps)

            head_rows = {k: measure(k, 1) for k in head_runs}
            if "actors" in parts:
                rows += [dict(head_rows[k], part="actors") for k in actors]
            if "nodes" in parts:
                t = time.perf_counter()
                rows.append(dict(head_rows[args.nodes_actors], part="nodes"))
                try:
                    node2 = cluster.add_node(num_cpus=second_cpus, node_ip_address=LOCALHOST,
                                             include_dashboard=False, object_store_memory=store)
                    cluster.wait_for_nodes()
                except Exception as e:  # noqa: BLE001 - report it and keep the rows measured so far
                    node2 = None
                    setup["second_node_error"] = repr(e)
                    console.print(f"[red]the second node did not start: {e!r}; no 2-node row")
                if node2 is not None:
                    want = head_cpus + second_cpus
                    while ray.cluster_resources().get("CPU", 0) < want and time.perf_counter() - t < 60:
                        time.sleep(0.2)
                    setup["second_node_s"] = time.perf_counter() - t
                    names[node2.node_id] = "node2"
                    console.print(f"second node (excluded from timings): {setup['second_node_s']:.1f} s, "
                                  f"{second_cpus} CPUs; cluster CPUs {ray.cluster_resources().get('CPU')}")
                    rows.append(dict(measure(args.nodes_actors, 2), part="nodes"))
            setup["cluster_nodes"] = [{"node_id": n["NodeID"], "name": names.get(n["NodeID"]),
                                       "address": n.get("NodeManagerAddress"), "alive": n.get("Alive"),
                                       "cpus": n.get("Resources", {}).get("CPU")} for n in ray.nodes()]
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    total_s = time.perf_counter() - wall0

    for part in ("actors", "nodes"):
        base = next((r for r in rows if r["part"] == part), None)
        for r in rows:
            if r["part"] == part:
                r["steady_vs_first"] = (r["steady_eps"] / base["steady_eps"]
                                        if base and base["steady_eps"] and r["steady_eps"] else None)

    table = Table(title=f"events/s on the Ray runner, {STREAM} batch {args.batch_size} -> validate -> detect -> "
                        f"k x River StandardScaler|LinearRegression (median of {args.repeats})")
    for col in ("part", "config", "events", "ev/s", "steady ev/s", "vs first", "learner ev/s", "1st batch s",
                "MAE same", "where actors ran"):
        table.add_column(col, justify="left" if col in ("part", "config", "where actors ran") else "right")
    for r in rows:
        table.add_row(r["part"], r["config"], f"{r['rows']:,}", _fmt_eps(r["eps"]), _fmt_eps(r["steady_eps"]),
                      "-" if r["steady_vs_first"] is None else f"{r['steady_vs_first']:.2f}",
                      _fmt_eps(r["learner_steady_eps"]),
                      "-" if r["first_batch_s"] is None else f"{r['first_batch_s']:.1f}",
                      "yes" if r["mae_identical"] else "NO", _fmt_placement(r["placement"]))
    console.print(table)
    console.print(f"{cpus} CPUs: learners beyond the cores share them, so this is fan-out overhead, not speed-up. "
                  "ev/s includes actor start-up; steady skips the first max(3, 10%) batches; 'vs first' = steady "
                  "relative to the part's first row; learner ev/s = k x steady.")
    for r in rows:
        if not r["mae_identical"]:
            console.print(f"[yellow]{r['config']}: the learners' MAE differ")
    info["loadavg_at_end"] = _loadavg()
    console.print(f"total wall time {total_s:.1f} s; load average at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']} (other processes on the machine skew the numbers)")

    doc = {
        "benchmark": "scaling",
        "description": "events/s of one pipeline on the Ray runner with 1/2/4 broadcast learn steps (one actor "
                       "each), and with 1 vs 2 local Ray nodes; on 2 cores this measures fan-out overhead",
        "protocol": {
            "stream": STREAM, "seed": SEED, "events": args.events, "batch_size": args.batch_size,
            "actors": actors, "nodes_actors": args.nodes_actors, "head_cpus": head_cpus,
            "second_node_cpus": second_cpus, "node_object_store_mb": args.node_object_store_mb,
            "parts": parts, "repeats": args.repeats, "statistic": "median", "max_in_flight": args.max_in_flight,
            "learner": "RiverStrategy(StandardScaler | LinearRegression), one actor per learn step",
            "steady_state": "events/s over batches after the first max(3, ceil(10%)), from driver-side per-batch "
                            "completion timestamps (tideflow.pipelines.metrics.batch_times: BatchTimes, "
                            "steady_state)",
            "eps": "total: rows / RunResult.seconds, actor start-up included; ray.init and node start excluded",
            "placement": "ray._private.state.actors(): node of each actor started during the run",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
        },
        "machine": info,
        "setup": setup,
        "total_seconds": total_s,
        "rows": rows,
    }
    out = write_json(doc, args.json)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
