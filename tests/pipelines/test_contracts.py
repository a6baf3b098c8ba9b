"""The engine's contracts for task streams and for the runners, on both runners alike.

* a run trains copies: the user's strategy objects are never changed, a warm-started
  model is kept, the trained copies come back in ``RunResult.strategies``;
* run options as objects and as the keywords ``run()`` always took;
* task boundaries from the task column, the source's end-of-task mark and drift
  events, delivered after the old task's rows were learned (label delay included);
* the evaluation-only call with per-class scores and task-IL masking, and held-out
  evaluation at every task boundary;
* events a strategy raises reach the other learn steps ``event_lag`` batches later,
  at the same batch on both runners;
* per-(key, task) partial scores: the summary per task;
* metric observers see every batch once, in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from river import linear_model, neighbors, preprocessing, tree

import tideflow as tf
from tideflow.pipelines.learn_step import Learner
from tideflow.pipelines.metrics.base import Observer
from tideflow.stream.events import DriftEvent
from tideflow.testing import Emitter, Recorder, comparable, task_held_out

ROWS, BATCH = 600, 50
SCHEMA = tf.Schema({"x0": "float64", "x1": "float64", "y": "int64", "task": "int64"}, target="y", task="task")


def task_batches(*, mark_ends: bool = False, boundary_rows: tuple[int, ...] = (210, 420)) -> list[tf.Batch]:
    """600 rows, batches of 50, task t from row boundary_rows[t-1] on (mid-batch cuts by default);
    the label is which side of a task-specific line the point lies (each task its own concept)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 2))
    task = np.searchsorted(np.asarray(boundary_rows), np.arange(ROWS), side="right")
    angle = task * 1.1
    y = ((x[:, 0] * np.cos(angle) + x[:, 1] * np.sin(angle)) > 0).astype(np.int64) + 2 * task
    out = []
    for s in range(0, ROWS, BATCH):
        sl = slice(s, s + BATCH)
        b = tf.Batch.from_pydict({"x0": x[sl, 0], "x1": x[sl, 1], "y": y[sl], "task": task[sl]},
                                 stream_id="tasks", first_offset=s)
        ends = mark_ends and (s + BATCH) in boundary_rows
        out.append(tf.Batch(b.data, b.stream_id, ends))
    return out


def _tree() -> Any:
    return tree.HoeffdingTreeClassifier(grace_period=50)


def _run(pipeline: tf.Pipeline, runner: str, **kw: Any) -> tf.RunResult:
    return pipeline.run(runner=runner, tracking=False, progress=False, **kw)


# -- copies ------------------------------------------------------------------------------

@pytest.mark.parametrize("runner", ["local", "ray"])
def test_a_run_trains_copies_and_returns_them(runner, request):
    if runner == "ray":
        request.getfixturevalue("ray_session")
    warm = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for b in task_batches()[:2]:  # the user trained it before: the run must start from that model
        for row, y in zip(b.data.select(["x0", "x1"]).to_pylist(), b.column("y").to_pylist()):
            warm.learn_one(row, y % 2)
    strategy = Recorder(warm)
    before = strategy.snapshot()
    data = [tf.Batch(b.data.set_column(b.data.schema.get_field_index("y"), "y",
                                       pa.array(np.asarray(b.column("y")) % 2)), b.stream_id)
            for b in task_batches()[2:]]
    src = tf.MemorySource(data, SCHEMA)
    result = _run(tf.Pipeline("copies").source(src).learn(strategy, name="s"), runner)
    # the user's object: untouched
    assert strategy.log == [] and strategy.n_learned == 0
    after = strategy.snapshot()
    assert after["n_learned"] == before["n_learned"]
    # the trained copy came back, and it started from the warm model: its first batch was
    # predicted as the warm model predicts it
    trained = result.strategies["s"]
    assert trained is not strategy and trained.n_learned == ROWS - 2 * BATCH
    assert trained.log[0] == ("learn", 2 * BATCH, 3 * BATCH - 1)
    first = tf.Batch.from_pydict({"x0": data[0].column("x0"), "x1": data[0].column("x1")},
                                 first_offset=2 * BATCH)
    expected = np.mean(np.asarray(strategy.predict(first)) == np.asarray(data[0].column("y")))
    assert result.per_batch["s"][0]["accuracy"] == pytest.approx(expected)


