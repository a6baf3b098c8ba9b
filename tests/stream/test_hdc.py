"""The hyperdimensional OOD detector (`tideflow.stream.hdc`): its arithmetic (leave-one-out
threshold, AUROC), the `HDCDetector` step in pipelines (each new domain of an image stream
reported once, its events reaching other strategies as task boundaries and landing in a real
MLflow store), the graph check, rows it cannot score, and a stream that is not images."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from tideflow.pipelines.graph import GraphError
from tideflow.stream.hdc import HDCDetector, HDCMemory, HDCSpace, auroc

DOMAINS = "clean;rot90;invert;flip+noise"


def _domains(seed: int = 0) -> tf.ImageStream:
    return tf.ImageStream("digits", split="domain-incremental", tasks=4, domain=DOMAINS, batch_size=64, seed=seed)


def _prd() -> tf.PrototypeDistillation:
    return tf.PrototypeDistillation(10, encoder=(32,), head=(16,), augment="none", minibatch=64)


def _starts(src: tf.ImageStream) -> list[int]:
    return list(src.plan.ends)


# -- the arithmetic ----------------------------------------------------------------------------

def test_threshold_is_leave_one_out_and_auroc_is_the_rank_statistic():
    rng = np.random.default_rng(1)
    space = HDCSpace.fit(rng.normal(size=(50, 6)), dim=128, seed=3)
    h = space.encode(rng.normal(size=(30, 6)))
    y = np.arange(30) % 3
    memory = HDCMemory(128, window=30)
    memory.add(h, y)
    # each row scored against its prototype without itself, computed by hand
    expected = []
    for i in range(30):
        best = -np.inf
        for c in range(3):
            p = h[y == c].astype(float).sum(axis=0) - (h[i] if y[i] == c else 0)
            best = max(best, float(h[i] @ p) / (np.sqrt(128) * np.linalg.norm(p)))
        expected.append(best)
    np.testing.assert_allclose(memory.loo_scores(), expected, rtol=1e-12)
    memory.calibrate()
    assert memory.threshold == pytest.approx(np.quantile(expected, 0.05))
    # the in-sample score is higher than the leave-one-out one: why the threshold uses the latter
    assert (memory.scores(h) >= memory.loo_scores()).all() and memory.scores(h).mean() > memory.loo_scores().mean()
    assert auroc([0.1, 0.2, 0.3], [0.4, 0.5]) == 1.0 and auroc([0.4, 0.5], [0.1, 0.2]) == 0.0
    assert auroc([0.1, 0.3], [0.3, 0.2]) == pytest.approx(0.625)  # a tie counts one half
    # bundling is integer addition: the same rows in other batches give the same prototypes
    other = HDCMemory(128, window=30)
    other.add(h[:7], y[:7])
    other.add(h[7:], y[7:])
    assert np.array_equal(other.sums[np.argsort(other.classes)], memory.sums[np.argsort(memory.classes)])


# -- the operator on an image stream -----------------------------------------------------------

@pytest.mark.parametrize("label", ["label", None])
def test_each_new_domain_is_reported_once_at_its_start(label):
    """Digits in 4 domains (clean, rotated 90 degrees, inverted, flipped + noise): one event in the
    first batch of each new domain, none inside a domain or on the first one, with and without labels
    (clusters as prototypes)."""
    for seed in (0, 1):
        src = _domains(seed)
        detector = HDCDetector(on="image", label=label)
        events = []
        for batch in src:
            assert detector.process(batch) is batch  # rows pass through unchanged
            events += detector.drain().drift_events
        starts = _starts(src)
        assert len(events) == 3, [(e.offset, e.value) for e in events]
        for e, start in zip(events, starts):
            assert start <= e.offset < start + 64 and e.detector == "HDC" and e.value > detector.vote
        assert detector.detections == 3 and len(detector.thresholds()) == 4


def test_events_become_other_strategies_task_boundaries_and_reach_mlflow(tmp_path):
    """Through the engine: the events are the run's drift events, logged to a real MLflow store as
    every detector's are (``drift.<step>`` at the batch), and a learn step that counts drift as a
    boundary (here PRD, ignoring the stream's own end-of-task marks) gets three."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = (tf.Pipeline("hdc-events").source(_domains(0))
              .detect(tf.HDCDetector(on="image", label="label", name="hdc"))
              .learn(_prd(), name="prd", boundaries=("drift",))
              .run(tracking=True, tracking_uri=uri, experiment="hdc", progress=False))
    events = [e for e in result.drift_events if e.step == "hdc"]
    assert len(events) == 3
    assert result.summary["prd"]["task_boundaries"] == 3
    assert result.strategies["prd"].n_boundaries == 3  # each one froze a new teacher
    client = MlflowClient(uri)
    points = client.get_metric_history(result.run_id, "drift.hdc")
    assert sorted(p.value for p in points) == [float(e.offset) for e in events]
    # and drawn on the run's timeline, like every other drift event, which goes to the MLflow run
    from tideflow.pipelines.metrics.timeline import timeline

    drawn = timeline(result, tmp_path / "t.png")
    assert drawn["events"]["hdc"] == [e.offset for e in events] and (tmp_path / "t.png").stat().st_size > 0
    assert "timeline.png" in [a.path for a in client.list_artifacts(result.run_id)]


def test_graph_check_names_a_missing_column_and_rows_it_cannot_score_are_counted():
    src = _domains(0)
    with pytest.raises(GraphError, match="'pixels', which is not in the schema"):
        (tf.Pipeline("bad").source(src).detect(tf.HDCDetector(on="pixels"))
         .learn(_prd(), name="s").run(tracking=False, progress=False))
    with pytest.raises(GraphError, match="label column 'task' is not in the schema|'task', which is not"):
        tf.Pipeline("bad").source(src).detect(tf.HDCDetector(on="image", label="task")).learn(
            _prd(), name="s").build().validate()
    batches = list(src)
    detector = HDCDetector(on="image", label="label", calibration_rows=128)
    for b in batches[:2]:
        detector.process(b)
    images = batches[2].tensor("image").copy()
    images[[3, 9]] = np.nan
    bad = batches[2].with_column("image", tf.tensor_array(images))
    bad = bad.with_column("label", pa.array([None] + bad.column("label").to_pylist()[1:], type=pa.int64()))
    assert detector.process(bad) is bad
    state = detector.snapshot()
    assert state["skipped"] == 2 and state["unlabeled"] == 1 and state["scored"] == len(bad) - 2
    assert np.isnan(detector.scores(bad)[[3, 9]]).all() and np.isfinite(detector.scores(bad)[[0, 1]]).all()


def test_a_table_that_is_not_images():
    """A 12-column table whose rows move to another region of its space halfway (not a mean shift
    along directions the rows already fill, which a sign projection cannot see): one event, at the
    change; rows of the old region afterwards raise nothing."""
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    before = rng.normal(size=(640, 12)) * np.r_[np.full(4, 3.0), np.full(8, 0.2)]
    after = rng.normal(size=(640, 12)) * np.r_[np.full(8, 0.2), np.full(4, 3.0)]
    rows = np.vstack([before, after, before[:320]]) @ basis
    batches = [tf.Batch.from_pydict({f"c{j}": rows[i:i + 64, j] for j in range(12)}, stream_id="t", first_offset=i)
               for i in range(0, len(rows), 64)]
    detector = HDCDetector(on=[f"c{j}" for j in range(12)], dim=1024)
    events = []
    for b in batches:
        detector.process(b)
        events += detector.drain().drift_events
    assert [e.offset // 64 for e in events] == [10], [(e.offset, e.value) for e in events]
