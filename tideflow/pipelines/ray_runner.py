"""The Ray runner: one actor per step, batches by object reference, bounded in flight.

The driver asks the source actor for the next batches (it ``ray.put``s them and
returns references), then chains one call per data-path actor and one per
learn actor for each batch without waiting: Ray runs calls from one caller to
one actor in submission order, so every actor sees the batches in stream order
while different actors work on different batches at once (pipelining). At most
``max_in_flight`` batches are submitted and not yet finished; the driver waits
for the oldest before submitting more, which is the backpressure that keeps
memory and the object store bounded when a strategy is slow.

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
from collections import deque
from typing import Any

from tideflow.pipelines.evaluation import Learner, LearnResult
from tideflow.pipelines.graph import Graph
from tideflow.stream.batch import Batch
from tideflow.stream.operator import SideOutput


def ensure_ray(address: str | None = None) -> Any:
    """Connect to Ray: reuse a running session, join ``address``/``RAY_ADDRESS``, or start locally."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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


class SourceActor:
    def __init__(self, source: Any, max_batches: int | None) -> None:
        _threads(1)
        self.source = source
        self.max_batches = max_batches
        self.it = source.batches()
        self.seq = 0

    def next_refs(self, k: int) -> list[tuple[int, int, Any]]:
        import ray

        out = []
        for _ in range(k):
            if self.max_batches is not None and self.seq >= self.max_batches:
                break
            batch = next(self.it, None)
            if batch is None:
                break
            out.append((self.seq, len(batch), ray.put(_Envelope(self.seq, batch, []))))
            self.seq += 1
        return out


class ChainActor:
    def __init__(self, op: Any) -> None:
        _threads(1)
        self.op = op

    def process(self, env: _Envelope) -> tuple[_Envelope, SideOutput]:
        batch = env.batch
        if batch is not None and len(batch):
            batch = self.op.process(batch)
        side = self.op.drain()
        return _Envelope(env.seq, batch, env.events + side.drift_events), side


class LearnerActor:
    def __init__(self, learner: Learner, num_cpus: float | None) -> None:
        _threads(num_cpus)
        self.learner = learner

    def step(self, env: _Envelope) -> LearnResult:
        return self.learner.step(env.seq, env.batch, env.events)

    def finish(self) -> LearnResult:
        return self.learner.finish()

    def snapshot(self) -> dict[str, Any]:
        return self.learner.snapshot()

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


def run_on_ray(graph: Graph, schema: Any, collector: Any, *, label_delay: int, max_batches: int | None,
               max_in_flight: int = 4, address: str | None = None, keep_predictions: bool = False) -> None:
    from tideflow.pipelines.run import make_learner

    ray = ensure_ray(address)
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be >= 1")
    # data-path actors are light (validation, detectors): they take no CPU slot so
    # that the learners, which do the work, get the cores
    source = ray.remote(num_cpus=0)(SourceActor).remote(graph.source.op, max_batches)
    chain = [ray.remote(num_cpus=0)(ChainActor).remote(s.op) for s in graph.chain]
    cpus = _learner_cpus(graph, ray)
    learners: dict[str, list[Any]] = {}
    for s in graph.learners:
        n = s.route.actors if s.route else 1
        cls = ray.remote(num_cpus=cpus[s.name], num_gpus=s.num_gpus)(LearnerActor)
        learners[s.name] = [
            cls.options(name=None).remote(
                make_learner(graph, s.name, schema, label_delay=label_delay, shard=(i, n),
                             strategy=s.op, keep_predictions=keep_predictions), cpus[s.name])
            for i in range(n)
        ]
    sinks = [s.op for s in graph.sinks]
    inflight: deque[tuple[int, int, list[Any], dict[str, list[Any]], Any]] = deque()

    def finalize() -> None:
        seq, rows, sides, results, env = inflight.popleft()
        side = SideOutput()
        for part in ray.get(sides):
            side.extend(part)
        merged = {}
        for name, refs in results.items():
            res = LearnResult(seq)
            for r in ray.get(refs):
                res.merge(r)
            merged[name] = res
        if sinks:
            batch = ray.get(env).batch
            if batch is not None and len(batch):
                for sink in sinks:
                    sink.write(batch)
        collector.add(seq, rows, side, merged)

    try:
        while True:
            ready = ray.get(source.next_refs.remote(max_in_flight))
            if not ready:
                break
            for seq, rows, env in ready:
                sides = []
                for actor in chain:
                    env, side = actor.process.options(num_returns=2).remote(env)
                    sides.append(side)
                results = {name: [a.step.remote(env) for a in actors] for name, actors in learners.items()}
                inflight.append((seq, rows, sides, results, env))
                while len(inflight) >= max_in_flight:
                    finalize()
        while inflight:
            finalize()
        finals = {}
        for name, actors in learners.items():
            res = LearnResult(-1)
            for r in ray.get([a.finish.remote() for a in actors]):
                res.merge(r)
            finals[name] = res
        collector.finish(finals)
        for sink in sinks:
            sink.close()
    finally:
        for actor in [source, *chain, *(a for actors in learners.values() for a in actors)]:
            ray.kill(actor)
