"""EAR (Encoder-Adaptor-Reconfigurator) with its HDC detector: the issue's floors on a digits
domain-incremental stream through the engine, the reconfigurator on new classes, snapshot and
restore mid-stream through a sealed checkpoint, bad rows, a table that is not images, and the
Ray runner (checkpoints, a resumed run) against the local one."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import tideflow as tf
from split_digits import split_classes
from tideflow.stream.checks import assert_same
from tideflow.stream.hdc import auroc
from tideflow.stream.state import seal, unseal
from tideflow.strategies.base import SchemaError
from tideflow.testing import comparable

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

DOMAINS = "clean;rot90;invert;flip+noise"
NAMES = DOMAINS.split(";")
SEEDS = (0, 1)


def _domains(seed: int) -> tf.ImageStream:
    return tf.ImageStream("digits", split="domain-incremental", tasks=4, domain=DOMAINS, batch_size=64, seed=seed)


def _run(pipeline: tf.Pipeline, **options: Any) -> tf.RunResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline.run(tracking=False, progress=False, **options)


def _auroc_before_adapting(seed: int) -> dict[str, float]:
    """OOD AUROC of expert 0's memory (the clean domain's, right after the encoder froze at the
    end of it): clean held-out rows against each other domain's."""
    src = _domains(seed)
    ear = tf.EAR(10, seed=seed)
    ear.bind(src.schema())
    for batch in src:
        ear.learn(batch)
        if batch.end_of_task:
            ear.on_task_boundary(tf.TaskBoundary(src.stream_id, int(batch.last_offset) + 1, 0, 1, "end_of_task"))
            break
    assert ear.frozen and len(ear.meta) == 1
    held = src.held_out()
    score = {d: -ear.ood_scores(held[d])[:, 0] for d in range(4)}  # higher = more out of distribution
    return {NAMES[d]: auroc(score[0], score[d]) for d in (1, 2, 3)}


@pytest.fixture(scope="module")
def floors() -> dict[str, list[Any]]:
    """The protocol, fixed before the floors were asserted (the stream and the baseline were
    chosen from the issue's words, the defaults while the strategy was built, on seeds 0-4):
    digits (25 % of each class held out), domains clean / rotated 90 degrees / inverted / flipped
    + noise (0.2 of the value range) in that order, batches of 64, pixels standardised on the
    stream; EAR with its defaults (encoder MLP 64-256-128 trained on the first domain and frozen at
    its end, 5 passes per batch over the current task's rows, HDC of 4096 signs on the input and
    the features, vote 0.25, adaptors of widths 4-32 x depth 1-2 under 5 % of the encoder's
    parameters, ridge proxy). Two controls, no growth: "one_adaptor", the issue's "sequential
    fine-tuning of one adaptor" (``max_experts=1, first_expert="adaptor"``: one adaptor of EAR's
    search space, chosen by the same proxy and trained like EAR's grown experts, on the clean domain
    and then on each later one; its protocol was fixed from the issue's and spec's words before it
    was run), and "seq", the encoder's head fine-tuned on every domain in turn (``max_experts=1``,
    the first control used: kept as a second, stronger one). Seeds 0 and 1 seed the split and the
    learners. Metrics from the engine's held-out evaluation (``cl_metrics``: class-IL, no task ids)."""
    out: dict[str, list[Any]] = {"results": [], "auroc": [], "sources": []}
    for seed in SEEDS:
        src = _domains(seed)
        result = _run(tf.Pipeline("ear-floors").source(src)
                      .learn(tf.EAR(10, seed=seed), name="ear")
                      .learn(tf.EAR(10, max_experts=1, seed=seed), name="seq")
                      .learn(tf.EAR(10, max_experts=1, first_expert="adaptor", seed=seed), name="one_adaptor"))
        out["results"].append(result)
        out["sources"].append(src)
        out["auroc"].append(_auroc_before_adapting(seed))
    return out


def _mean(results: list[tf.RunResult], name: str) -> float:
    return float(np.mean([r.cl_metrics[name].average_accuracy for r in results]))


def test_hdc_ood_auroc_on_the_strong_shifts(floors):
    """>= 0.8 on the inverted and the flipped + noise domains; rotation is reported (measured
    0.92-0.96 here: the memories see the input beside the features, see docs/methods/ear.md)."""
    for seed, au in zip(SEEDS, floors["auroc"]):
        assert au["invert"] >= 0.8 and au["flip+noise"] >= 0.8, (seed, au)
        assert au["rot90"] > 0.5, (seed, au)


