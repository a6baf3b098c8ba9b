"""Avalanche's own strategies run inside tideflow: each batch one experience, learned by their loop."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.stream.checks import assert_same
from tideflow.strategies.base import SchemaError

SCHEMA = tf.Schema({"x0": "float64", "x1": "float64", "y": "int64"}, target="y")


def _stream(n_batches, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_batches):
        x = rng.normal(size=(128, 2))
        yield tf.Batch.from_pydict({"x0": x[:, 0], "x1": x[:, 1], "y": (x[:, 0] + x[:, 1] > 0).astype(int)},
                                   first_offset=i * 128)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name, kwargs", [("Naive", {}), ("Replay", {"mem_size": 200}),
                                          ("EWC", {"ewc_lambda": 0.5}), ("LwF", {"alpha": 0.5, "temperature": 2.0})])
def test_avalanche_strategies_learn_a_separable_stream(name, kwargs):
    s = tf.AvalancheStrategy(name, n_classes=2, hidden=16, lr=0.1, strategy_kwargs=kwargs, seed=1)
    s.bind(SCHEMA)
    batches = list(_stream(25))
    for b in batches[:-1]:
        report = s.learn(b)
        assert report.samples == 128 and report.fits == 1
    accuracy = np.mean(np.array(s.predict(batches[-1]).to_pylist()) == batches[-1].numpy("y"))
    assert accuracy > 0.85, f"{name} reached only {accuracy:.2f}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name, kwargs", [("Naive", {}), ("Replay", {"mem_size": 100})])
def test_bad_labels_cost_their_rows_only_and_are_counted(name, kwargs):
    """Out-of-range and null labels mixed into good batches, one batch all bad: the good rows are
    learned bit for bit as a stream without the bad rows (weights, Replay's buffer, compute
    counters), the bad ones counted per reason; a label column that is not integers is refused."""
    import torch

    schema = tf.Schema({"x0": "float64", "x1": "float64", "y": "int64"}, target="y", nullable=("y",))
    batches = list(_stream(4, seed=5))
    bad = {1: {0: 2, 17: None, 64: -3, 127: 9}, 2: {r: 5 for r in range(128)}}
    twins = []
    for drop in (False, True):
        s = tf.AvalancheStrategy(name, n_classes=2, hidden=16, lr=0.1, seed=1, strategy_kwargs=kwargs)
        s.bind(schema)
        reports = []
        for i, b in enumerate(batches):
            rows = bad.get(i, {})
            if drop:
                b = b.filter([r not in rows for r in range(len(b))])
            elif rows:
                y = b.column("y").to_pylist()
                for r, v in rows.items():
                    y[r] = v
                b = b.with_column("y", pa.array(y, type=pa.int64()))
            reports.append(s.learn(b))
        twins.append((reports, s))
    (reports, s), (clean, reference) = twins
    assert reports[1].skipped == {"label_out_of_range": 3, "null_target": 1} and reports[1].samples == 128
    assert reports[2].skipped == {"label_out_of_range": 128} and reports[2].fits == 0  # learned nothing
    assert reports[0].skipped == reports[3].skipped == {}
    assert [r.extra for r in reports] == [r.extra for r in clean]
    assert s.n_learned == reference.n_learned == 4 * 128 - 132
    for (k, va), (_, vb) in zip(s._net.state_dict().items(), reference._net.state_dict().items()):
        assert torch.equal(va, vb), k
    assert_same(s.snapshot()["plugins"], reference.snapshot()["plugins"], "plugin memories")
    before = {k: v.clone() for k, v in s._net.state_dict().items()}
    with pytest.raises(SchemaError, match="AvalancheStrategy needs integer labels 0..1"):
        s.learn(batches[0].with_column("y", pa.array(["1"] * 128)))
    assert all(torch.equal(before[k], v) for k, v in s._net.state_dict().items())


def test_unknown_avalanche_strategy_is_named():
    s = tf.AvalancheStrategy("NoSuchThing", n_classes=2)
    s.bind(SCHEMA)
    with pytest.raises(ValueError, match="NoSuchThing"):
        s.predict(next(_stream(1)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compute_accounting_counts_replayed_rows_and_epochs():
    naive = tf.AvalancheStrategy("Naive", n_classes=2, hidden=16, epochs=2, seed=1)
    replay = tf.AvalancheStrategy("Replay", n_classes=2, hidden=16, epochs=2, seed=1,
                                  strategy_kwargs={"mem_size": 100})
    for s in (naive, replay):
        s.bind(SCHEMA)
    reports = {id(s): [s.learn(b) for b in _stream(3)] for s in (naive, replay)}
    # Naive trains on the batch only, each epoch: 2 x 128 rows, every batch
    assert [r.extra["train_rows"] for r in reports[id(naive)]] == [256.0] * 3
    # Replay adds its buffer (up to 100 rows) from the second batch on
    assert [r.extra["train_rows"] for r in reports[id(replay)]] == [256.0, 456.0, 456.0]
    params = sum(p.numel() for p in naive._net.parameters())
    assert reports[id(naive)][0].extra["flops"] == 6.0 * params * 256
    assert all(r.samples == 128 for r in reports[id(replay)])  # new rows learned: counted once


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name, kwargs", [("Naive", {}), ("Replay", {"mem_size": 100}),
                                          ("EWC", {"ewc_lambda": 0.5}), ("LwF", {"alpha": 0.5, "temperature": 2.0})])
def test_restored_strategy_learns_on_exactly_as_the_original(name, kwargs):
    """Snapshot mid-stream (through the sealed, pickle-free form checkpoints use), restore into
    a fresh strategy, and both learn the rest of the stream: same weights, same predictions.
    The plugin memories (replay buffer, EWC importances, LwF's old model) must be in it."""
    import torch

    from tideflow.stream.state import seal, unseal

    def make():
        s = tf.AvalancheStrategy(name, n_classes=2, hidden=16, lr=0.1, strategy_kwargs=kwargs, seed=3)
        s.bind(SCHEMA)
        return s

    batches = list(_stream(8, seed=4))
    a = make()
    for b in batches[:4]:
        a.learn(b)
    state = unseal(seal(a.snapshot()))
    assert state["not_in_snapshot"] == []
    b_ = make()
    b_.restore(state)
    for b in batches[4:]:
        assert a.predict(b).to_pylist() == b_.predict(b).to_pylist()
        ra, rb = a.learn(b), b_.learn(b)
        assert ra.extra["train_rows"] == rb.extra["train_rows"]
    for (k, va), (_, vb) in zip(a._net.state_dict().items(), b_._net.state_dict().items()):
        assert torch.equal(va, vb), k


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rows_with_a_missing_feature_or_label_are_counted_and_left_out():
    # one NaN input would make the loss NaN and every weight NaN for good
    schema = tf.Schema({"x0": "float64", "x1": "float64", "y": "int64"}, target="y", nullable=("x1", "y"))
    batches = list(_stream(3, seed=4))
    x1, y = batches[1].column("x1").to_pylist(), batches[1].column("y").to_pylist()
    x1[3], x1[40], y[7] = None, float("inf"), None
    gappy = tf.Batch.from_pydict({"x0": batches[1].column("x0"), "x1": x1, "y": y}, first_offset=128)
    kept = gappy.filter([i not in (3, 7, 40) for i in range(128)])
    twins = []
    for middle in (gappy, kept):
        s = tf.AvalancheStrategy("Naive", n_classes=2, hidden=16, lr=0.1, seed=1)
        s.bind(schema)
        s.learn(batches[0])
        report = s.learn(middle)
        s.learn(batches[2])
        twins.append((report, s))
    (report, s), (_, reference) = twins
    assert report.samples == 128 and report.skipped == {"null_feature": 2, "null_target": 1}
    assert s.n_learned == reference.n_learned == 3 * 128 - 3
    assert np.array_equal(s.predict_scores(batches[2]).scores, reference.predict_scores(batches[2]).scores)
    # what the adapter states for predicting such a row: no imputation, NaN logits, class 0
    row = gappy.take([3])
    assert np.isnan(s.predict_scores(row).scores).all() and s.predict(row).to_pylist() == [0]
