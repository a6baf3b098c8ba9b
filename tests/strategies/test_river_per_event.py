"""RiverStrategy(per_event=True): River's progressive validation inside batches of any size.

The data are two tables River ships and this project never produced (TrumpApproval, a
regression with an integer date column; Phishing, 0/1 labels as booleans and mixed
integer and float features), so the per-event pass is tried on rows it was not built on.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from river import datasets, evaluate, linear_model, metrics, naive_bayes, preprocessing

import tideflow as tf
from tideflow.strategies.checks import yield_strategy_checks
from tideflow.testing import comparable


def _table(dataset: Any, target_type: str) -> tuple[tf.Schema, dict[str, list[Any]], list[tuple[dict, Any]]]:
    """A River dataset as columns (features in the dataset's order) and as (x, y) pairs."""
    pairs = list(dataset)
    names = list(pairs[0][0])
    cols = {n: [x[n] for x, _ in pairs] for n in names}
    cols["y"] = [y for _, y in pairs]
    spec = {n: ("int64" if isinstance(cols[n][0], int) else "float64") for n in names}
    return tf.Schema({**spec, "y": target_type}, target="y"), cols, pairs


def _batches(cols: dict[str, list[Any]], size: int, stream_id: str) -> list[tf.Batch]:
    n = len(cols["y"])
    return [tf.Batch.from_pydict({k: v[i:i + size] for k, v in cols.items()}, stream_id=stream_id, first_offset=i)
            for i in range(0, n, size)]


def _run(schema: tf.Schema, batches: list[tf.Batch], model: Any, runner: str = "local", **kwargs: Any
         ) -> tf.RunResult:
    return (tf.Pipeline("per-event").source(tf.MemorySource(batches, schema))
            .learn(tf.RiverStrategy(model, **kwargs), name="m")
            .run(runner=runner, tracking=False, progress=False, keep_predictions=True))


def _river_predictions(model: Any, pairs: list[tuple[dict, Any]]) -> list[Any]:
    out = []
    for x, y in pairs:
        out.append(model.predict_one(x))
        model.learn_one(x, y)
    return out


def _linear() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


# -- the test: batch size 1 == per-event learning in batches of 500 -----------------------

def test_per_event_in_batches_of_500_scores_as_batch_size_1_and_as_river():
    schema, cols, pairs = _table(datasets.TrumpApproval(), "float64")
    one = _run(schema, _batches(cols, 1, "trump"), _linear())
    big = _run(schema, _batches(cols, 500, "trump"), _linear(), per_event=True)
    block = _run(schema, _batches(cols, 500, "trump"), _linear())  # the default: batch-prequential
    p1, p500 = one.predictions["m"]["prediction"], big.predictions["m"]["prediction"]
    # every prediction bit for bit, and River's own progressive validation's too
    assert np.array_equal(p1, p500)
    assert np.array_equal(p500, np.asarray(_river_predictions(_linear(), pairs), dtype=float))
    s1, s500 = one.summary["m"], big.summary["m"]
    assert s1["rows_scored"] == s500["rows_scored"] == len(pairs)
    # the sums differ only in the order their terms were added (per batch, then per run)
    for metric in ("mae", "rmse"):
        assert math.isclose(s1[metric], s500[metric], rel_tol=1e-12), metric
    river_mae = evaluate.progressive_val_score(pairs, _linear(), metrics.MAE()).get()
    assert math.isclose(s500["mae"], river_mae, rel_tol=1e-12)
    # the default mode stays batch-prequential, and the summary says which mode ran
    assert not math.isclose(block.summary["m"]["mae"], s500["mae"], rel_tol=1e-3)
    assert s500["strategy"].endswith("per_event=True)") and "per_event" not in block.summary["m"]["strategy"]
    assert s500["extra"]["per_event_rows"] == len(pairs) and "per_event_rows" not in block.summary["m"]["extra"]


def test_a_classifier_with_boolean_labels_gets_batch_size_1_accuracy_exactly():
    schema, cols, pairs = _table(datasets.Phishing(), "bool")
    one = _run(schema, _batches(cols, 1, "phishing"), naive_bayes.GaussianNB())
    big = _run(schema, _batches(cols, 500, "phishing"), naive_bayes.GaussianNB(), per_event=True)
    assert big.predictions["m"]["prediction"].tolist() == one.predictions["m"]["prediction"].tolist() \
        == _river_predictions(naive_bayes.GaussianNB(), pairs)
    assert big.summary["m"]["accuracy"] == one.summary["m"]["accuracy"]  # counts: exact


# -- the contract --------------------------------------------------------------------------------

class _PerEventRegressor(tf.RiverStrategy):
    """The check suite's RiverStrategy with per_event=True (defined here, so tests/test_checks.py,
    which checks the package's own classes, does not pick it up)."""

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"estimator": _linear(), "react_to": "any", "per_event": True}


class _PerEventClassifier(tf.RiverStrategy):
    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"estimator": naive_bayes.GaussianNB(), "per_event": True}


