"""RiverStrategy: missing values, a failure in the middle of a batch, and the drift policy.

The benchmark tests run a River drift benchmark as the project ships it
(`tf.SyntheticSource("agrawal-drift")`: River's ``ConceptDriftStream`` from Agrawal
function 0 to function 2, the drift starting at row ``n // 2``, 1000 rows wide) through a
pipeline, on the local runner and once on a real local Ray. Accuracy after the drift, in
points, against the same learner without a detector (seeds 0, 1, 2; the asserts use one
seed and leave room):

* Gaussian naive Bayes, 10 000 rows, ADWIN, default policy: +2.3, +4.6, +2.0
  (``"reset"``: +3.2, +5.4, +3.5);
* Hoeffding tree (grace period 100), 8 000 rows, ADWIN, default policy: 0.0, 0.0, 0.0
  (``"reset"``: -30.9, 0.0, -22.5).

The policy's own mechanics (background model, waiting drift, snapshot, ``react_to``,
reset) are tested on a small stream whose concept flips.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from river import datasets, linear_model, naive_bayes, preprocessing, tree

import tideflow as tf
from tideflow.stream.events import DriftEvent
from tideflow.testing import comparable



# -- missing values --------------------------------------------------------------------------

def _phishing_with_gaps(every: int = 97) -> tuple[tf.Schema, list[tf.Batch]]:
    """River's Phishing table (1250 rows, 9 features) in batches of 125, ``popup_window`` null in
    every ``every``-th row (about 1 %) and NaN in one more: a table and a feature this project
    never produced."""
    rows = list(datasets.Phishing())
    names = sorted(rows[0][0])
    cols = {n: [float(x[n]) for x, _ in rows] for n in names}
    for i in range(3, len(rows), every):
        cols["popup_window"][i] = None
    cols["popup_window"][500] = float("nan")
    cols["y"] = [int(y) for _, y in rows]
    spec = {n: "float64" for n in names}
    spec["popup_window"] = tf.Field("popup_window", pa.float64(), nullable=True, allow_nonfinite=True)
    schema = tf.Schema({**spec, "y": "int64"}, target="y")
    batches = [tf.Batch.from_pydict({k: v[i:i + 125] for k, v in cols.items()}, stream_id="phishing",
                                    first_offset=i) for i in range(0, len(rows), 125)]
    return schema, batches


def test_null_features_are_left_out_of_the_row_and_every_row_is_scored():
    schema, batches = _phishing_with_gaps()
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    r = (tf.Pipeline("phishing").source(tf.MemorySource(batches, schema)).validate()
         .learn(tf.RiverStrategy(model), name="log").run(runner="local", tracking=False, progress=False))
    s = r.summary["log"]
    assert s["errors"] == 0, s["first_error"]
    assert s["rows_scored"] == s["samples_trained"] == 1250 and not s.get("skipped_rows")
    assert r.strategies["log"].n_learned == 1250
    assert s["accuracy"] > 0.85


def test_a_null_target_is_counted_not_learned():
    s = tf.RiverStrategy(linear_model.LinearRegression())
    s.bind(tf.Schema({"x": "float64", "y": "float64"}, target="y", nullable=("x", "y")))
    b = tf.Batch.from_pydict({"x": [1.0, None, 2.0, 3.0], "y": [2.0, 1.0, None, float("nan")]})
    report = s.learn(b)
    assert report.samples == 4 and report.skipped == {"null_target": 2} and s.n_learned == 2
    assert np.isfinite(s.predict(b).to_numpy()).all()


@pytest.mark.parametrize("policy", ["background", "ignore"])
def test_a_failure_in_the_middle_of_a_batch_says_what_was_learned(policy):
    s = tf.RiverStrategy(linear_model.LinearRegression(), features=["x", "tag"], drift_policy=policy)
    s.bind(tf.Schema({"x": "float64", "tag": "string", "y": "float64"}, target="y", nullable=("tag",)))
    tags = [None] * 8
    tags[5] = "red"  # a string value that a linear model cannot multiply
    b = tf.Batch.from_pydict({"x": np.arange(8.0), "tag": tags, "y": np.arange(8.0)}, first_offset=100)
    if policy == "ignore":
        message, learned = r"offset 105; the active model had learned 5 of the batch's 8", 5
    else:  # the policy predicts every row before learning any
        message, learned = r"could not predict the row at offset 105, so nothing of the batch was learned", 0
    with pytest.raises(RuntimeError, match=message):
        s.learn(b)
    assert s.n_learned == learned


# -- the drift policy on a benchmark, through pipelines -------------------------------------------

def _agrawal(estimator, detector: str | None, n: int, seed: int, runner: str = "local",
             **policy) -> tf.RunResult:
    source = tf.SyntheticSource("agrawal-drift", n=n, batch_size=250, seed=seed)
    return (tf.Pipeline("agrawal").source(source).validate()
            .learn(tf.RiverStrategy(estimator, **policy), name="m", detector=detector)
            .run(runner=runner, tracking=False, progress=False, keep_predictions=True))


def _right(result: tf.RunResult) -> np.ndarray:
    p = result.predictions["m"]
    return p["prediction"] == p["truth"]


BAYES = {"n": 10_000, "seed": 1}


@pytest.fixture(scope="module")
def bayes_runs():
    """Gaussian naive Bayes on agrawal-drift: no detector, and ADWIN with the default policy."""
    return _agrawal(naive_bayes.GaussianNB(), None, **BAYES), _agrawal(naive_bayes.GaussianNB(), "ADWIN", **BAYES)


def test_adwin_with_the_default_policy_recovers_after_the_drift(bayes_runs):
    plain, adapting = bayes_runs
    half = BAYES["n"] // 2
    # ADWIN also fires while the model is still learning (its error falls): nothing happens then
    assert np.array_equal(plain.predictions["m"]["prediction"][:half],
                          adapting.predictions["m"]["prediction"][:half])
    s = adapting.strategies["m"]
    assert s.drifts_dismissed >= 1 and s.background_starts >= 1 and s.swaps >= 1
    assert not np.array_equal(plain.predictions["m"]["prediction"][half:],
                              adapting.predictions["m"]["prediction"][half:])
    gain = _right(adapting)[half:].mean() - _right(plain)[half:].mean()
    assert gain > 0.02, f"accuracy after the drift moved by {100 * gain:+.2f} points"


def test_the_default_policy_keeps_a_model_that_adapts_where_a_reset_loses_it():
    # a Hoeffding tree follows Agrawal's drift by growing; a fresh tree needs far longer
    n, seed = 8_000, 0

    def after(detector, **policy):
        result = _agrawal(tree.HoeffdingTreeClassifier(grace_period=100), detector, n, seed, **policy)
        return _right(result)[n // 2:].mean()

    plain = after(None)
    assert after("ADWIN") >= plain - 0.005
    assert after("ADWIN", drift_policy="reset") < plain - 0.10


def test_ray_gives_the_local_runs_metrics_and_swaps(bayes_runs, ray_session):
    _, local = bayes_runs
    on_ray = _agrawal(naive_bayes.GaussianNB(), "ADWIN", runner="ray", **BAYES)
    assert comparable(on_ray.per_batch) == comparable(local.per_batch)
    assert np.array_equal(on_ray.predictions["m"]["prediction"], local.predictions["m"]["prediction"])
    assert on_ray.strategies["m"].swaps == local.strategies["m"].swaps >= 1


# -- the policy's mechanics, on a concept that flips ---------------------------------------------

FLIP_SCHEMA = tf.Schema({"x0": "float64", "x1": "float64", "y": "int64"}, target="y")
FLIP_AT = 1000


def _flip_stream(rows: int = 3000, size: int = 100) -> list[tf.Batch]:
    """y = [x0 + x1 / 2 > 0] for the first FLIP_AT rows, its opposite after."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    y[FLIP_AT:] = 1 - y[FLIP_AT:]
    return [tf.Batch.from_pydict({"x0": x[i:i + size, 0], "x1": x[i:i + size, 1], "y": y[i:i + size]},
                                 stream_id="flip", first_offset=i) for i in range(0, rows, size)]