def test_keyed_instances_start_from_the_strategy_as_given(tmp_path):
    warm = linear_model.LinearRegression()
    for i in range(200):
        warm.learn_one({"x0": float(i % 7)}, 3.0 * (i % 7))
    schema = tf.Schema({"x0": "float64", "k": "string", "y": "float64"}, target="y", key="k")
    b = tf.Batch.from_pydict({"x0": [1.0, 2.0, 3.0, 4.0], "k": ["a", "b", "a", "b"], "y": [3.0, 6.0, 9.0, 12.0]})
    r = tf.Pipeline("keyed").source(tf.MemorySource([b], schema)).learn(
        tf.RiverStrategy(warm, features=["x0"]), name="lin", route=tf.Keyed("k")).run(
        tracking=False, progress=False)
    # both keys' instances predicted with the warm model (near-perfect), not a fresh one (0.0)
    assert r.summary["lin"]["mae"] < 0.5
    assert sorted(r.strategies["lin"]) == ["a", "b"]


# -- options -----------------------------------------------------------------------------

def test_run_options_as_objects_or_keywords():
    src = lambda: tf.SyntheticSource("sea-drift", n=300, batch_size=100)  # noqa: E731
    p = lambda: tf.Pipeline("opts").source(src()).learn(tf.RiverStrategy(_tree()), name="t")  # noqa: E731
    a = p().run(tracking=False, progress=False, label_delay=1, max_batches=2)
    b = p().run(options=tf.RunOptions(tracking=False, progress=False, label_delay=1, max_batches=2))
    assert comparable(a.per_batch) == comparable(b.per_batch) and a.batches == 2
    with pytest.raises(TypeError, match="unknown run option 'label_dealy'"):
        p().run(tracking=False, label_dealy=1)
    with pytest.raises(TypeError, match="given both"):
        p().run(options=tf.RunOptions(tracking=False), label_delay=1)
    with pytest.raises(ValueError, match="Ray runner"):
        p().run(tracking=False, progress=False, checkpoint_dir="x")
    with pytest.raises(ValueError, match="max_in_flight"):
        tf.RayOptions(max_in_flight=0)


# -- task boundaries -----------------------------------------------------------------------

def _boundary_log(result: tf.RunResult, name: str = "s") -> list[tuple[Any, ...]]:
    return [e for e in result.strategies[name].log if e[0] == "boundary"]


@pytest.mark.parametrize("label_delay", [0, 2])
def test_task_boundaries_from_the_task_column(label_delay, ray_session):
    def pipeline() -> tf.Pipeline:
        return tf.Pipeline("tasks").source(tf.MemorySource(task_batches(), SCHEMA)).validate().learn(
            Recorder(_tree()), name="s")

    local = _run(pipeline(), "local", label_delay=label_delay)
    log = local.strategies["s"].log
    assert _boundary_log(local) == [("boundary", "task_column", 210, 0, 1), ("boundary", "task_column", 420, 1, 2)]
    # the boundary comes after every row of the old task was learned, before any of the new one
    at = log.index(("boundary", "task_column", 210, 0, 1))
    learned_before = [e for e in log[:at] if e[0] == "learn"]
    assert learned_before[-1][2] == 209 and all(e[1] >= 210 for e in log[at:] if e[0] == "learn")
    assert local.summary["s"]["task_boundaries"] == 2
    assert local.summary["s"]["samples_trained"] == ROWS
    assert sorted(local.summary["s"]["by_task"]) == [0, 1, 2]
    assert sum(v["rows_scored"] for v in local.summary["s"]["by_task"].values()) == ROWS
    ray = _run(pipeline(), "ray", label_delay=label_delay, max_in_flight=3)
    assert ray.strategies["s"].log == log
    assert comparable(ray.per_batch) == comparable(local.per_batch)
    assert ray.summary["s"]["by_task"] == local.summary["s"]["by_task"]


def test_end_of_task_marks_and_drift_as_boundaries():
    marked = task_batches(mark_ends=True, boundary_rows=(200, 400))
    r = _run(tf.Pipeline("marks").source(tf.MemorySource(marked, SCHEMA)).learn(Recorder(_tree()), name="s"),
             "local")
    # the mark signals the end; the task column's change right after it is not signalled twice
    assert _boundary_log(r) == [("boundary", "end_of_task", 200, 0, None), ("boundary", "end_of_task", 400, 1, None)]

    # the step's own error detector on a concept drift (SEA, halfway): each drift is a boundary
    unmarked = tf.SyntheticSource("sea-drift", n=6000, batch_size=200, seed=3)
    r = _run(tf.Pipeline("drift-b").source(unmarked).validate()
             .learn(Recorder(_tree()), name="s", detector="ADWIN", boundaries=["drift"]), "local")
    drifts = [e for e in r.strategies["s"].log if e[0] == "drift"]
    assert drifts and [b[1:3] for b in _boundary_log(r)] == [("drift", d[3]) for d in drifts]
    with pytest.raises(tf.GraphError, match="unknown task-boundary cause"):
        tf.Pipeline("bad").source(tf.MemorySource(marked, SCHEMA)).learn(Recorder(_tree()), boundaries=["tide"]).build()


