"""The Ray runner: actors for the source, the data path and every learner; batches by reference.

By default the data path (validation, detectors, reducers) runs inside the source
actor (``fuse_chain=True``): it reads a batch, passes it through the chain, and
``ray.put``s the result once; the driver then submits one call per learn actor
per batch. When the graph's only learner is a single actor, it is chained into
the source actor too (as Flink chains operators of equal parallelism), and no
batch leaves that process. With ``fuse_chain=False`` every data-path step gets its own actor and
the driver chains one call per step: more pipelining across cores when the
data path is heavy, at the price of one object-store round trip and one actor
call per step per batch (on 2 cores that cost the runner 0.64 of the local
runner's steady throughput at batch 1024; fused, see bench/runner_overhead.py).

Ray runs calls from one caller to one actor in submission order, so every actor
sees the batches in stream order while different actors work on different
batches at once (pipelining). The driver asks the source for the next group of
batches before it waits on the current one (prefetch). At most
``max_in_flight`` batches are submitted to learners and not yet finished; the
driver waits for the oldest before submitting more, which is the backpressure
that keeps memory and the object store bounded when a strategy is slow.

A keyed learn step gets ``actors`` actors; each sees every batch and keeps only
its share of the keys (stable hash), so no batch is copied per key on the way.

``ray.init`` is called only when no Ray is running in this process; with an
address (argument or ``RAY_ADDRESS``) it joins that cluster, otherwise it
starts a local one bound to 127.0.0.1 with its dashboard off. Ray's token
authentication is left as Ray sets it (on by default for local clusters).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from typing import Any

from tideflow.pipelines.evaluation import Learner, LearnResult
from tideflow.pipelines.graph import Graph
from tideflow.stream.batch import Batch
from tideflow.stream.operator import SideOutput
from tideflow.stream.state import seal, unseal


def loopback_only() -> None:
    """Keep a Ray started from this process on 127.0.0.1.

    Ray 2.60 takes ``_node_ip_address="127.0.0.1"`` but then registers the node under the
    machine's own address and its GCS, raylet and workers listen on every interface,
    unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the switch Ray uses on laptops). The
    variable is read when Ray is imported, so it is set here for the processes Ray
    starts, and Ray's constant is set too in case Ray was imported already.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None:
        consts.ENABLE_RAY_CLUSTER = False