def test_one_expert_per_domain_and_routing(floors):
    """An expert is grown in the first batch of each new domain (the strategy's events), and
    held-out rows of domain d go to expert d: >= 0.85 on at least 3 of the 4 domains."""
    for seed, result, src in zip(SEEDS, floors["results"], floors["sources"]):
        ear = result.strategies["ear"]
        assert len(ear.meta) == 4 and ear.meta[0]["depth"] == 0  # expert 0: the encoder's head
        events = [e for e in result.drift_events if e.step == "ear"]
        assert [e.detector for e in events] == ["EAR"] * 3
        for e, start in zip(events, src.plan.ends):
            assert start <= e.offset < start + 64
        held = src.held_out()
        routing = [float((ear.route(held[d]) == d).mean()) for d in range(4)]
        assert sum(r >= 0.85 for r in routing) >= 3, (seed, routing)
        for control in ("seq", "one_adaptor"):
            assert len(result.strategies[control].meta) == 1 and result.summary[control]["events_emitted"] == 0


def test_parameters_added_per_domain_within_5_percent_of_the_encoder(floors):
    for result in floors["results"]:
        counts = result.strategies["ear"].parameter_counts()
        assert counts["encoder"] == 64 * 256 + 256 + 256 * 128 + 128
        assert all(p <= 0.05 * counts["encoder"] for p in counts["experts"]), counts
        # the growth record says what the proxy chose among what fitted
        for record in result.strategies["ear"].growth_log:
            assert record["chosen"] in [c[:3] for c in record["candidates"]]
            assert all(c[2] <= 0.05 * counts["encoder"] for c in record["candidates"])


def test_the_one_adaptor_control_is_an_adaptor_of_ears_search_space_trained_on_the_clean_domain(floors):
    """The control the issue names: one expert, an adaptor (not the encoder's head) that the proxy
    chose among EAR's candidates within the same budget, and that learned the clean domain before
    the next one came (measured 0.92 / 0.93 on it then)."""
    for result in floors["results"]:
        control = result.strategies["one_adaptor"]
        (meta,) = control.meta
        assert meta["depth"] >= 1 and meta["width"] in control.widths, meta
        assert meta["params"] <= 0.05 * control.parameter_counts()["encoder"]
        (record,) = control.growth_log
        assert record["expert"] == 0 and record["chosen"] == [meta["width"], meta["depth"], meta["params"]]
        assert result.cl_metrics["one_adaptor"].matrix[0][0] >= 0.85, result.cl_metrics["one_adaptor"].matrix


def test_mean_final_accuracy_twice_sequential_fine_tuning_of_one_adaptor(floors):
    """The issue's floor. Measured (seeds 0, 1): EAR 0.812 / 0.809, one adaptor fine-tuned in turn
    0.188 / 0.298 (3.33 x; seeds 0-4: 2.51 to 4.32 x)."""
    ear, control = _mean(floors["results"], "ear"), _mean(floors["results"], "one_adaptor")
    assert ear >= 2 * control, (ear, control)


def test_mean_final_accuracy_well_above_sequential_fine_tuning(floors):
    """The second control, the encoder's head fine-tuned in turn. Measured (seeds 0, 1): EAR
    0.812 / 0.809, the head 0.457 / 0.397."""
    ear, seq = _mean(floors["results"], "ear"), _mean(floors["results"], "seq")
    assert ear >= 1.75 * seq and ear >= 0.75, (ear, seq)
    for result in floors["results"]:
        final = result.cl_metrics["ear"].matrix[-1]
        assert min(final) >= 0.55, final  # every domain kept, none traded for another


@pytest.mark.xfail(strict=True, reason="not the issue's floor (its control is one adaptor, above): against the "
                   "second control, the encoder's head fine-tuned in turn, EAR 0.811 vs 0.427 (seeds 0-1; 1.90 x; "
                   "seeds 0-4: 1.78 to 2.04 x). The head keeps 0.40-0.46 on the clean domain (flipped + noisy "
                   "digits share much of its features) and 0.73-0.80 on the last (docs/methods/ear.md)")
def test_mean_final_accuracy_twice_head_only_fine_tuning(floors):
    assert _mean(floors["results"], "ear") >= 2 * _mean(floors["results"], "seq")


# -- the reconfigurator ------------------------------------------------------------------------