def test_strategies_are_prepared_on_the_sources_unlabeled_rows(ray_session):
    unlabeled = task_batches()[0].select(["x0", "x1", "task"])
    for runner in ("local", "ray"):
        src = tf.MemorySource(task_batches(), SCHEMA, unlabeled=unlabeled)
        r = _run(tf.Pipeline("prep").source(src).learn(Recorder(_tree()), name="s"), runner)
        log = r.strategies["s"].log
        assert log[0] == ("prepare", BATCH, False) and [e[0] for e in log].count("prepare") == 1


# -- evaluation ----------------------------------------------------------------------------

def test_evaluate_is_side_effect_free_with_per_class_scores():
    strategy = tf.RiverStrategy(_tree())
    strategy.bind(SCHEMA)
    learner = Learner("s", strategy, SCHEMA)
    batches = task_batches()
    for seq, b in enumerate(batches[:8]):
        learner.step(seq, b)
    before = learner.snapshot()
    held = batches[5]  # rows 250..299: task 1, labels 2 and 3
    ev = learner.evaluate(held)
    assert learner.snapshot()["instances"][0][1]["n_learned"] == before["instances"][0][1]["n_learned"]
    assert ev.offsets == held.offsets.tolist() and len(ev.predictions) == len(held)
    (cs,) = ev.class_scores
    assert cs.scores.shape == (len(held), len(cs.classes)) and set(cs.classes) <= {0, 1, 2, 3, 4, 5}
    # task-IL masking: only the task's own two classes may be predicted
    masked = learner.evaluate(held, allowed_classes=[2, 3])
    assert set(masked.predictions) <= {2, 3}
    assert masked.combined().correct >= ev.combined().correct
    assert sorted(learner.evaluate(batches[8]).parts) == [(None, 1), (None, 2)]  # rows 400..449: two tasks


def test_avalanche_gives_logits_per_class():
    s = tf.AvalancheStrategy("Naive", n_classes=6, hidden=8, seed=0)
    s.bind(SCHEMA)
    b = task_batches()[0]
    s.learn(b)
    cs = s.predict_scores(b)
    assert cs.scores.shape == (len(b), 6) and cs.classes == list(range(6))
    assert cs.argmax() == s.predict(b).to_pylist()


def test_held_out_sets_are_evaluated_at_every_boundary(ray_session):
    def pipeline() -> tf.Pipeline:
        # a nearest-neighbour learner on a short window: it learns each task and forgets the old ones
        knn = neighbors.KNNClassifier(n_neighbors=5, engine=neighbors.LazySearch(window_size=150))
        source = tf.MemorySource(task_batches(), SCHEMA, held_out=task_held_out())
        return tf.Pipeline("heldout").source(source).learn(Recorder(knn), name="s")

    local = _run(pipeline(), "local")
    rows = [r for r in local.evaluations["s"] if r["point"] != "start"]
    # before the first batch (the untrained model), after task 0, after task 1 (the boundaries)
    # and after the last task (the end): 3 tasks each
    assert [r["task"] for r in local.evaluations["s"] if r["point"] == "start"] == [0, 1, 2]
    assert [(r["after_task"], r["task"]) for r in rows] == [(a, t) for a in (0, 1, 2) for t in (0, 1, 2)]
    assert all(r["rows_scored"] == 40 and 0 <= r["accuracy"] <= 1 for r in rows)
    final = {r["task"]: r["accuracy"] for r in rows if r["after_task"] == 2}
    first = {r["task"]: r["accuracy"] for r in rows if r["after_task"] == 0}
    assert final[2] > 0.8 and first[0] > 0.8  # the task just learned is learned
    assert final[0] < 0.2  # and the first one forgotten: the matrix shows forgetting
    ray = _run(pipeline(), "ray")
    assert ray.evaluations == local.evaluations
    # the accuracy matrix: one row per task, forgetting of a forgetful learner, task-IL beside it
    m = local.cl_metrics["s"]
    assert len(m.matrix) == 3 and m.matrix[-1][2] == final[2] and m.forgetting > 0.5 and m.bwt < -0.5
    assert m.matrix_til is not None and m.average_accuracy_til >= m.average_accuracy
    assert local.summary["s"]["continual"]["average_accuracy"] == pytest.approx(m.average_accuracy)
    assert ray.cl_metrics["s"].to_dict() == m.to_dict()


# -- events raised by strategies -----------------------------------------------------------