def enable_token_auth() -> None:
    """What ``ray.init`` does before it starts a local cluster, for ``ray.cluster_utils.Cluster``
    (which does not): token authentication on unless ``RAY_AUTH_MODE`` says otherwise, and a
    token created when there is none."""
    from ray._private.authentication.authentication_token_setup import (enable_token_auth_by_default,
                                                                         ensure_token_if_auth_enabled)

    loopback_only()
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def ensure_ray(address: str | None = None) -> Any:
    """Connect to Ray: reuse a running session, join ``address``/``RAY_ADDRESS``, or start locally.

    A local start listens on 127.0.0.1 only (`loopback_only`), with the dashboard off and
    Ray's token authentication as Ray sets it (on).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        loopback_only()
    import ray

    if ray.is_initialized():
        return ray
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # inside a Ray Job (tideflow submit) the job's runtime_env and ours are merged, ours
    # winning where both set a variable (Ray refuses the overlap otherwise)
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(
            include_dashboard=False,
            runtime_env={"env_vars": env},
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            configure_logging=False,
        )
    return ray


class _Envelope:
    """A batch on its way through the data path, with the drift events raised so far."""

    __slots__ = ("seq", "batch", "events")

    def __init__(self, seq: int, batch: Batch | None, events: list[Any]) -> None:
        self.seq = seq
        self.batch = batch
        self.events = events

    def __reduce__(self) -> Any:
        return (_Envelope, (self.seq, self.batch, self.events))


def _threads(num_cpus: float | None) -> None:
    # On 2 cores, torch's default thread pool per actor oversubscribes the CPU
    # 10-27x; workers start with OMP_NUM_THREADS=1 (runtime_env) and this sets
    # torch's pool to the actor's CPU share. Torch is not imported just for this:
    # an actor that never uses it should not pay its ~500 MB.
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(num_cpus or 1)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, int(num_cpus or 1)))


def _run_chain(ops: list[Any], batch: Batch | None, events: list[Any]) -> tuple[Batch | None, list[Any], SideOutput]:
    """One batch through data-path operators in order; every operator drains even when the batch is gone."""
    side = SideOutput()
    for op in ops:
        if batch is not None and len(batch):
            batch = op.process(batch)
        part = op.drain()
        events = events + part.drift_events
        side.extend(part)
    return batch, events, side


class SourceActor:
    """Reads the source; fused, also runs the data path, and chained, the one learner too.

    ``chain``: data-path operators to run on each batch here (fused mode).
    ``learners``: learners to step here (chained mode: Flink's operator chaining, for a
    graph whose only learner is one actor: no batch crosses a process boundary).
    ``put``: whether the processed batch goes to the object store (for learner actors
    and sinks; a fully chained graph without sinks needs no copy).
    """

    def __init__(self, source: Any, max_batches: int | None, chain: list[Any] | None = None,
                 learners: dict[str, Learner] | None = None, put: bool = True,
                 num_cpus: float | None = 1) -> None:
        _threads(num_cpus)
        self.source = source
        self.chain = chain or []
        self.learners = learners or {}
        self.put = put
        self.max_batches = max_batches
        self.it = source.batches()
        self.seq = 0

    def next_refs(self, k: int) -> list[tuple[int, int, Any, SideOutput | None, dict[str, LearnResult]]]:
        """Up to ``k`` next batches: ``(seq, rows read, envelope ref or None, side or None, results)``."""
        import ray

        out = []
        for _ in range(k):
            if self.max_batches is not None and self.seq >= self.max_batches:
                break
            batch = next(self.it, None)
            if batch is None:
                break
            rows = len(batch)
            side = None
            events: list[Any] = []
            if self.chain:
                batch, events, side = _run_chain(self.chain, batch, events)
            results = {name: learner.step(self.seq, batch, events) for name, learner in self.learners.items()}
            ref = ray.put(_Envelope(self.seq, batch, events)) if self.put else None
            out.append((self.seq, rows, ref, side, results))
            self.seq += 1
        return out

    def finish(self) -> dict[str, LearnResult]:
        return {name: learner.finish() for name, learner in self.learners.items()}

    def snapshot(self) -> dict[str, Any] | None:
        """State after the last batch handed out: source position, data path, chained learners
        (None when the source cannot tell its position: no checkpoints for that run). Sealed
        (`tideflow.stream.state.seal`), beside the source's own state, which the driver hands
        back to `commit` once the checkpoint is durable."""
        try:
            source_state = self.source.snapshot()
        except NotImplementedError:
            return None
        return {"source": source_state, "sealed": seal({
            "seq": self.seq, "source": source_state,
            "chain": [op.snapshot() for op in self.chain],
            "learners": {name: learner.snapshot() for name, learner in self.learners.items()}})}

    def restore(self, sealed: dict[str, Any]) -> None:
        state = unseal(sealed["sealed"])
        self.seq = int(state["seq"])
        self.source.restore(state["source"])
        self.it = self.source.batches()
        for op, st in zip(self.chain, state["chain"]):
            op.restore(st)
        for name, st in state["learners"].items():
            self.learners[name].restore(st)

    def commit(self, state: dict[str, Any] | None = None) -> None:
        """Tell the source that everything before ``state`` (default: all handed out) is durable."""
        from tideflow.connectors.base import Source

        if isinstance(self.source, Source) and type(self.source).commit is Source.commit:
            return  # nothing to acknowledge (and the source may not know its position)
        self.source.commit(state if state is not None else self.source.snapshot())

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class ChainActor:
    def __init__(self, op: Any) -> None:
        _threads(1)
        self.op = op

    def process(self, env: _Envelope) -> tuple[_Envelope, SideOutput]:
        batch, events, side = _run_chain([self.op], env.batch, env.events)
        return _Envelope(env.seq, batch, events), side

    def snapshot(self) -> dict[str, Any]:
        return seal(self.op.snapshot())

    def restore(self, state: dict[str, Any]) -> None:
        self.op.restore(unseal(state))


class LearnerActor:
    def __init__(self, learner: Learner, num_cpus: float | None) -> None:
        _threads(num_cpus)
        self.learner = learner

    def step(self, env: _Envelope) -> LearnResult:
        return self.learner.step(env.seq, env.batch, env.events)

    def finish(self) -> LearnResult:
        return self.learner.finish()

    def snapshot(self) -> dict[str, Any]:
        return seal(self.learner.snapshot())

    def restore(self, state: dict[str, Any]) -> None:
        self.learner.restore(unseal(state))

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _learner_cpus(graph: Graph, ray: Any) -> dict[str, float]:
    """CPUs per learner actor: the step's own, or 1, scaled down to fit the cluster."""
    actors = {s.name: (s.route.actors if s.route else 1) for s in graph.learners}
    wanted = {s.name: (s.num_cpus if s.num_cpus is not None else 1.0) for s in graph.learners}
    total_cpus = ray.cluster_resources().get("CPU", 1.0)
    need = sum(wanted[n] * actors[n] for n in wanted)
    auto = [s.name for s in graph.learners if s.num_cpus is None]
    if need > total_cpus and auto:
        fixed = sum(wanted[n] * actors[n] for n in wanted if n not in auto)
        share = max(0.01, (total_cpus - fixed) / sum(actors[n] for n in auto))
        for n in auto:
            # round down: 3 x 0.67 would not fit on 2 CPUs and the last actor would never start
            wanted[n] = math.floor(min(1.0, share) * 100) / 100
    return wanted