def test_new_classes_on_an_existing_adaptor_get_a_reconfigurator_head():
    """Split digits in 2 tasks of 5 classes, one expert allowed: the encoder learns task 0 and
    freezes; task 1's classes get a second head on the same adaptor, while the first head does not
    move, and the HDC memory picks a row's head (class-IL) well enough to keep both tasks."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    src = split_classes(digits.images, digits.target, tasks=2, scenario="task", seed=0, batch_size=50)
    ear = tf.EAR(10, max_experts=1, seed=0)
    result = _run(tf.Pipeline("reconf").source(src).learn(ear, name="ear").learn(tf.EAR(10, seed=0), name="grow"))
    trained = result.strategies["ear"]
    assert trained.reconfigured == 1
    assert [h["classes"] for h in trained.meta[0]["heads"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    m = result.cl_metrics["ear"]
    # the first head and the encoder are frozen: task 0 is kept exactly within its classes; without
    # task ids the new head competes (measured: 99.6 % -> 97.4 %, where Avalanche's Naive keeps 23 %)
    assert m.matrix_til[1][0] == m.matrix_til[0][0]
    assert m.matrix[1][0] >= m.matrix[0][0] - 0.05 and m.average_accuracy >= 0.85, m.matrix
    # growth allowed, task 1 gets an expert of its own; under task-IL masking, the rows that go to
    # the other expert are decided by the expert that knows the task's classes (measured: 90.7 %
    # class-IL, 95.7 % task-IL; with the routed expert's scores alone both were 90.7 %)
    grown = result.cl_metrics["grow"]
    assert len(result.strategies["grow"].meta) == 2
    assert grown.average_accuracy_til >= grown.average_accuracy + 0.03, (grown.matrix, grown.matrix_til)
    # rows of a frozen head's classes arriving later are counted, not learned
    late = src.batches_[0]
    before = trained.snapshot()["experts"][0]["net"]
    report = trained.learn(late)
    assert report.skipped == {"class_of_frozen_head": len(late)}
    after = trained.snapshot()["experts"][0]["net"]
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- state and bad input -----------------------------------------------------------------------

def _feed(ear: tf.EAR, batches: list[tf.Batch]) -> None:
    for b in batches:
        ear.learn(b)
        if b.end_of_task:
            ear.on_task_boundary(tf.TaskBoundary("s", int(b.last_offset) + 1, None, None, "end_of_task"))


def test_snapshot_mid_domain_restores_exactly_through_a_sealed_checkpoint():
    src = _domains(2)
    batches = list(src)
    cut = next(i for i, b in enumerate(batches) if b.first_offset >= src.plan.ends[0]) + 2  # mid domain 1
    original = tf.EAR(10, seed=2)
    original.bind(src.schema())
    _feed(original, batches[:cut])
    state = original.snapshot()
    assert len(state["experts"]) == 2 and len(state["experts"][1]["train_y"]) > 64  # a task in progress
    twin = tf.EAR(10, seed=2)
    twin.bind(src.schema())
    twin.restore(unseal(seal(state)))
    held = tf.Batch.concat(list(src.held_out().values()))
    assert np.array_equal(twin.predict_scores(held).scores, original.predict_scores(held).scores)
    _feed(original, batches[cut:])
    _feed(twin, batches[cut:])
    assert np.array_equal(twin.predict_scores(held).scores, original.predict_scores(held).scores)
    assert_same(twin.snapshot(), original.snapshot(), "snapshot after learning on")


def test_an_adaptor_as_expert_0_trains_like_a_grown_expert_and_restores_mid_first_task():
    """``first_expert="adaptor"``: at the freeze, the adaptor makes the passes a grown expert would
    have made had the first task's batches come after it (5 passes over the rows so far, batch by
    batch), counted in the next report; a snapshot taken before the freeze, while the encoder
    learns, holds the batches the window's rows came in, so the twin grows and trains the same."""
    src = _domains(2)
    batches = list(src)
    first = [b for b in batches if b.last_offset < src.plan.ends[0]]
    assert first[-1].end_of_task and len(first) > 3
    original = tf.EAR(10, max_experts=1, first_expert="adaptor", seed=2)
    original.bind(src.schema())
    _feed(original, batches[:3])
    twin = tf.EAR(10, max_experts=1, first_expert="adaptor", seed=2)
    twin.bind(src.schema())
    twin.restore(unseal(seal(original.snapshot())))
    reports = {}
    for name, ear in (("original", original), ("twin", twin)):
        _feed(ear, batches[3:len(first)])
        assert ear.frozen and ear.meta[0]["depth"] >= 1 and not ear.meta[0]["heads"][0]["open"]
        reports[name] = ear.learn(batches[len(first)])
    sizes = np.array([len(b) for b in first])
    after = len(batches[len(first)])
    assert reports["original"].extra["train_rows"] == 5 * (np.cumsum(sizes).sum() + after)
    assert reports["twin"].extra == reports["original"].extra
    held = tf.Batch.concat(list(src.held_out().values()))
    assert np.array_equal(twin.predict_scores(held).scores, original.predict_scores(held).scores)
    assert_same(twin.snapshot(), original.snapshot(), "snapshot after the freeze")
    with pytest.raises(ValueError, match="first_expert"):
        tf.EAR(10, first_expert="encoder")


