"""Backpressure on the Ray runner: a slow strategy makes the source wait.

The source is never more than a bounded number of batches ahead of the slowest
learner (``max_in_flight`` in flight plus one group read ahead), whatever the
stream's length; so memory and the object store stay bounded. Timestamps are
CLOCK_MONOTONIC, shared by all processes on the machine.
"""

from __future__ import annotations

import sys
import time

import pytest
from river import linear_model

import tideflow as tf
from tideflow.connectors.base import Source

import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BATCHES = 30


class _Logged(Source):
    """Wraps a source; appends ``yield <seq> <time>`` to a file for every batch it yields."""

    def __init__(self, inner: Source, log: str) -> None:
        self.inner, self.log, self.stream_id = inner, log, inner.stream_id

    def schema(self):
        return self.inner.schema()

    def batches(self):
        for i, b in enumerate(self.inner.batches()):
            with open(self.log, "a") as fh:
                fh.write(f"yield {i} {time.monotonic()}\n")
            yield b

    def seek(self, offset):
        self.inner.seek(offset)

    @property
    def position(self):
        return self.inner.position


class _Slow(tf.RiverStrategy):
    def __init__(self, estimator, *, log: str, **kw):
        super().__init__(estimator, **kw)
        self.log = log

    def clone(self):
        return _Slow(self.estimator, log=self.log, target=self.target, features=self.features)

    def learn(self, batch):
        time.sleep(0.1)
        with open(self.log, "a") as fh:
            fh.write(f"learned {batch.first_offset // 50} {time.monotonic()}\n")
        return super().learn(batch)


@pytest.mark.parametrize("fuse", [True, False], ids=["data-path-in-source", "one-actor-per-step"])
def test_a_slow_strategy_makes_the_source_wait(tmp_path, ray_session, fuse):
    log = tmp_path / "events.log"
    src = _Logged(tf.SyntheticSource("friedman-drift", n=BATCHES * 50, batch_size=50, seed=1), str(log))
    max_in_flight = 2
    result = (tf.Pipeline("slow").source(src).validate()
              .learn(_Slow(linear_model.LinearRegression(), log=str(log)), name="slow")
              .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="fast")
              .run(runner="ray", tracking=False, progress=False, max_in_flight=max_in_flight,
                   ray_fuse_chain=fuse))
    assert result.batches == BATCHES
    events = [line.split() for line in log.read_text().splitlines()]
    yielded = sorted(float(t) for kind, _, t in events if kind == "yield")
    learned = sorted(float(t) for kind, _, t in events if kind == "learned")
    assert len(yielded) == len(learned) == BATCHES
    # when the slow learner finished batch i, how far ahead had the source gone?
    lead = [sum(1 for y in yielded if y <= t) - (i + 1) for i, t in enumerate(learned)]
    bound = 2 * max_in_flight + 1
    assert max(lead) <= bound, lead
    # and it did run ahead a little: the stages overlap (pipelining), they do not take turns
    assert max(lead) >= 1
