"""The Ray runner's actors: the source (with the fused data path), data-path steps, learners.

By default the data path (validation, detectors, reducers) runs inside the source
actor (``fuse_chain=True``): it reads a batch, passes it through the shared data
path (`tideflow.pipelines.runners.data_path`), and ``ray.put``s the result once; the
driver then submits one call per learn actor per batch. When the graph's only
learner is a single actor, it is chained into the source actor too (as Flink
chains operators of equal parallelism), and no batch leaves that process. With
``fuse_chain=False`` every data-path step gets its own actor and the driver chains
one call per step: more pipelining across cores when the data path is heavy, at
the price of one object-store round trip and one actor call per step per batch
(bench/runner_overhead.py measures both).

A keyed learn step gets ``actors`` actors; each sees every batch and keeps only
its share of the keys (stable hash), so no batch is copied per key on the way.
"""

from __future__ import annotations

import math
import time
from typing import Any

from tideflow.pipelines.graph import Graph
from tideflow.pipelines.learn_step import Learner, LearnResult, make_learner
from tideflow.pipelines.result import TrainedStrategies
from tideflow.pipelines.runners.data_path import DataPath, run_chain
from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent
from tideflow.stream.operator import SideOutput
from tideflow.stream.state import seal, unseal
from tideflow.strategies.torch_core import set_threads


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
    # one thread per CPU the actor was given: workers start with OMP_NUM_THREADS=1
    # (runtime_env) and torch's pool follows the actor's share, so actors on one machine
    # never oversubscribe its cores (bench/learning_cost.py measures the alternative);
    # torch is not imported just for this (an actor that never uses it should not pay for it)
    set_threads(max(1, int(num_cpus or 1)), import_torch=False)


def _pickled(obj: Any) -> bytes:
    # cloudpickle, as Ray itself: a strategy class defined in a user's script travels too
    from ray import cloudpickle

    return cloudpickle.dumps(obj)


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
        # a chained learner is the graph's only one: nobody else to hand its raised events to
        self.path = DataPath(self.chain, self.learners)
        self.put = put
        self.max_batches = max_batches
        self.it = source.batches()
        self.seq = 0

    def next_refs(self, k: int, more: int = 0, max_delay_s: float = 0.0
                  ) -> list[tuple[int, int, Any, SideOutput | None, dict[str, LearnResult]]]:
        """Up to ``k`` next batches: ``(seq, rows read, envelope ref or None, side or None, results)``.

        Coalescing for transport: up to ``more`` batches beyond ``k`` join the group while less
        than ``max_delay_s`` has passed since its first batch was read, so that many small
        batches cost one call and one reply. Each batch still goes through the data path and
        the learners on its own: only the group, never a batch, grows. The driver asks for more
        only when every learner runs in this actor (nothing waits behind the group elsewhere).
        """
        import ray

        out = []
        deadline = None
        for i in range(k + more):
            if self.max_batches is not None and self.seq >= self.max_batches:
                break
            if i >= k and time.perf_counter() >= deadline:  # type: ignore[operator]
                break
            batch = next(self.it, None)
            if batch is None:
                break
            if deadline is None:
                deadline = time.perf_counter() + max_delay_s
            rows = len(batch)
            batch, events, side, results = self.path.step(self.seq, batch)
            ref = ray.put(_Envelope(self.seq, batch, events)) if self.put else None
            out.append((self.seq, rows, ref, side if self.chain else None, results))
            self.seq += 1
        return out

    def finish(self) -> dict[str, LearnResult]:
        return self.path.finish()

    def strategies(self) -> dict[str, bytes]:
        """The chained learners' trained strategies, pickled (see `TrainedStrategies`)."""
        return {name: _pickled(learner.strategies()) for name, learner in self.learners.items()}

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
        batch, events, side = run_chain([self.op], env.batch, env.events)
        return _Envelope(env.seq, batch, events), side

    def snapshot(self) -> dict[str, Any]:
        return seal(self.op.snapshot())

    def restore(self, state: dict[str, Any]) -> None:
        self.op.restore(unseal(state))


class LearnerActor:
    def __init__(self, learner: Learner, num_cpus: float | None) -> None:
        _threads(num_cpus)
        self.learner = learner

    def step(self, env: _Envelope, mail: list[DriftEvent] | None = None) -> LearnResult:
        """One batch; ``mail``: events other learn steps' strategies raised, due at this batch."""
        return self.learner.step(env.seq, env.batch, env.events + mail if mail else env.events)

    def step_many(self, mails: list[list[DriftEvent]], *envs: _Envelope) -> tuple[LearnResult, ...]:
        """Several batches in one call (transport only): each one stepped on its own, in order,
        with the mail due at it; one result per batch (the driver asks for one return each)."""
        return tuple(self.step(env, mail) for env, mail in zip(envs, mails))

    def evaluate(self, batch: Batch, allowed_classes: list[Any] | None = None) -> Any:
        """Predict on held-out rows with no learning (`Learner.evaluate`)."""
        return self.learner.evaluate(batch, allowed_classes=allowed_classes)

    def finish(self) -> LearnResult:
        return self.learner.finish()

    def strategies(self) -> bytes:
        """The trained strategy (or strategies, keyed), pickled (see `TrainedStrategies`)."""
        return _pickled(self.learner.strategies())

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


class Actors:
    """The actors of one attempt at running the graph (fresh ones for every attempt)."""

    def __init__(self, ray: Any, graph: Graph, schema: Any, *, label_delay: int, max_batches: int | None,
                 keep_predictions: bool, fuse_chain: bool, held_out: dict[Any, Any] | None = None,
                 unlabeled: Any = None) -> None:
        import uuid

        # named, so that operators (and the fault tests) can find an actor: tideflow.<pipeline>.<id>.<role>
        prefix = f"tideflow.{graph.name}.{uuid.uuid4().hex[:8]}"
        self.prefix = prefix

        ops = [s.op for s in graph.chain]
        cpus = _learner_cpus(graph, ray)
        self.sinks = bool(graph.sinks)
        # chaining: a graph whose only learner is one actor runs whole in the source actor
        # (no process boundary per batch: on a small machine two busy processes do not get
        # twice the throughput of one, so a hop costs more than it overlaps; measured in
        # bench/runner_overhead.py)
        solo = graph.learners[0] if len(graph.learners) == 1 else None
        self.chained = fuse_chain and solo is not None and (solo.route.actors if solo.route else 1) == 1
        if self.chained:
            assert solo is not None
            learner = make_learner(graph, solo.name, schema, label_delay=label_delay, shard=(0, 1),
                                   strategy=solo.op, keep_predictions=keep_predictions, held_out=held_out,
                                   unlabeled=unlabeled)
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
                                        strategy=s.op, keep_predictions=keep_predictions, held_out=held_out,
                                 unlabeled=unlabeled), cpus[s.name])
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

    def strategies(self, ray: Any) -> TrainedStrategies:
        """The trained strategies, fetched pickled from the actors (unpickled when first used)."""
        pickled: dict[str, list[bytes]] = {}
        if self.chained:
            pickled.update({n: [b] for n, b in ray.get(self.source.strategies.remote()).items()})
        for name, actors in self.learners.items():
            pickled[name] = ray.get([a.strategies.remote() for a in actors])
        return TrainedStrategies(pickled=pickled)

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