def test_bad_rows_are_counted_and_a_wrong_label_type_is_a_clear_error():
    src = _domains(0)
    batches = list(src)
    ear = tf.EAR(10, seed=0)
    ear.bind(src.schema())
    images = batches[0].tensor("image").copy()
    images[5] = np.inf
    labels = batches[0].column("label").to_pylist()
    labels[0], labels[1] = None, 12
    bad = batches[0].with_column("image", tf.tensor_array(images)).with_column("label", pa.array(labels, pa.int64()))
    report = ear.learn(bad)
    assert report.skipped == {"null_target": 1, "label_out_of_range": 1, "non_finite_features": 1}
    assert report.extra["train_rows"] == 5 * (len(bad) - 3)
    preds = ear.predict(bad)
    assert preds[5].as_py() is None and preds.null_count == 1
    with pytest.raises(SchemaError, match="integer labels"):
        ear.learn(batches[1].with_column("label", pa.array(["a"] * len(batches[1]))))


def test_a_table_in_three_domains_with_features_from_upstream():
    """Not images: a 16-feature table of 4 classes whose three domains are a rotation and a shift of
    the features (what a change of sensor does), through ``encoder=None`` (the features are what a
    frozen encoder upstream gave): one expert per domain, each domain kept."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=1800, n_features=16, n_informative=8, n_classes=4, n_clusters_per_class=1,
                               class_sep=2.0, random_state=4)
    rng = np.random.default_rng(4)
    views = [np.eye(16), np.linalg.qr(rng.normal(size=(16, 16)))[0], np.linalg.qr(rng.normal(size=(16, 16)))[0]]
    shifts = [np.zeros(16), rng.normal(size=16) * 2, rng.normal(size=16) * 2]
    dom = np.arange(1800) % 3
    xs = np.stack([x[i] @ views[d] + shifts[d] for i, d in enumerate(dom)]).astype(np.float32)
    test = np.arange(1800) % 5 == 0
    batches, held, offset = [], {}, 0
    for d in range(3):
        rows = np.flatnonzero((dom == d) & ~test)
        for s in range(0, len(rows), 60):
            part = rows[s:s + 60]
            b = tf.Batch.from_pydict({"x": tf.tensor_array(xs[part]), "y": y[part]}, stream_id="table",
                                     first_offset=offset)
            batches.append(tf.Batch(b.data, "table", s + 60 >= len(rows)))
            offset += len(part)
        rows = np.flatnonzero((dom == d) & test)
        held[d] = tf.Batch.from_pydict({"x": tf.tensor_array(xs[rows]), "y": y[rows]}, stream_id="held")
    schema = tf.Schema({"x": tf.Tensor((16,)), "y": "int64"}, target="y")
    src = tf.MemorySource(batches, schema, stream_id="table", held_out=held)
    result = _run(tf.Pipeline("table").source(src)
                  .learn(tf.EAR(4, encoder=None, max_params=400, dim=2048, seed=0), name="ear")
                  .learn(tf.EAR(4, encoder=None, max_params=400, dim=2048, max_experts=1, seed=0), name="seq"))
    ear = result.strategies["ear"]
    assert len(ear.meta) == 3
    routing = [float((ear.route(held[d]) == d).mean()) for d in range(3)]
    final, seq = result.cl_metrics["ear"].matrix[-1], result.cl_metrics["seq"].matrix[-1]
    assert min(routing) >= 0.95 and min(final) >= 0.8 and np.mean(final) > np.mean(seq) + 0.1, (routing, final, seq)


# -- runners -----------------------------------------------------------------------------------

def _ray_pipeline() -> tf.Pipeline:
    return (tf.Pipeline("ear-ray").source(_domains(3))
            .detect(tf.HDCDetector(on="image", label="label", name="hdc"))
            .learn(tf.EAR(10, seed=3), name="ear"))


def test_ray_runner_checkpoints_and_a_resumed_run_give_the_local_metrics(tmp_path, ray_session):
    """The detector and EAR on the Ray runner, checkpointed every 4 batches and stopped after 10;
    the run resumed from its checkpoint folder ends with the local run's per-batch records, events,
    accuracy matrix and predictions."""
    local = _run(_ray_pipeline())
    ckpt = tmp_path / "ckpt"
    _run(_ray_pipeline(), runner="ray", checkpoint_dir=ckpt, checkpoint_every=4, max_batches=10)
    resumed = _run(_ray_pipeline(), runner="ray", checkpoint_dir=ckpt, resume=True)
    assert comparable(resumed.per_batch) == comparable(local.per_batch)
    assert [e.to_dict() for e in resumed.drift_events] == [e.to_dict() for e in local.drift_events]
    assert resumed.cl_metrics["ear"].to_dict() == local.cl_metrics["ear"].to_dict()
    held = _domains(3).held_out()[2]
    assert np.array_equal(resumed.strategies["ear"].predict_scores(held).scores,
                          local.strategies["ear"].predict_scores(held).scores)
    assert len([e for e in local.drift_events if e.step == "hdc"]) == 3