class _Actors:
    """The actors of one attempt at running the graph; `start` makes fresh ones."""

    def __init__(self, ray: Any, graph: Graph, schema: Any, *, label_delay: int, max_batches: int | None,
                 keep_predictions: bool, fuse_chain: bool) -> None:
        import uuid

        from tideflow.pipelines.run import make_learner

        # named, so that operators (and the fault tests) can find an actor: tideflow.<pipeline>.<id>.<role>
        prefix = f"tideflow.{graph.name}.{uuid.uuid4().hex[:8]}"
        self.prefix = prefix

        ops = [s.op for s in graph.chain]
        cpus = _learner_cpus(graph, ray)
        self.sinks = bool(graph.sinks)
        # chaining: a graph whose only learner is one actor runs whole in the source actor
        # (no process boundary per batch: on 2 cores two busy processes get ~1.2x, not 2x,
        # the throughput of one, measured, so a hop costs more than it overlaps)
        solo = graph.learners[0] if len(graph.learners) == 1 else None
        self.chained = fuse_chain and solo is not None and (solo.route.actors if solo.route else 1) == 1
        if self.chained:
            assert solo is not None
            learner = make_learner(graph, solo.name, schema, label_delay=label_delay, shard=(0, 1),
                                   strategy=solo.op, keep_predictions=keep_predictions)
            self.source = ray.remote(num_cpus=cpus[solo.name], num_gpus=solo.num_gpus, **_placement(solo))(
                SourceActor).options(name=f"{prefix}.source+learn.{solo.name}").remote(graph.source.op, max_batches, ops, {solo.name: learner}, self.sinks,
                                    cpus[solo.name])
        else:
            # data-path actors are light (validation, detectors): they take no CPU slot so
            # that the learners, which do the work, get the cores
            self.source = ray.remote(num_cpus=0)(SourceActor).options(name=f"{prefix}.source").remote(
                graph.source.op, max_batches, ops if fuse_chain else None)
        self.chain = [] if fuse_chain else [
            ray.remote(num_cpus=0)(ChainActor).options(name=f"{prefix}.chain.{s.name}").remote(s.op)
            for s in graph.chain]
        self.learners: dict[str, list[Any]] = {}
        for s in ([] if self.chained else graph.learners):
            n = s.route.actors if s.route else 1
            cls = ray.remote(num_cpus=cpus[s.name], num_gpus=s.num_gpus, **_placement(s))(LearnerActor)
            self.learners[s.name] = [
                cls.options(name=f"{prefix}.learn.{s.name}.{i}").remote(
                    make_learner(graph, s.name, schema, label_delay=label_delay, shard=(i, n),
                                        strategy=s.op, keep_predictions=keep_predictions), cpus[s.name])
                for i in range(n)
            ]

    def all(self) -> list[Any]:
        return [self.source, *self.chain, *(a for actors in self.learners.values() for a in actors)]

    def snapshot_refs(self) -> dict[str, Any]:
        """Snapshot calls to the chain and learner actors (the source's is taken separately)."""
        return {"chain": [a.snapshot.remote() for a in self.chain],
                "learners": {name: [a.snapshot.remote() for a in actors] for name, actors in self.learners.items()}}

    def restore(self, ray: Any, state: dict[str, Any]) -> None:
        calls = [self.source.restore.remote(state["source"])]
        calls += [a.restore.remote(st) for a, st in zip(self.chain, state["chain"])]
        for name, actors in self.learners.items():
            calls += [a.restore.remote(st) for a, st in zip(actors, state["learners"][name])]
        ray.get(calls)

    def kill(self, ray: Any) -> None:
        for actor in self.all():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass


