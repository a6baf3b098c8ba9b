"""VarianceHorizon: the look-back rule, per-key histories, nulls, state, and its place in a graph."""

from __future__ import annotations

import numpy as np
import pytest

import tideflow as tf
from tideflow.stream.batch import Batch
from tideflow.stream.reduce import VarianceHorizon, variance_horizon


def _brute(values: np.ndarray, alpha: float, min_window: int, step: int) -> int:
    """The rule written the slow way, for comparison."""
    n_all = len(values)
    if n_all <= min_window:
        return n_all
    ref = np.nanvar(values) if np.isfinite(values).sum() >= 2 else 0.0
    for n in range(min_window, n_all, step):
        w = values[-n:]
        v = np.nanvar(w) if np.isfinite(w).sum() >= 2 else 0.0
        if v >= alpha * ref:
            return n
    return n_all


@pytest.mark.parametrize("seed", range(5))
def test_rule_matches_a_direct_computation(seed):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=300)) + rng.normal(scale=3, size=300) * (np.arange(300) > 200)
    x[rng.integers(0, 300, 20)] = np.nan
    for end in (10, 60, 150, 300):
        for alpha in (0.5, 0.9, 0.97):
            assert variance_horizon(x[:end], alpha=alpha, min_window=24, step=12) == _brute(x[:end], alpha, 24, 12)


def test_variable_spell_gives_a_short_window_and_a_trend_a_long_one():
    rng = np.random.default_rng(0)
    calm_then_wild = np.r_[np.full(400, 5.0) + rng.normal(scale=0.01, size=400), 5 + 3 * rng.normal(size=48)]
    assert variance_horizon(calm_then_wild, alpha=0.97, min_window=48, step=24) == 48
    trend = np.linspace(0, 30, 448) + rng.normal(scale=0.1, size=448)
    assert variance_horizon(trend, alpha=0.97, min_window=48, step=24) >= 430


def test_keys_have_their_own_histories_and_outputs_are_per_row():
    vh = VarianceHorizon("v", key="k", min_window=4, step=2, max_window=20)
    rng = np.random.default_rng(1)
    flat = np.full(20, 1.0)
    noisy = rng.normal(size=20)
    keys = ["flat"] * 20 + ["noisy"] * 20
    out = vh.process(Batch.from_pydict({"k": keys, "v": np.r_[flat, noisy]}))
    look = out.numpy("lookback_v")
    assert look.dtype == np.int64 and len(look) == 40
    # the first rows of each key see only their own history
    assert look[:4].tolist() == [1, 2, 3, 4] and look[20:24].tolist() == [1, 2, 3, 4]
    # a constant series has zero variance: the shortest window always qualifies
    assert set(look[4:20].tolist()) == {4}
    alone = VarianceHorizon("v", min_window=4, step=2, max_window=20)
    solo = alone.process(Batch.from_pydict({"v": noisy})).numpy("lookback_v")
    assert look[20:].tolist() == solo.tolist()


def test_only_max_window_rows_are_kept_and_nulls_are_ignored():
    vh = VarianceHorizon("v", min_window=4, step=4, max_window=16)
    vals = [float(i % 3) if i % 5 else None for i in range(100)]
    vh.process(Batch.from_pydict({"v": vals}))
    state = vh.snapshot()
    assert len(state["history"][0][1]) == 16 and vh.rows_seen == 100


def test_snapshot_restore_mid_stream_gives_identical_decisions():
    rng = np.random.default_rng(3)
    batches = [Batch.from_pydict({"k": rng.choice(["a", "b"], 30).tolist(), "v": rng.normal(size=30) * (1 + i)},
                                 first_offset=30 * i) for i in range(10)]
    a = VarianceHorizon("v", key="k", min_window=8, step=4, max_window=60)
    for b in batches[:5]:
        a.process(b)
    b_ = VarianceHorizon("v", key="k", min_window=8, step=4, max_window=60)
    b_.restore(a.snapshot())
    for b in batches[5:]:
        assert a.process(b).numpy("lookback_v").tolist() == b_.process(b).numpy("lookback_v").tolist()


def test_bad_parameters_and_missing_columns_are_clear_errors():
    with pytest.raises(ValueError, match="alpha"):
        VarianceHorizon("v", alpha=1.5)
    with pytest.raises(ValueError, match="min_window"):
        VarianceHorizon("v", min_window=50, max_window=10)
    with pytest.raises(ValueError, match="lacks column 'v'"):
        VarianceHorizon("v").process(Batch.from_pydict({"w": [1.0]}))


def test_in_a_graph_the_column_reaches_the_strategy_schema():
    src = tf.SyntheticSource("friedman-drift", n=400, batch_size=100)
    p = (tf.Pipeline("vh").source(src).validate()
         .apply(VarianceHorizon("y", min_window=16, step=8, max_window=64))
         .sink(tf.MemorySink()))
    graph = p.build()
    assert "lookback_y" in graph.validate().fields
    with pytest.raises(tf.GraphError, match="nope"):
        tf.Pipeline("bad").source(src).apply(VarianceHorizon("nope")).sink(tf.MemorySink()).build()
