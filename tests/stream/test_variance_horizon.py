"""VarianceHorizon: the look-back rule, per-key histories, nulls, state, and its place in a graph."""

from __future__ import annotations

import numpy as np
import pytest

import tideflow as tf
from tideflow.stream.batch import Batch
from tideflow.stream.reduce import VarianceHorizon, budget_horizon, variance_horizon


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


# -- rule="budget": the share of the squared hourly changes ------------------------------------
def _brute_budget(values: np.ndarray, alpha: float, min_window: int, step: int) -> int:
    """The budget rule the slow way: the changes between consecutive values inside each window."""
    n_all = len(values)
    if n_all <= min_window:
        return n_all

    def energy(w: np.ndarray) -> float:
        v = w[~np.isnan(w)]
        return float(np.sum(np.diff(v) ** 2)) if len(v) >= 2 else 0.0

    total = energy(values)
    for n in range(min_window, n_all, step):
        if energy(values[-n:]) >= alpha * total:
            return n
    return n_all


@pytest.mark.parametrize("seed", range(4))
def test_budget_rule_matches_a_direct_computation(seed):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=300)) * (1 + 2 * (np.arange(300) > 220))
    x[rng.integers(0, 300, 25)] = np.nan
    for end in (10, 60, 150, 300):
        for alpha in (0.2, 0.4, 0.9):
            assert budget_horizon(x[:end], alpha=alpha, min_window=24, step=12) == \
                _brute_budget(x[:end], alpha, 24, 12), (end, alpha)


def test_budget_ignores_a_trend_and_follows_recent_changes():
    """Where the variance rule keeps the whole history (a trend) the budget takes ~alpha of it;
    a recent burst of changes shortens the window and a recent calm spell lengthens it."""
    rng = np.random.default_rng(0)
    trend = np.linspace(0, 60, 1200) + rng.normal(scale=0.5, size=1200)
    assert variance_horizon(trend, alpha=0.97, min_window=48, step=24) >= 1150
    steady = budget_horizon(trend, alpha=0.4, min_window=48, step=24)
    assert 0.35 * 1200 <= steady <= 0.45 * 1200, steady
    burst = trend.copy()
    burst[-100:] += rng.normal(scale=3.0, size=100)
    assert budget_horizon(burst, alpha=0.4, min_window=48, step=24) <= 120
    calm = trend.copy()
    calm[-400:] = calm[-401]  # the changes of the other 800 rows: 400 + 0.4 x 800 rows
    assert budget_horizon(calm, alpha=0.4, min_window=48, step=24) >= 700
    # a flat series has no change: the shortest window holds all of it
    assert budget_horizon(np.full(500, 3.0), alpha=0.4, min_window=48, step=24) == 48


def test_budget_step_defaults_and_per_key_histories():
    assert VarianceHorizon("v").rule == "variance" and VarianceHorizon("v").alpha == 0.97
    b = VarianceHorizon("v", rule="budget", key="k", min_window=8, step=4, max_window=60)
    assert b.alpha == 0.40 and b.clone().params() == b.params()
    rng = np.random.default_rng(4)
    steady = np.cumsum(rng.normal(size=60))
    keys = ["a"] * 60 + ["b"] * 60
    look = b.process(Batch.from_pydict({"k": keys, "v": np.r_[steady, np.full(60, 1.0)]})).numpy("lookback_v")
    want = [budget_horizon(steady[:i + 1], alpha=0.4, min_window=8, step=4) for i in range(60)]
    assert look[:60].tolist() == want
    assert look[60:68].tolist() == list(range(1, 9)) and set(look[68:].tolist()) == {8}
    with pytest.raises(ValueError, match="rule must be one of"):
        VarianceHorizon("v", rule="spread")


def _trending(n_batches: int, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    n = 48 * n_batches
    x = np.linspace(0, 20, n) + rng.normal(scale=0.3, size=n)
    return [Batch.from_pydict({"x": x[i * 48:(i + 1) * 48]}, first_offset=i * 48) for i in range(n_batches)]


def _flat(n_batches: int, seed: int) -> list[Batch]:
    return [Batch.from_pydict({"x": np.full(48, 2.5)}, first_offset=i * 48) for i in range(n_batches)]


def _with_nulls(n_batches: int, seed: int) -> list[Batch]:
    """Every fifth value null, and the whole third batch (NaN is covered by the direct computation:
    the check suite's Arrow comparison does not take NaN as equal to NaN)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        x = np.cumsum(rng.normal(size=48)).tolist()
        values = [None if (j % 5 == 0 or i == 2) else v for j, v in enumerate(x)]
        out.append(Batch.from_pydict({"x": pa.array(values, type=pa.float64())}, first_offset=i * 48))
    return out


@pytest.mark.parametrize("stream", [None, _trending, _flat, _with_nulls], ids=["check", "trend", "flat", "nulls"])
def test_budget_rule_passes_the_operator_checks(stream):
    """The operator check suite (snapshot/restore, determinism, empty batches, ...) with the budget
    rule, on the check stream, a trending and a flat series, and a column with nulls and NaN."""
    from tideflow.stream.checks import yield_operator_checks

    params = {"on": "x", "rule": "budget", "min_window": 16, "step": 8,
              "max_window": 96}
    for check in yield_operator_checks(VarianceHorizon, params=params, streams=stream):
        check()
    # the streams give the rule decisions to make: look-backs between the shortest and the longest
    op = VarianceHorizon(**params)
    looks = np.concatenate([op.process(b).numpy(op.column) for b in (stream or _trending)(8, 0)])
    assert looks.min() >= 1 and looks.max() <= 96
    if stream is _flat:
        assert set(looks[16:].tolist()) == {16}
    elif stream is _trending:
        assert 0.3 * 96 <= np.median(looks[96:]) <= 0.5 * 96