def _placement(step: Any) -> dict[str, Any]:
    """Extra actor options of a learn step: custom Ray resources (``resources={"gpu_node": 1}``)."""
    res = getattr(step, "resources", None)
    return {"resources": dict(res)} if res else {}


def _is_fault(exc: BaseException) -> bool:
    """A lost actor, node or object (recoverable), as opposed to an error raised by our own code."""
    import ray.exceptions as rex

    if not isinstance(exc, rex.RayError) or isinstance(exc, rex.RayTaskError):
        return False
    # an actor whose constructor fails (an unimportable class, a bad argument) fails again
    return "error raised in its creation task" not in str(exc)


def run_on_ray(graph: Graph, schema: Any, collector: Any, *, label_delay: int, max_batches: int | None,
               max_in_flight: int = 4, address: str | None = None, keep_predictions: bool = False,
               fuse_chain: bool = True, checkpoint_every: int = 100, max_restarts: int = 3,
               checkpoints: Any = None, resume: bool = False, checkpoint_every_s: float | None = None) -> None:
    """Run ``graph`` on Ray; on a lost actor or node, restore the last checkpoint and go on.

    Every ``checkpoint_every`` batches (0: never; a failure then restarts from the first
    batch), and every ``checkpoint_every_s`` seconds when given (whichever comes first),
    every actor snapshots its state at the same batch boundary; the barrier is the
    call order itself: Ray runs one caller's calls to an actor in submission order, so a
    ``snapshot()`` submitted right after batch k's calls sees exactly batches <= k. When
    batch k has also reached the collector, the checkpoint is complete (and handed to
    ``checkpoints.save`` when given). On a fault (an actor or node lost: Ray's errors other
    than a task's own exception) every actor is replaced by a fresh one restored from the
    checkpoint, the source seeks back, the collector rolls back, and the batches after the
    checkpoint are processed again; their MLflow points, quarantine rows and sink writes,
    already emitted, are not emitted twice. At most ``max_restarts`` times per run.
    With ``resume``, the run starts from ``checkpoints.load()`` (a run that died).
    """
    ray = ensure_ray(address)
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be >= 1")
    if checkpoint_every < 0 or max_restarts < 0:
        raise ValueError("checkpoint_every and max_restarts must be >= 0")
    if checkpoint_every_s is not None and checkpoint_every_s <= 0:
        raise ValueError("checkpoint_every_s must be > 0 (or None)")
    options = dict(label_delay=label_delay, max_batches=max_batches, keep_predictions=keep_predictions,
                   fuse_chain=fuse_chain)
    start = checkpoints.load() if checkpoints is not None and resume else None
    if start is not None:
        checkpoints.truncate_history(start["seq"])
        collector.load_history(start["history"])
        collector.rollback(start["collector"])
    initial = collector.checkpoint() if start is None else start["collector"]
    last = start
    saved = start["collector"]["lengths"] if start is not None else None  # history on disk so far
    restarts = 0
    while True:
        actors = _Actors(ray, graph, schema, **options)
        try:
            if last is not None:
                actors.restore(ray, last["actors"])
            for ckpt in _drive(ray, actors, collector, max_in_flight=max_in_flight,
                               checkpoint_every=checkpoint_every, checkpoint_every_s=checkpoint_every_s,
                               after=last["seq"] if last else -1):
                last = ckpt
                collector.commit(ckpt["seq"])
                if checkpoints is not None:
                    lengths = ckpt["collector"]["lengths"]
                    checkpoints.save(ckpt, history=collector.history(saved, lengths))
                    saved = lengths
                    if not checkpoints.durable:
                        # a copy (the MLflow run's) did not take it: acknowledging now could let
                        # a resume from that copy miss messages the broker no longer redelivers
                        continue
                # durable now: a broker source may acknowledge what came before it
                actors.source.commit.remote(ckpt["actors"]["source"]["source"])
            return
        except Exception as exc:
            if not _is_fault(exc) or restarts >= max_restarts:
                raise
            restarts += 1
            where = f"the checkpoint after batch {last['seq']}" if last else "the first batch"
            print(f"tideflow: {type(exc).__name__} ({str(exc).splitlines()[0][:200]}); restart "
                  f"{restarts}/{max_restarts} from {where}", file=sys.stderr, flush=True)
            collector.rollback(last["collector"] if last else initial)
            collector.restarts = restarts
            collector.log_restart(restarts, type(exc).__name__, last["seq"] if last else -1)
            actors.kill(ray)
            # Ray learns of a lost node asynchronously: new actors placed at once can land on it
            # (seen: a second restart right after the first). A short pause, longer each time.
            time.sleep(min(5.0, 1.0 * restarts))
        finally:
            actors.kill(ray)


