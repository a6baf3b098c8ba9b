"""PrototypeDistillation (PRD, Asadi et al. 2023): the losses as defined, the learner's contract
beyond the check suite (teacher in the snapshot, tiny and bad batches, seen classes only,
task-free boundaries, other data), the Avalanche plugin in Avalanche's own loop, and the
issue's floors on split digits through the engine."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import tideflow as tf
from tideflow.stream.state import seal, unseal
from tideflow.strategies.base import SchemaError
from tideflow.strategies.prd import PrototypeDistillation
from tideflow.strategies.prd_core import (
    PRDPlugin,
    SupConCriterion,
    frozen_copy,
    prd_network,
    prd_optimiser,
    prototype_loss,
    relation_distillation,
    supcon_loss,
)

from split_digits import split_classes, split_digits

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


# -- the losses ------------------------------------------------------------------------------

def test_supcon_is_the_all_mode_loss_of_the_reference():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=1)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3])  # class 2 has no positive: left out of the mean
    tau = 0.2
    total, anchors = 0.0, 0
    for i in range(8):
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(8) if k != i)
        positives = [j for j in range(8) if j != i and y[j] == y[i]]
        if positives:
            total += sum(float(z[i] @ z[j]) / tau - math.log(denominator) for j in positives) / len(positives)
            anchors += 1
    assert float(supcon_loss(z, y, tau)) == pytest.approx(-(tau / 0.07) * total / anchors, rel=1e-5)
    assert supcon_loss(z[:3], torch.tensor([0, 1, 2]), tau) is None  # no positive at all: no loss


def test_prototype_and_distillation_losses_reach_what_the_paper_says():
    net = prd_network(4, (6,), encoder=(8,), head=(8, 4), seed=0)
    teacher = frozen_copy(net)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, 3] * 5)
    old = torch.tensor([0, 1])
    # L_p: only the rows' own prototypes get a gradient; the encoder gets none
    h = net.encoder(x)
    prototype_loss(net, h, y).backward()
    grad = net.prototypes.weight.grad
    assert grad[2:].abs().sum() > 0 and grad[:2].abs().sum() == 0
    assert all(p.grad is None for p in net.encoder.parameters())
    net.zero_grad()
    # L_PRD: zero against an identical teacher; after the model moves, positive, and its
    # gradient reaches the encoder and the old prototypes but not the new classes' prototypes
    h = net.encoder(x)
    assert float(relation_distillation(net, h, teacher, teacher.encoder(x), old, 0.1).detach()) == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        for p in net.encoder.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    h = net.encoder(x)
    loss = relation_distillation(net, h, teacher, teacher.encoder(x), old, 0.1)
    loss.backward()
    assert float(loss.detach()) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())
    grad = net.prototypes.weight.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() == 0
    assert all(p.grad is None for p in teacher.parameters())


# -- the learner -----------------------------------------------------------------------------

def _digits_batches(seed: int = 0) -> tuple[tf.MemorySource, list[tf.Batch]]:
    src = split_digits("task", seed=seed, batch_size=50)
    return src, list(src.batches())


def _learner(**kw: Any) -> PrototypeDistillation:
    s = PrototypeDistillation(10, **{"encoder": (32, 16), "head": (16, 8), "epochs": 2, "minibatch": 25,
                                     "augment": "crop", **kw})
    s.bind(split_digits("task").schema())
    return s


def test_snapshot_mid_task_holds_the_teacher_and_learning_goes_on_identically():
    src, batches = _digits_batches()
    tasks = [int(b.column("task")[0].as_py()) for b in batches]
    first_of_task1 = tasks.index(1)
    held = tf.Batch.concat(list(src.held_out().values()))

    def feed(s: PrototypeDistillation, part: list[tuple[int, tf.Batch]]) -> None:
        for i, b in part:
            if i and tasks[i] != tasks[i - 1]:
                s.on_task_boundary(tf.TaskBoundary("s", 0, tasks[i - 1], tasks[i]))
            s.learn(b)

    stream = list(enumerate(batches[:first_of_task1 + 8]))
    cut = first_of_task1 + 2  # mid task 1: a teacher exists, the optimiser has momentum
    original = _learner()
    feed(original, stream[:cut])
    state = original.snapshot()
    assert state["teacher"] is not None and state["old"] == [0, 1] and state["seen"] == [0, 1, 2, 3]
    travelled = unseal(seal(state))  # as a checkpoint carries it
    feed(original, stream[cut:])
    expected = original.predict_scores(held)
    twin = _learner()
    twin.restore(travelled)
    feed(twin, stream[cut:])
    got = twin.predict_scores(held)
    assert got.classes == expected.classes == list(range(6))
    np.testing.assert_array_equal(got.scores, expected.scores)
    final, twin_final = original.snapshot(), twin.snapshot()
    for part in ("net", "teacher"):
        for k, v in final[part].items():
            assert torch.equal(v, twin_final[part][k]), (part, k)


def test_without_the_teacher_in_the_snapshot_learning_would_differ():
    # the previous test means something only if the teacher changes what is learned
    src, batches = _digits_batches()
    a, b = _learner(), _learner()
    for s in (a, b):
        for x in batches[:6]:
            s.learn(x)
    a.on_task_boundary(tf.TaskBoundary("s", 0, 0, 1))
    for s in (a, b):
        for x in batches[6:9]:
            s.learn(x)
    held = src.held_out()[0]
    assert not np.array_equal(a.predict_scores(held).scores, b.predict_scores(held).scores)


def test_tiny_batches_and_bad_rows_are_learned_around_and_counted():
    schema = tf.Schema({"x0": "float64", "x1": "float64", "y": "int64"}, target="y")
    s = PrototypeDistillation(3, encoder=(8,), head=(4,), minibatch=4)
    s.bind(schema)
    one = tf.Batch.from_pydict({"x0": [0.5], "x1": [1.0], "y": [1]})
    r = s.learn(one)  # a single row: no class pair, SupCon left out of the step, the rest learned
    assert r.samples == 1 and r.extra["supcon_skipped"] == 1 and r.extra["train_rows"] == 1
    assert s.predict(one).to_pylist() == [1]
    bad = tf.Batch.from_pydict({"x0": [0.1, float("nan"), 0.3, 0.4, 0.5, 0.6], "x1": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                                "y": [0, 0, 7, None, 2, 2]}, first_offset=1)
    r = s.learn(bad)
    assert r.skipped == {"non_finite_features": 1, "label_out_of_range": 1, "null_target": 1}
    assert r.extra["train_rows"] == 3 and r.extra["supcon_skipped"] == 0  # rows 0 and 4, 5: class 2 pairs
    assert s.seen == [0, 1, 2]
    preds = s.predict(bad).to_pylist()
    assert preds[1] is None and all(p in (0, 1, 2) for p in preds[:1] + preds[2:])
    # one view: an anchor without a positive is left out rather than dividing by zero
    single = PrototypeDistillation(3, encoder=(8,), head=(4,), views=1, minibatch=4)
    single.bind(schema)
    r = single.learn(bad)
    assert all(np.isfinite(t.numpy()).all() for t in single.snapshot()["net"].values())
    with pytest.raises(SchemaError, match="integer labels"):
        s.learn(tf.Batch.from_pydict({"x0": [0.1], "x1": [0.2], "y": ["a"]}))


def test_only_seen_classes_are_predicted_and_scored():
    src, batches = _digits_batches()
    s = _learner()
    assert s.predict(batches[0]).null_count == len(batches[0])  # nothing learned: no guess
    assert s.predict_scores(batches[0]).classes == []
    for b in batches:
        if int(b.column("task")[0].as_py()) > 0:
            break
        s.learn(b)
    held = tf.Batch.concat(list(src.held_out().values()))
    assert set(s.predict(held).to_pylist()) <= {0, 1}  # class-IL over seen classes only
    cs = s.predict_scores(held)
    assert cs.classes == [0, 1] and cs.scores.shape == (len(held), 2) and np.abs(cs.scores).max() <= 1 + 1e-5
    assert cs.argmax([4, 5]) == [None] * len(held)  # a task never learned: no prediction under masking


def test_task_free_streams_get_boundaries_every_n_batches_and_on_drift():
    _, batches = _digits_batches()
    s = _learner(boundary_every=3)
    for b in batches[:7]:
        s.learn(b)
    assert s.n_boundaries == 2 and s.since_boundary == 1 and s.snapshot()["teacher"] is not None
    s.on_task_boundary(tf.TaskBoundary("s", 0, 0, 1))
    s.on_task_boundary(tf.TaskBoundary("s", 0, 0, 1))  # nothing learned in between: no new teacher
    assert s.n_boundaries == 3
    drift = tf.DriftEvent("s", 0, "ADWIN", "x", "check", 1.0)
    quiet, listening = _learner(), _learner(drift_boundaries=True)
    for t in (quiet, listening):
        t.learn(batches[0])
        t.on_drift(drift)
    assert (quiet.n_boundaries, listening.n_boundaries) == (0, 1)


# -- other data --------------------------------------------------------------------------------

def _cnn(shape: tuple[int, ...]) -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(shape[0], 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())


@pytest.mark.parametrize("kind", ["vectors", "colour images"])
def test_learns_other_data_through_the_engine(kind):
    """Not the digits: a 20-feature table of 6 classes (vector path, noise views) and 3-channel
    10x10 images of 4 classes (crop+flip views, a small CNN as the encoder), as task streams."""
    rng = np.random.default_rng(3)
    if kind == "vectors":
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=900, n_features=20, n_informative=10, n_classes=6,
                                   n_clusters_per_class=1, class_sep=2.0, random_state=3)
        x = (x - x.mean(0)) / x.std(0)
        tasks, n_classes, params = 3, 6, {"encoder": (64, 32)}
    else:
        n_classes, tasks = 4, 2
        y = rng.integers(0, n_classes, 600)
        x = rng.normal(size=(600, 3, 10, 10)).astype(np.float32) * 0.5
        for c in range(n_classes):  # each class: a bright square in its own channel and corner
            r, col = (c // 2) * 5, (c % 2) * 5
            x[y == c, c % 3, r:r + 5, col:col + 5] += 2.0
        params = {"encoder": _cnn}
    src = split_classes(x, y, tasks=tasks, scenario="task", seed=0, batch_size=40)
    s = PrototypeDistillation(n_classes, head=(32, 16), epochs=8, minibatch=20, **params)
    r = tf.Pipeline(kind).source(src).learn(s, name="prd").run(tracking=False, progress=False)
    m = r.cl_metrics["prd"]
    assert m.average_accuracy_til >= 0.8, m.matrix_til
    trained = r.strategies["prd"]
    assert trained.input_shape == ((20,) if kind == "vectors" else (3, 10, 10))
    assert r.summary["prd"]["extra"]["flops"] > 0


# -- Avalanche ---------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore")
def test_avalanche_plugin_trains_prd_in_avalanches_own_loop():
    """Split digits as an Avalanche class-incremental benchmark from in-memory tensors, trained by
    Avalanche's Naive loop with the PRD network, criterion and plugin."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    digits = load_digits()
    rng = np.random.default_rng(0)
    test = np.zeros(len(digits.target), dtype=bool)
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == c))
        test[rows[: len(rows) * 3 // 10]] = True
    x = digits.images.astype(np.float32)
    x = (x - x[~test].mean(0)) / np.where(x[~test].std(0) > 0, x[~test].std(0), 1.0)
    x_t, y_t = torch.from_numpy(x[:, None]), torch.from_numpy(digits.target.astype(np.int64))
    bm = class_incremental_benchmark({"train": TensorDataset(x_t[~test], y_t[~test]),
                                      "test": TensorDataset(x_t[test], y_t[test])},
                                     class_order=list(range(10)), num_experiences=5)
    net = prd_network(10, (1, 8, 8), augment="crop", seed=0)
    plugin = PRDPlugin()
    criterion = SupConCriterion(net)
    torch.manual_seed(0)  # Avalanche shuffles its minibatches with torch's global generator
    strategy = Naive(model=net, optimizer=prd_optimiser(net), criterion=criterion, plugins=[plugin],
                     train_mb_size=25, train_epochs=10, evaluator=EvaluationPlugin(), device="cpu")
    for k, experience in enumerate(bm.train_stream):
        strategy.train(experience)
        # after each experience: a frozen teacher of every class seen so far
        assert plugin.old == list(range(2 * k + 2))
        assert not any(p.requires_grad for p in plugin.teacher.parameters())
        assert ("distillation" in plugin.last_losses) == (k > 0)
    strategy.eval(bm.test_stream)  # Avalanche's evaluation runs with the criterion's eval branch
    net.eval()
    with torch.no_grad():
        scores = net(x_t[test])
    truth = y_t[test]
    pairs = truth // 2 * 2  # task-IL: the best of the row's task's two classes
    masked = torch.stack([scores[torch.arange(len(truth)), pairs], scores[torch.arange(len(truth)), pairs + 1]], 1)
    task_il = float((pairs + masked.argmax(1) == truth).float().mean())
    assert task_il >= 0.8, task_il
    # a network that saw only the first experience never predicts a later class
    early = prd_network(10, (1, 8, 8), augment="crop", seed=0)
    early.seen[:2] = True
    early.eval()
    assert set(early(x_t[test]).argmax(1).tolist()) <= {0, 1}


# -- the floors ------------------------------------------------------------------------

PROTOCOL_SEEDS = (0, 1, 2)
PROTOCOL_EPOCHS, PROTOCOL_MINIBATCH = 5, 25


def _naive_mlp(n_inputs: int, n_classes: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(n_inputs, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, n_classes))


@pytest.fixture(scope="module")
def floors() -> dict[str, dict[str, float]]:
    """Split digits, 5 tasks x 2 classes, through the engine; the protocol was fixed before any
    outcome was looked at:

    * data: ``split_digits("task", seed=s)`` (the shared helper's defaults: 30 % of each class
      held out by a seeded permutation, pixels standardised on the stream rows, batches of 50,
      no batch across a task boundary), seeds s = 0, 1, 2; the seed also seeds each strategy;
    * every method: 5 passes over each batch, minibatches of 25 rows, torch threads 1;
    * PRD: the paper's settings (SGD lr 0.01, momentum 0.9, weight decay 1e-4; tau 0.1,
      lambda_p 2, lambda_d 4), tau_d 0.1, 2 views, augment "crop" (digits are not mirror
      images of each other, so no flip), encoder MLP 64-256-128, head 128-128-64;
    * control: the same with lambda_d = 0;
    * Naive: ``AvalancheStrategy("Naive")`` with the same MLP 64-256-128 and a linear layer to
      the 10 classes, its default SGD lr 0.05;
    * metrics: ``result.cl_metrics[step]`` (task-IL: predictions masked to the task's classes),
      means over the seeds.
    """
    runs: dict[str, list[Any]] = {}
    for seed in PROTOCOL_SEEDS:
        common = {"epochs": PROTOCOL_EPOCHS, "minibatch": PROTOCOL_MINIBATCH, "augment": "crop", "seed": seed}
        methods = {
            "prd": PrototypeDistillation(10, **common),
            "no_distillation": PrototypeDistillation(10, lambda_d=0.0, **common),
            "naive": tf.AvalancheStrategy("Naive", n_classes=10, model=_naive_mlp, epochs=PROTOCOL_EPOCHS,
                                          mb_size=PROTOCOL_MINIBATCH, seed=seed),
        }
        pipeline = tf.Pipeline("split-digits").source(split_digits("task", seed=seed))
        for name, strategy in methods.items():
            pipeline = pipeline.learn(strategy, name=name)
        result = pipeline.run(tracking=False, progress=False)
        for name in methods:
            runs.setdefault(name, []).append(result.cl_metrics[name])
    keys = ("average_accuracy_til", "forgetting_til", "average_accuracy", "forgetting")
    return {name: {k: float(np.mean([getattr(m, k) for m in ms])) for k in keys} for name, ms in runs.items()}


def test_prd_forgets_little_and_less_than_without_distillation(floors):
    assert floors["prd"]["forgetting_til"] <= 0.05, floors
    assert floors["prd"]["forgetting_til"] < floors["no_distillation"]["forgetting_til"], floors


def test_prd_class_il_beats_naive_by_5_points(floors):
    assert floors["prd"]["average_accuracy"] >= floors["naive"]["average_accuracy"] + 0.05, floors


@pytest.mark.xfail(strict=True, reason="measured under the protocol: Naive's task-IL accuracy is 97.9 % "
                   "(forgetting 0.6), PRD's 86.7 %; there are not 10 points above Naive to be had "
                   "(see docs/methods/prd.md)")
def test_prd_task_il_beats_naive_by_10_points(floors):
    assert floors["prd"]["average_accuracy_til"] >= floors["naive"]["average_accuracy_til"] + 0.10, floors


@pytest.mark.xfail(strict=True, reason="measured under the protocol: without distillation PRD forgets "
                   "10.1 points (task-IL); with 20 passes per batch it forgets 23.5 (docs/methods/prd.md)")
def test_without_distillation_prd_forgets_20_points(floors):
    assert floors["no_distillation"]["forgetting_til"] >= 0.20, floors
