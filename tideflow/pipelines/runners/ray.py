"""The Ray runner: actors for the source, the data path and every learner; batches by reference.

Ray runs calls from one caller to one actor in submission order, so every actor
sees the batches in stream order while different actors work on different
batches at once (pipelining). The driver asks the source for the next group of
batches before it waits on the current one (prefetch). At most
``max_in_flight`` batches are submitted to learners and not yet finished; the
driver waits for the oldest before submitting more, which is the backpressure
that keeps memory and the object store bounded when a strategy is slow. When a
graph has several learn steps, events a strategy raises reach the others
``event_lag`` batches later (`tideflow.pipelines.runners.data_path.Mailbox`), so
at most ``event_lag`` batches are in flight then. When every learner runs in the source
actor (chained), groups of small batches grow for transport up to a short delay bound
(coalescing, `transport_group`; the bound is `RayOptions.max_delay_ms`): one call and one
reply carry many batches, each of which was still validated, scored and learned on its own,
so the metrics are those of the local runner.

The actors are in `tideflow.pipelines.runners.ray_actors`; joining or starting Ray
in `tideflow.pipelines.runners.ray_session`.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

from tideflow.pipelines.collector import Collector
from tideflow.pipelines.graph import Graph
from tideflow.pipelines.learn_step import LearnResult
from tideflow.pipelines.options import CheckpointOptions, RayOptions, RunOptions
from tideflow.pipelines.runners.data_path import Mailbox, held_out_sets, unlabeled_rows
from tideflow.pipelines.runners.ray_actors import Actors
from tideflow.pipelines.runners.ray_session import ensure_ray, wait_for_actors
from tideflow.stream.operator import SideOutput
from tideflow.stream.schema import Schema


#: transport coalescing (`transport_group`): how many batches beyond max_in_flight a group may
#: take (the delay bound is `RayOptions.max_delay_ms`)
COALESCE_BATCHES = 256


def transport_group(group_end: int, ckpt: int, *, chained: bool, max_in_flight: int, checkpoint_every: int,
                    max_delay_ms: float) -> tuple[int, int, float]:
    """What the driver asks `SourceActor.next_refs` for: (batches, more batches, delay in seconds)
    of the group after batch ``group_end``, the last checkpoint before it being at ``ckpt``.

    Coalescing: with every learner chained into the source actor, a group may grow past
    max_in_flight while its first batch is younger than ``max_delay_ms``, by at most
    COALESCE_BATCHES, and it ends where a checkpoint is due by count (so a checkpoint is never
    later than with groups of max_in_flight). Learner actors get groups of max_in_flight: the
    backpressure bound counts their batches. ``max_delay_ms`` 0 asks for no coalescing at all.
    """
    if not chained or max_delay_ms <= 0:
        return max_in_flight, 0, 0.0
    room = COALESCE_BATCHES + max_in_flight
    if checkpoint_every:
        room = ckpt + checkpoint_every - group_end  # the due batch ends the group
        if room < 1:  # due already (a checkpoint still being taken): as without coalescing
            return max_in_flight, 0, 0.0
    first = min(max_in_flight, room)
    return first, min(COALESCE_BATCHES, room - first), max_delay_ms / 1000.0


def _is_fault(exc: BaseException) -> bool:
    """A lost actor, node or object (recoverable), as opposed to an error raised by our own code."""
    import ray.exceptions as rex

    if not isinstance(exc, rex.RayError) or isinstance(exc, rex.RayTaskError):
        return False
    # an actor whose constructor fails (an unimportable class, a bad argument) fails again
    return "error raised in its creation task" not in str(exc)


def run_on_ray(graph: Graph, schema: Schema, collector: Collector, options: RunOptions, ray_options: RayOptions,
               checkpointing: CheckpointOptions, store: Any = None) -> dict[str, Any]:
    """Run ``graph`` (whose operators are the run's own copies) on Ray; returns the trained strategies.

    On a lost actor or node, restore the last checkpoint and go on. Every
    ``checkpoint_every`` batches (0: never; a failure then restarts from the first
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
    With ``resume``, the run starts from ``store.load()`` (a run that died); ``store``: the
    `CheckpointStore` every checkpoint is saved to (None: kept in memory for recovery only).
    """
    ray = ensure_ray(ray_options.address)
    checkpoints = store
    max_restarts = checkpointing.max_restarts
    actor_options = dict(label_delay=options.label_delay, max_batches=options.max_batches,
                         keep_predictions=options.keep_predictions, fuse_chain=ray_options.fuse_chain,
                         held_out=held_out_sets(graph), unlabeled=unlabeled_rows(graph))
    # events raised by strategies reach the other learn steps event_lag batches later, so no
    # more than that many batches may be in flight when there are other learn steps
    in_flight = ray_options.max_in_flight
    if len(graph.learners) > 1:
        in_flight = min(in_flight, options.event_lag)
    mailbox = Mailbox(options.event_lag)
    start = checkpoints.load() if checkpoints is not None and checkpointing.resume else None
    if start is not None:
        checkpoints.truncate_history(start["seq"])
        collector.load_history(start["history"])
        collector.rollback(start["collector"])
    initial = collector.checkpoint() if start is None else start["collector"]
    last = start
    saved = start["collector"]["lengths"] if start is not None else None  # history on disk so far
    restarts = 0
    while True:
        actors = Actors(ray, graph, schema, **actor_options)
        try:
            wait_for_actors(ray, actors.all())  # actors no node can place: an error within a bound
            if last is not None:
                actors.restore(ray, last["actors"])
            mailbox.restore(last.get("mailbox") if last else None)
            for ckpt in _drive(ray, actors, collector, mailbox, max_in_flight=in_flight,
                               checkpoint_every=checkpointing.every, checkpoint_every_s=checkpointing.every_s,
                               after=last["seq"] if last else -1, max_delay_ms=ray_options.max_delay_ms):
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
            return actors.strategies(ray)
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
            # and fail again at once. A short pause, longer each time.
            time.sleep(min(5.0, 1.0 * restarts))
        finally:
            actors.kill(ray)


def _step(actor: Any, envs: list[Any], mails: list[list[Any]]) -> list[Any]:
    """One learner actor's call for the batches ``envs`` (with the mail due at each): one ref per
    batch, in order."""
    if len(envs) == 1:
        return [actor.step.remote(envs[0], mails[0]) if mails[0] else actor.step.remote(envs[0])]
    return list(actor.step_many.options(num_returns=len(envs)).remote(mails, *envs))


def _drive(ray: Any, actors: Actors, collector: Collector, mailbox: Mailbox, *, max_in_flight: int,
           checkpoint_every: int, after: int, checkpoint_every_s: float | None = None,
           max_delay_ms: float = 5.0) -> Any:
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
            mailbox.post(seq, res.emitted)
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
            return {"seq": seq, "collector": collector.checkpoint(), "mailbox": mailbox.snapshot(seq),
                    "actors": {"source": source_state,
                               "chain": ray.get(refs["chain"]),
                               "learners": {n: ray.get(r) for n, r in refs["learners"].items()}}}
        return None

    def group(group_end: int, ckpt: int) -> tuple[int, int, float]:
        return transport_group(group_end, ckpt, chained=actors.chained, max_in_flight=max_in_flight,
                               checkpoint_every=checkpoint_every, max_delay_ms=max_delay_ms)

    pending = source.next_refs.remote(*group(after, after))
    while True:
        ready = ray.get(pending)
        if not ready:
            break
        group_end = ready[-1][0]
        snap_source = None
        due_by_count = bool(checkpoint_every) and group_end - last_ckpt >= checkpoint_every
        if due_by_count and pending_ckpt is not None:
            # the checkpoint before is still in flight (the last batch of its group stays in
            # flight until the next group comes): complete it now, so that this one is taken
            # where it is due rather than a group later
            while pending_ckpt is not None and inflight:
                done_ckpt = finalize()
                if done_ckpt is not None:
                    yield done_ckpt
                    last_ckpt_t = time.monotonic()
        due = ((checkpoint_every and group_end - last_ckpt >= checkpoint_every)
               or (checkpoint_every_s and time.monotonic() - last_ckpt_t >= checkpoint_every_s))
        if due and pending_ckpt is None:
            # before the prefetch: the source's snapshot then follows exactly this group
            snap_source = source.snapshot.remote()
        # prefetch: the source reads (and, fused, runs the data path on) the next
        # group while the learners work on this one
        ckpt = group_end if snap_source is not None else last_ckpt  # the checkpoint before the next group
        pending = source.next_refs.remote(*group(group_end, ckpt))
        # learner actors take the group's batches in calls of up to `per_call` (one call and one
        # reply per actor for several batches; each batch is still its own learn step)
        per_call = 1 if not learners else max(1, (max_in_flight + 1) // 2)
        for start in range(0, len(ready), per_call):
            part = ready[start:start + per_call]
            # room for the whole call within max_in_flight; it also means every batch up to
            # lag before the call's last one is finalized, so its mail is complete
            while inflight and len(inflight) + len(part) > max_in_flight:
                done_ckpt = finalize()
                if done_ckpt is not None:
                    yield done_ckpt
                    last_ckpt_t = time.monotonic()
            envs, all_sides, mails = [], [], []
            for seq, rows, env, fused_side, done in part:
                sides: list[Any] = [] if fused_side is None else [fused_side]
                for actor in chain:
                    env, side = actor.process.options(num_returns=2).remote(env)
                    sides.append(side)
                envs.append(env)
                all_sides.append(sides)
                mails.append(mailbox.take(seq))
            calls = {name: [_step(a, envs, mails) for a in acts] for name, acts in learners.items()}
            for i, (seq, rows, _, _, done) in enumerate(part):
                results: dict[str, Any] = dict(done)
                results.update({name: [refs[i] for refs in per_actor] for name, per_actor in calls.items()})
                inflight.append((seq, rows, all_sides[i], results, envs[i]))
            if snap_source is not None and part[-1][0] == group_end:
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