def _drive(ray: Any, actors: _Actors, collector: Any, *, max_in_flight: int, checkpoint_every: int,
           after: int, checkpoint_every_s: float | None = None) -> Any:
    """The batch loop of one attempt; yields each completed checkpoint."""
    last_ckpt_t = time.monotonic()
    source, chain, learners = actors.source, actors.chain, actors.learners
    sinks = [s.op for s in collector.graph.sinks]
    inflight: deque[tuple[int, int, list[Any], dict[str, Any], Any]] = deque()
    pending_ckpt: dict[str, Any] | None = None
    last_ckpt = after

    def finalize() -> dict[str, Any] | None:
        nonlocal pending_ckpt
        seq, rows, sides, results, env = inflight.popleft()
        side = SideOutput()
        fetched = iter(ray.get([x for x in sides if not isinstance(x, SideOutput)]))
        for part in sides:
            side.extend(part if isinstance(part, SideOutput) else next(fetched))
        merged = {}
        for name, got in results.items():
            res = LearnResult(seq)
            for r in (ray.get(got) if isinstance(got, list) else [got]):
                res.merge(r)
            merged[name] = res
        if sinks and not collector.replaying(seq):
            batch = ray.get(env).batch
            if batch is not None and len(batch):
                for sink in sinks:
                    sink.write(batch)
        collector.add(seq, rows, side, merged)
        if pending_ckpt is not None and pending_ckpt["seq"] == seq:
            refs, pending_ckpt = pending_ckpt, None
            source_state = ray.get(refs["source"])
            if source_state is None:
                nonlocal checkpoint_every, checkpoint_every_s
                checkpoint_every, checkpoint_every_s = 0, None
                print(f"tideflow: the source {type(collector.graph.source.op).__name__} cannot seek "
                      f"(no position): no checkpoints; a lost actor restarts the run from its start",
                      file=sys.stderr, flush=True)
                return None
            return {"seq": seq, "collector": collector.checkpoint(),
                    "actors": {"source": source_state,
                               "chain": ray.get(refs["chain"]),
                               "learners": {n: ray.get(r) for n, r in refs["learners"].items()}}}
        return None

    pending = source.next_refs.remote(max_in_flight)
    while True:
        ready = ray.get(pending)
        if not ready:
            break
        group_end = ready[-1][0]
        snap_source = None
        due = ((checkpoint_every and group_end - last_ckpt >= checkpoint_every)
               or (checkpoint_every_s and time.monotonic() - last_ckpt_t >= checkpoint_every_s))
        if due and pending_ckpt is None:
            # before the prefetch: the source's snapshot then follows exactly this group
            snap_source = source.snapshot.remote()
        # prefetch: the source reads (and, fused, runs the data path on) the next
        # group while the learners work on this one
        pending = source.next_refs.remote(max_in_flight)
        for seq, rows, env, fused_side, done in ready:
            sides: list[Any] = [] if fused_side is None else [fused_side]
            for actor in chain:
                env, side = actor.process.options(num_returns=2).remote(env)
                sides.append(side)
            results: dict[str, Any] = dict(done)
            results.update({name: [a.step.remote(env) for a in acts] for name, acts in learners.items()})
            inflight.append((seq, rows, sides, results, env))
            if snap_source is not None and seq == group_end:
                # right after the group's last calls: every actor's snapshot is at this boundary
                pending_ckpt = {"seq": group_end, "source": snap_source, **actors.snapshot_refs()}
                last_ckpt, last_ckpt_t = group_end, time.monotonic()
            while len(inflight) >= max_in_flight:
                done_ckpt = finalize()
                if done_ckpt is not None:
                    yield done_ckpt
                    # the interval counts from when the checkpoint was saved (a slow save or
                    # upload must not make every group a checkpoint)
                    last_ckpt_t = time.monotonic()
    while inflight:
        done_ckpt = finalize()
        if done_ckpt is not None:
            yield done_ckpt
            last_ckpt_t = time.monotonic()
    finals = dict(ray.get(source.finish.remote()))
    for name, acts in learners.items():
        res = LearnResult(-1)
        for r in ray.get([a.finish.remote() for a in acts]):
            res.merge(r)
        finals[name] = res
    collector.finish(finals)
    for sink in sinks:
        sink.close()
    ray.get(source.commit.remote())  # the run is complete: every batch it read is processed