@pytest.mark.parametrize("max_in_flight", [2, 8])
def test_raised_events_reach_the_other_steps_at_the_same_batch(max_in_flight, ray_session):
    def pipeline() -> tf.Pipeline:
        src = tf.SyntheticSource("sea-drift", n=2000, batch_size=100, seed=1)
        return (tf.Pipeline("emit").source(src).validate()
                .learn(Emitter(_tree()), name="ood")
                .learn(Recorder(_tree()), name="listener"))

    local = _run(pipeline(), "local", event_lag=3)
    heard = [e for e in local.strategies["listener"].log if e[0] == "drift"]
    assert heard == [("drift", "ood", "ood", 299), ("drift", "ood", "ood", 699)]
    # raised while learning batch 2, delivered with batch 2 + 3: the listener had learned
    # batches 0..4 when it heard, and not batch 5
    log = local.strategies["listener"].log
    first = log.index(heard[0])
    assert [e for e in log[:first] if e[0] == "learn"][-1] == ("learn", 400, 499)
    assert local.summary["ood"]["events_emitted"] == 2
    assert [e.detector for e in local.drift_events] == ["ood", "ood"]
    ray = _run(pipeline(), "ray", event_lag=3, max_in_flight=max_in_flight)
    assert ray.strategies["listener"].log == log
    assert comparable(ray.per_batch) == comparable(local.per_batch)


# -- observers -------------------------------------------------------------------------------

class Seen(Observer):
    def __init__(self) -> None:
        super().__init__()
        self.seqs: list[int] = []

    def on_batch(self, record: Any) -> None:
        self.seqs.append(record.seq)

    def on_rollback(self, seq: int) -> None:
        self.seqs = [s for s in self.seqs if s <= seq]

    def result(self) -> Any:
        return list(self.seqs)


def test_observers_see_every_batch_in_order(ray_session):
    for runner in ("local", "ray"):
        seen = Seen()
        r = _run(tf.Pipeline("obs").source(tf.SyntheticSource("sea-drift", n=1000, batch_size=100)).learn(
            tf.RiverStrategy(_tree()), name="t"), runner, observers=[seen])
        assert r.metrics["seen"] == list(range(10))


def test_a_task_free_stream_is_evaluated_where_its_tasks_change(ray_session):
    """boundaries=() (task-free): the strategy is never told of a task's end, but the held-out sets
    are evaluated where the task column changes, so the accuracy matrix has one row per task."""
    def pipeline() -> tf.Pipeline:
        knn = neighbors.KNNClassifier(n_neighbors=5, engine=neighbors.LazySearch(window_size=150))
        source = tf.MemorySource(task_batches(), SCHEMA, held_out=task_held_out())
        return tf.Pipeline("taskfree").source(source).learn(Recorder(knn), name="s", boundaries=())

    local = _run(pipeline(), "local", label_delay=1)
    assert _boundary_log(local) == [] and local.summary["s"]["task_boundaries"] == 0
    m = local.cl_metrics["s"]
    assert len(m.matrix) == 3 and m.bwt is not None and m.forgetting > 0.5
    ray = _run(pipeline(), "ray", label_delay=1)
    assert ray.cl_metrics["s"].to_dict() == m.to_dict()


def test_a_selection_stage_chooses_what_the_strategy_trains_on(ray_session):
    """Scoring stays on the incoming batch; training takes the selector's rows (here: a pool that
    keeps every row and hands the strategy the whole pool every third batch); the pool is in the
    learn step's snapshot; time-series forecasters refuse a selector."""
    from tideflow.testing import KeepAll

    def pipeline() -> tf.Pipeline:
        return (tf.Pipeline("sel").source(tf.MemorySource(task_batches(boundary_rows=(ROWS,)), SCHEMA))
                .learn(Recorder(_tree()), name="s", select=KeepAll(every=3)))

    local = _run(pipeline(), "local")
    learned = [e for e in local.strategies["s"].log if e[0] == "learn"]
    assert [e[1:] for e in learned] == [(0, (3 * k + 3) * BATCH - 1) for k in range(4)]
    assert local.summary["s"]["rows_scored"] == ROWS and local.summary["s"]["samples_trained"] == sum(
        (3 * k + 3) * BATCH for k in range(4))
    assert local.per_batch["s"][2]["extra"]["select.pool"] == 3 * BATCH
    ray = _run(pipeline(), "ray")
    assert comparable(ray.per_batch) == comparable(local.per_batch)
    from tideflow.strategies.forecasting import Persistence

    schema = tf.Schema({"y": "float64"}, target="y")
    with pytest.raises(tf.GraphError, match="time series"):
        tf.Pipeline("bad").source(tf.MemorySource([], schema)).learn(Persistence(), select=KeepAll()).build()