def _bound(estimator=None, **kwargs) -> tf.RiverStrategy:
    s = tf.RiverStrategy(estimator if estimator is not None else naive_bayes.GaussianNB(), **kwargs)
    s.bind(FLIP_SCHEMA)
    return s


def _event(batch: tf.Batch, detector: str = "ADWIN", step: str = "m") -> DriftEvent:
    return DriftEvent(batch.stream_id, int(batch.first_offset), detector, "error", step, 1.0)


def _prequential(s: tf.RiverStrategy, batches: list[tf.Batch]) -> list[pa.Array]:
    out = []
    for b in batches:
        out.append(s.predict(b))
        s.learn(b)
    return out


def test_snapshot_holds_the_background_model_and_a_waiting_drift():
    stream = _flip_stream()
    first = _bound()
    _prequential(first, stream[:11])
    first.on_error_warning(_event(stream[11], "DDM.warning"))  # a background model starts
    _prequential(first, stream[11:14])
    first.on_error_drift(_event(stream[15], "DDM"))  # decided when offset 1500 is learned
    state = first.snapshot()
    assert state["background"] is not None and state["pending"] is not None
    twin = _bound()
    twin.restore(state)
    expected = _prequential(first, stream[14:])
    assert all(a.equals(b) for a, b in zip(_prequential(twin, stream[14:]), expected))
    from tideflow.strategies.river_adapter import COUNTERS

    mine, theirs = first.snapshot(), twin.snapshot()
    assert mine["swaps"] == 1 and mine["background"] is None
    for key in ("errors", "n_learned", *COUNTERS):
        assert mine[key] == theirs[key], key


def test_events_from_elsewhere_count_only_when_asked():
    stream = _flip_stream()
    for react_to, acted in (("own", False), ("any", True)):
        s = _bound(react_to=react_to)
        _prequential(s, stream[:12])
        s.on_drift(_event(stream[12], step="adwin_x0"))  # a detect step's event
        _prequential(s, stream[12:13])
        assert s.events_ignored == (0 if acted else 1)
        assert s.background_starts == (1 if acted else 0)


def test_a_reset_starts_from_the_estimator_as_constructed_not_the_warm_model():
    stream = _flip_stream()
    warm = naive_bayes.GaussianNB()
    for x, y in zip(stream[0].select(["x0", "x1"]).to_pylist(), stream[0].column("y").to_pylist()):
        warm.learn_one({k: v for k, v in x.items() if k != "offset"}, y)
    s = _bound(warm, drift_policy="reset")
    _prequential(s, stream[1:12])
    s.on_error_drift(_event(stream[12]))
    _prequential(s, stream[12:14])
    assert s.resets == 1
    fresh = _bound()
    _prequential(fresh, stream[12:14])
    assert s.predict(stream[14]).equals(fresh.predict(stream[14]))