@pytest.mark.parametrize("cls", [_PerEventRegressor, _PerEventClassifier])
def test_the_strategy_check_suite_holds_per_event(cls):
    with warnings.catch_warnings():
        # checks that predict the next batches without learning them look like a label delay
        warnings.simplefilter("ignore", UserWarning)
        for check in yield_strategy_checks(cls):
            check()


def test_the_default_keeps_its_parameters_and_description():
    s = tf.RiverStrategy(_linear())
    assert "per_event" not in s.params() and s.describe() == "RiverStrategy(StandardScaler | LinearRegression)"
    on = tf.RiverStrategy(_linear(), per_event=True)
    assert on.params()["per_event"] is True and on.clone().per_event is True


def test_a_failure_mid_batch_keeps_the_rows_before_it_and_names_the_row():
    s = tf.RiverStrategy(linear_model.LinearRegression(), features=["x", "tag"], per_event=True)
    s.bind(tf.Schema({"x": "float64", "tag": "string", "y": "float64"}, target="y", nullable=("tag",)))
    tags = [None] * 8
    tags[5] = "red"  # a string value that a linear model cannot multiply
    b = tf.Batch.from_pydict({"x": np.arange(8.0), "tag": tags, "y": np.arange(8.0)}, first_offset=100)
    with pytest.raises(RuntimeError, match=r"offset 105 \(predict_one failed\); no model"):
        s.predict(b)
    assert s.n_learned == 0
    with pytest.raises(RuntimeError, match=r"offset 105 \(predict_one failed\); the active model learned the 5"):
        s.learn(b)
    assert s.n_learned == 5


# -- where the pass is not made ------------------------------------------------------------------

def test_held_out_rows_are_predicted_by_the_model_as_it_is():
    # held-out rows of the same stream id with offsets after the stream's: only the engine's
    # request for their scores tells them from the stream's next rows
    schema, cols, pairs = _table(datasets.Phishing(), "bool")
    stream, held = pairs[:1000], pairs[1000:]
    held_cols = {k: v[1000:] for k, v in cols.items()}
    held_batch = tf.Batch.from_pydict(held_cols, stream_id="phishing", first_offset=10_000)
    source = tf.MemorySource(_batches({k: v[:1000] for k, v in cols.items()}, 250, "phishing"), schema,
                             held_out={0: held_batch})
    result = (tf.Pipeline("held").source(source)
              .learn(tf.RiverStrategy(naive_bayes.GaussianNB(), per_event=True), name="m")
              .run(runner="local", tracking=False, progress=False))
    end = [e for e in result.evaluations["m"] if e["point"] == "end"]
    assert len(end) == 1
    model = naive_bayes.GaussianNB()
    _river_predictions(model, stream)
    expected = sum(model.predict_one(x) == y for x, y in held) / len(held)
    assert end[0]["rows_scored"] == len(held) and end[0]["accuracy"] == expected


def test_a_label_delay_turns_the_pass_off_with_a_warning():
    schema, cols, _ = _table(datasets.TrumpApproval(), "float64")
    batches = _batches(cols, 100, "trump")

    def run(**kwargs: Any) -> tf.RunResult:
        return (tf.Pipeline("delay").source(tf.MemorySource(batches, schema))
                .learn(tf.RiverStrategy(_linear(), **kwargs), name="m")
                .run(runner="local", tracking=False, progress=False, label_delay=1))

    with pytest.warns(UserWarning, match="label delay"):
        delayed = run(per_event=True)
    plain = run()
    # from the second batch on, nothing of a batch is known while it is predicted: the model as it is
    def scores(result: tf.RunResult) -> list[dict[str, Any]]:
        return [{k: v for k, v in rec.items() if k != "extra"} for rec in comparable(result.per_batch)["m"][1:]]

    assert scores(delayed) == scores(plain)
    assert delayed.summary["m"]["extra"]["per_event_rows"] == 0
    assert delayed.strategies["m"].per_event_off == "label_delay"


# -- the Ray runner ------------------------------------------------------------------------------

def test_ray_gives_the_local_per_event_run_with_its_drift_policy(ray_session):
    def run(runner: str) -> tf.RunResult:
        source = tf.SyntheticSource("agrawal-drift", n=4000, batch_size=400, seed=1)
        return (tf.Pipeline("agrawal").source(source).validate()
                .learn(tf.RiverStrategy(naive_bayes.GaussianNB(), per_event=True), name="m", detector="ADWIN")
                .run(runner=runner, tracking=False, progress=False, keep_predictions=True))

    local, on_ray = run("local"), run("ray")
    assert comparable(on_ray.per_batch) == comparable(local.per_batch)
    assert np.array_equal(on_ray.predictions["m"]["prediction"], local.predictions["m"]["prediction"])
    s = local.strategies["m"]
    assert s.background_starts >= 1 and on_ray.strategies["m"].snapshot()["errors"] == s.snapshot()["errors"]
