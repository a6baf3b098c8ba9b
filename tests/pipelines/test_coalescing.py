"""Transport coalescing on the Ray runner: small batches travel in groups, learning stays per batch.

When every learner runs in the source actor, a group handed to the driver may grow past
``max_in_flight`` while its first batch is younger than a delay bound, and never past the next
checkpoint due by count. Learner actors take several batches per call (``step_many``). Each
batch still passes the data path and the learners on its own, so a run's metrics equal the
local runner's; checkpoints keep their schedule.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest
from river import linear_model, preprocessing

import tideflow as tf
from tideflow.connectors.base import Source
from tideflow.pipelines.learn_step import make_learner
from tideflow.pipelines.options import RayOptions, split_options
from tideflow.pipelines.runners.ray import transport_group
from tideflow.pipelines.runners.ray_actors import LearnerActor, SourceActor, _Envelope
from tideflow.stream.events import DriftEvent
from tideflow.testing import comparable


class _Paced(Source):
    """Batches of a memory source, each after ``pause`` seconds (a stream that arrives slowly)."""

    def __init__(self, inner: Source, pause: float) -> None:
        self.inner, self.pause, self.stream_id = inner, pause, inner.stream_id

    def schema(self) -> Any:
        return self.inner.schema()

    def batches(self) -> Iterator[tf.Batch]:
        for b in self.inner.batches():
            time.sleep(self.pause)
            yield b


def _one_row_batches(n: int) -> tf.MemorySource:
    # a stream unlike the project's own: a meter's hourly readings as one-row batches
    batches = [tf.Batch.from_pydict({"kwh": [0.5 + (i % 24) / 10], "temp": [8.0 - (i % 24) / 4],
                                     "load": [1.0 + (i % 24) / 5]}, stream_id="meter", first_offset=i)
               for i in range(n)]
    schema = tf.Schema({"kwh": "float64", "temp": "float64", "load": "float64"}, target="load")
    return tf.MemorySource(batches, schema)


def test_a_group_grows_past_max_in_flight_only_within_the_delay():
    actor = SourceActor(_one_row_batches(60), None, put=False)
    assert len(actor.next_refs(4)) == 4  # no coalescing asked for: groups of max_in_flight
    assert len(actor.next_refs(4, 20, 10.0)) == 24  # fast batches: the group takes its 20 more
    grown = actor.next_refs(4, 100, 10.0)
    assert [g[0] for g in grown] == list(range(28, 60))  # to the stream's end, in order
    slow = SourceActor(_Paced(_one_row_batches(60), 0.02), None, put=False)
    group = slow.next_refs(4, 50, 0.05)  # a slow stream: the delay ends the group early
    assert 4 <= len(group) <= 8, len(group)


def test_max_delay_ms_bounds_the_group_and_zero_turns_coalescing_off():
    rule = dict(chained=True, max_in_flight=4, checkpoint_every=0)
    assert transport_group(-1, -1, **rule, max_delay_ms=5.0) == (4, 256, 0.005)  # the default
    assert transport_group(-1, -1, **rule, max_delay_ms=40.0)[2] == pytest.approx(0.04)
    assert transport_group(-1, -1, **rule, max_delay_ms=0.0) == (4, 0, 0.0)
    # a checkpoint due by count still ends the group, whatever the delay
    assert transport_group(9, 9, **{**rule, "checkpoint_every": 10}, max_delay_ms=40.0)[:2] == (4, 6)
    # the source actor, asked by that rule, hands out groups of max_in_flight with 0 even when
    # the stream is fast enough to fill 256 more
    fast = SourceActor(_one_row_batches(40), None, put=False)
    assert len(fast.next_refs(*transport_group(-1, -1, **rule, max_delay_ms=0.0))) == 4
    assert len(fast.next_refs(*transport_group(3, -1, **rule, max_delay_ms=1000.0))) == 36
    # a slow stream (a batch every 20 ms) ends a group of a 30 ms bound after one or two more
    slow = SourceActor(_Paced(_one_row_batches(40), 0.02), None, put=False)
    assert 1 <= len(slow.next_refs(*transport_group(-1, -1, **{**rule, "max_in_flight": 1},
                                                    max_delay_ms=30.0))) <= 3


def test_max_delay_ms_is_a_ray_option_with_a_clear_error():
    assert RayOptions().max_delay_ms == 5.0
    assert split_options({"max_delay_ms": 0})[1].max_delay_ms == 0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="max_delay_ms must be >= 0"):
            RayOptions(max_delay_ms=bad)
    import argparse

    from tideflow.pipelines.options import add_cli_arguments, from_cli_args

    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert from_cli_args(parser.parse_args(["--max-delay-ms", "2.5"]))["max_delay_ms"] == 2.5


def test_a_ray_run_without_coalescing_matches_local(ray_session):
    def run(runner: str, **kw: Any) -> tf.RunResult:
        return (tf.Pipeline("meter").source(_one_row_batches(40)).validate()
                .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="m", detector="ADWIN")
                .run(runner=runner, tracking=False, progress=False, **kw))

    local, ray = run("local"), run("ray", max_delay_ms=0, max_in_flight=3)
    assert comparable(ray.per_batch) == comparable(local.per_batch)
    assert ray.summary["m"]["mae"] == local.summary["m"]["mae"]


def test_a_coalesced_ray_run_matches_local_and_checkpoints_on_schedule(ray_session, tmp_path):
    def run(runner: str, **kw: Any) -> tf.RunResult:
        return (tf.Pipeline("meter").source(_one_row_batches(150)).validate()
                .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()),
                       name="m", detector="ADWIN")
                .run(runner=runner, tracking=False, progress=False, **kw))

    local = run("local")
    ray = run("ray", max_in_flight=2, checkpoint_every=40, checkpoint_dir=tmp_path / "ckpt")
    assert comparable(ray.per_batch) == comparable(local.per_batch)
    assert ray.summary["m"]["mae"] == local.summary["m"]["mae"]
    (history,) = list((tmp_path / "ckpt").rglob("history.jsonl"))
    seqs = [json.loads(line)["seq"] for line in history.read_text().splitlines()]
    # groups that could grow to 258 batches still end where a checkpoint is due
    assert seqs == [39, 79, 119], seqs


def test_several_batches_in_one_learner_call_learn_as_one_call_each():
    source = _one_row_batches(12)
    graph = (tf.Pipeline("meter").source(source)
             .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression(),
                                     react_to="any"), name="m")
             .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="other").build())

    def actor() -> LearnerActor:
        return LearnerActor(make_learner(graph, "m", source.schema(), label_delay=0,
                                         strategy=graph.step("m").op.clone()), 1)

    envs = [_Envelope(i, b, []) for i, b in enumerate(source.batches())]
    mails = [[DriftEvent(stream_id="meter", offset=5, detector="raised", statistic="x0", step="other")] if i == 6 else [] for i in range(12)]
    one, many = actor(), actor()
    singly = [one.step(env, mail) for env, mail in zip(envs, mails)]
    grouped = list(many.step_many(mails[:5], *envs[:5])) + list(many.step_many(mails[5:], *envs[5:]))
    assert [r.parts for r in grouped] == [r.parts for r in singly]
    state = [json.dumps(a.learner.snapshot(), sort_keys=True, default=str) for a in (one, many)]
    assert state[0] == state[1]
    assert one.learner.strategies().drifts_dismissed == many.learner.strategies().drifts_dismissed == 1


def test_checkpoints_stay_on_schedule_when_every_group_fills_to_the_due_batch(ray_session, tmp_path):
    """With a delay bound no stream reaches, each group ends exactly where a checkpoint is due,
    and the group's last batch is still in flight when the next group comes: the checkpoint
    there must be completed first, so that the next one is taken where it is due (without
    that, every checkpoint after the first came a group of max_in_flight batches late)."""
    result = (tf.Pipeline("meter").source(_one_row_batches(130)).validate()
              .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="m")
              .run(runner="ray", tracking=False, progress=False, max_in_flight=2, max_delay_ms=60_000,
                   checkpoint_every=30, checkpoint_dir=tmp_path / "ckpt"))
    assert result.rows == 130
    (history,) = list((tmp_path / "ckpt").rglob("history.jsonl"))
    seqs = [json.loads(line)["seq"] for line in history.read_text().splitlines()]
    assert seqs == [29, 59, 89, 119], seqs
