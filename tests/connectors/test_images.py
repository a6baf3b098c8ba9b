"""Image streams: the five splits, held-out sets per task, the engine on them, bad input, other data
(Fashion-MNIST from Debian's package, a user's torch arrays of other shapes), the frozen encoder and
its feature cache, and recording a stream from a source spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tideflow as tf
from tideflow.connectors.image_data import FASHION_MNIST_DIR
from tideflow.connectors.images import ImageStream
from tideflow.connectors.recording import RecordingSource
from tideflow.stream.encoder import FrozenEncoder, encoder_version

SPLITS = ["class-incremental", "task-incremental", "domain-incremental", "blurry", "task-free"]


def _rows(stream: ImageStream) -> tuple[list[tf.Batch], np.ndarray, np.ndarray]:
    batches = list(stream)
    return (batches, np.concatenate([b.numpy(stream.column).reshape(len(b), -1) for b in batches]),
            np.concatenate([b.numpy("label") for b in batches]))


# -- the splits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_splits_of_split_digits(split):
    s = ImageStream("digits", split=split, tasks=5, seed=3, batch_size=50)
    plan, data = s.plan, s.data
    batches, x, y = _rows(s)
    # every training image exactly once, offsets 0..n-1 in order, no test image in the stream
    assert sorted(plan.order.tolist()) == data.train.tolist() and len(x) == s.num_rows == len(data.train)
    assert np.concatenate([b.offsets for b in batches]).tolist() == list(range(s.num_rows))
    assert all(0 < len(b) <= 50 for b in batches)
    assert np.abs(x.mean(axis=0)).max() < 1e-4  # standardised on the training rows
    held = s.held_out()
    assert sorted(held) == [0, 1, 2, 3, 4]
    assert sum(len(b) for b in held.values()) == (len(data.test) * (5 if split == "domain-incremental" else 1))
    # task roles: a task id only where the learner may see it; marks exactly at task ends
    schema = s.schema()
    assert (schema.task == "task") == (split in ("task-incremental", "task-free"))
    assert schema.target == "label" and schema.feature_names == ["image"]
    marked = [b.last_offset + 1 for b in batches if b.end_of_task]
    assert marked == (plan.ends if split in ("class-incremental", "domain-incremental", "blurry") else [])
    if split == "task-free":  # not even a short batch gives a task end away
        assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1)
    else:
        assert set(plan.ends) <= {b.last_offset + 1 for b in batches}
    assert s.boundaries == (() if split == "task-free" else ("task_column", "end_of_task"))
    bounds = [0, *plan.ends, s.num_rows]
    if split == "domain-incremental":
        # every task has every class; task t is shown rotated by 36 t degrees (its held-out set too)
        for t in range(5):
            assert sorted(set(y[bounds[t]:bounds[t + 1]].tolist())) == list(range(10))
            assert sorted(set(held[t].numpy("label").tolist())) == list(range(10))
        assert [s.plan.views[t] for t in range(5)] == [0.0, 36.0, 72.0, 108.0, 144.0]
        assert not np.allclose(held[0].tensor("image"), held[1].tensor("image"))
        return
    classes = plan.task_classes
    assert sorted(c for g in classes for c in g) == list(range(10)) and all(len(g) == 2 for g in classes)
    assert plan.class_order != list(range(10))  # seeded, not the labels' order
    for t in range(5):
        assert set(held[t].numpy("label").tolist()) == set(classes[t])
        segment = set(y[bounds[t]:bounds[t + 1]].tolist())
        if split != "blurry":
            assert segment == set(classes[t])  # task-free: the same order, boundaries not told
        else:  # blurry: the neighbours' classes only inside the mixing windows
            w = [int(0.1 * min(bounds[k + 1] - bounds[k], bounds[k + 2] - bounds[k + 1])) for k in range(4)]
            lo = bounds[t] + (w[t - 1] if t else 0)
            hi = bounds[t + 1] - (w[t] if t < 4 else 0)
            assert set(y[lo:hi].tolist()) == set(classes[t])
            assert segment - set(classes[t])  # rows of a neighbouring task were mixed in
    if schema.task:
        tasks = np.concatenate([b.numpy("task") for b in batches])
        label_task = {c: t for t, g in enumerate(classes) for c in g}
        assert tasks.tolist() == [label_task[int(v)] for v in y]


def test_seeded_seekable_and_restorable():
    def stream(seed: int = 0) -> ImageStream:
        return ImageStream("digits", split="class-incremental", seed=seed, batch_size=64)

    a, b = list(stream()), list(stream())
    assert all(x.data.equals(y.data) and x.end_of_task == y.end_of_task for x, y in zip(a, b))
    assert stream(1).plan.class_order != stream(0).plan.class_order
    whole = tf.Batch.concat(a)
    # seek into the middle of a batch: the rows from there on are the uninterrupted stream's
    src = stream()
    src.seek(300)
    rest = list(src)
    assert rest[0].first_offset == 300 and tf.Batch.concat(rest).data.equals(whole.slice(300).data)
    assert [r.last_offset for r in rest if r.end_of_task] == [e - 1 for e in src.plan.ends if e > 300]
    # a snapshot taken after some batches restores in a fresh source (a resumed run)
    src = stream()
    it = iter(src)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(src.snapshot()))
    fresh = stream()
    fresh.restore(state)
    assert [x.data.equals(y.data) for x, y in zip(fresh, a[7:])] == [True] * (len(a) - 7)


def test_unlabeled_rows_are_the_training_images_without_labels():
    s = ImageStream("digits", split="task-incremental", seed=0)
    u = s.unlabeled()
    assert u.column_names == ["offset", "image"] and len(u) == s.num_rows
    assert np.array_equal(u.tensor("image"), tf.Batch.concat(list(s)).tensor("image"))
    some = ImageStream("digits", split="task-incremental", seed=0, unlabeled_rows=100).unlabeled()
    assert len(some) == 100 and np.array_equal(some.tensor("image"), u.tensor("image")[some.offsets])


# -- the engine on image streams -----------------------------------------------------------------

def test_the_engine_evaluates_every_task_of_an_image_stream():
    def run(split: str):
        s = ImageStream("digits", split=split, tasks=5, seed=0, batch_size=64)
        learner = tf.AvalancheStrategy("Naive", n_classes=10, hidden=32, seed=0)
        p = tf.Pipeline(split).source(s).validate().learn(learner, name="mlp", boundaries=s.boundaries)
        return s, p.run(tracking=False, progress=False)

    s, cil = run("class-incremental")
    m = cil.cl_metrics["mlp"]
    held = {t: len(b) for t, b in s.held_out().items()}
    assert len(m.matrix) == 5 and all(len(r) == 5 for r in m.matrix)
    assert cil.summary["mlp"]["task_boundaries"] == 4 and cil.rows == s.num_rows
    assert [r["rows_scored"] for r in cil.evaluations["mlp"] if r["point"] == "start"] == list(held.values())
    assert m.matrix[0][0] > 0.9 and m.matrix[4][0] < m.matrix[0][0]  # learned, then forgotten (naive)
    assert m.matrix_til is None  # no task ids: class-incremental only
    _, til = run("task-incremental")
    mt = til.cl_metrics["mlp"]
    assert mt.matrix == m.matrix and mt.average_accuracy_til > mt.average_accuracy
    assert sorted(til.summary["mlp"]["by_task"]) == [0, 1, 2, 3, 4]
    # task-free: the learner is never told of a task, yet the held-out sets are evaluated where
    # the task column changes (one matrix row per task), besides the start and the end
    _, free = run("task-free")
    assert free.summary["mlp"]["task_boundaries"] == 0
    assert [r["point"] for r in free.evaluations["mlp"]] == ["start"] * 5 + ["boundary"] * 20 + ["end"] * 5
    assert len(free.cl_metrics["mlp"].matrix) == 5
    assert sorted(free.summary["mlp"]["by_task"]) == [0, 1, 2, 3, 4]


# -- other data ---------------------------------------------------------------------------------

def test_fashion_mnist_from_the_debian_package():
    s = ImageStream("fashion-mnist", split="task-incremental", tasks=5, seed=1, train_per_class=30,
                    test_per_class=10, batch_size=64)
    assert s.data.shape == (28, 28) and s.data.origin.startswith(str(FASHION_MNIST_DIR))
    assert len(s.data.train) == 300 and s.num_rows == 300
    assert np.all(s.data.test >= 60_000)  # the data set's own test split
    batches, x, y = _rows(s)
    assert x.shape == (300, 784) and sorted(set(y.tolist())) == list(range(10))
    assert {t: len(b) for t, b in s.held_out().items()} == {t: 20 for t in range(5)}


def test_a_missing_data_set_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist.*nothing is downloaded"):
        ImageStream("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown image data set 'mnist'"):
        ImageStream("mnist")


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # batches are read-only
def test_from_arrays_of_other_shapes_numpy_and_torch():
    import torch

    rng = np.random.default_rng(5)
    # RGB images channels first as torch tensors, six classes 10..15, three tasks
    x = torch.from_numpy(rng.uniform(0, 1, size=(240, 3, 6, 5)).astype(np.float32))
    y = torch.from_numpy(np.repeat(np.arange(10, 16), 40))
    xt = torch.from_numpy(rng.uniform(0, 1, size=(60, 3, 6, 5)).astype(np.float32))
    yt = torch.from_numpy(np.repeat(np.arange(10, 16), 10))
    s = ImageStream.from_arrays(x, y, xt, yt, split="task-incremental", tasks=3, seed=2, batch_size=32)
    assert s.data.layout == "chw" and s.schema().fields["image"].type.shape == [3, 6, 5]
    batches, flat, labels = _rows(s)
    assert len(flat) == 240 and sorted(set(labels.tolist())) == list(range(10, 16))
    assert torch.from_numpy(batches[0].tensor("image")).shape == (32, 3, 6, 5)  # zero-copy to torch
    assert sum(len(b) for b in s.held_out().values()) == 60
    rotated = ImageStream.from_arrays(x, y, xt, yt, split="domain-incremental", tasks=2, standardize=False)
    assert rotated.num_rows == 240 and len(rotated.held_out()[1]) == 60
    resized = ImageStream.from_arrays(x, y, xt, yt, tasks=3, image_size=12, class_order=range(10, 16))
    assert next(iter(resized)).tensor("image").shape[1:] == (3, 12, 12) == resized.row_shape
    assert json.loads(json.dumps(resized.metadata()))["class_order"] == list(range(10, 16))
    # feature vectors (not images): streamed and permuted, not rotated
    v = rng.normal(size=(100, 12))
    vy = np.arange(100) % 4
    vs = ImageStream.from_arrays(v, vy, v[:20], vy[:20], split="domain-incremental", tasks=2, domain="permutation",
                                 standardize=False)
    assert vs.data.layout is None and vs.row_shape == (12,)
    first, second = vs.held_out()[0].tensor("image"), vs.held_out()[1].tensor("image")
    assert np.allclose(np.sort(first, axis=1), np.sort(second, axis=1)) and not np.allclose(first, second)
    with pytest.raises(ValueError, match=r"\(12,\) are not .* images: they cannot be resized, rotated or encoded"):
        ImageStream.from_arrays(v, vy, v[:20], vy[:20], split="domain-incremental", tasks=2)


@pytest.mark.parametrize("data", ["digits", "arrays"])
def test_rows_per_task_all_gives_every_task_the_whole_training_set_in_its_view(data):
    """The standard permuted benchmark (``rows_per_task="all"``): every task is every training row,
    in its own order, through the task's permutation (view 0 unpermuted); the views and the held-out
    sets are those of the default plan, which is unchanged; a split without views refuses it."""
    if data == "digits":
        kw = dict(tasks=5, seed=4)
        make = lambda **k: ImageStream("digits", split="domain-incremental", domain="permutation",  # noqa: E731
                                       standardize=False, batch_size=5000, **kw, **k)
    else:  # not the project's data: 7x3 images of 3 classes from a user's arrays
        rng = np.random.default_rng(1)
        x, xt = rng.uniform(0, 1, size=(90, 7, 3)), rng.uniform(0, 1, size=(30, 7, 3))
        kw = dict(tasks=3, seed=2)
        make = lambda **k: ImageStream.from_arrays(x, np.arange(90) % 3, xt, np.arange(30) % 3,  # noqa: E731
                                                   split="domain-incremental", domain="permutation",
                                                   standardize=False, batch_size=5000, **kw, **k)
    s, share = make(rows_per_task="all"), make()
    tasks, train = kw["tasks"], s.data.train
    batches, flat, y = _rows(s)
    assert s.num_rows == tasks * len(train) == len(flat) and share.num_rows == len(train)
    assert [b.last_offset + 1 for b in batches if b.end_of_task] == s.plan.ends == [len(train) * t for t in range(1, tasks)]
    for t in range(tasks):
        rows = s.plan.order[t * len(train):(t + 1) * len(train)]
        assert sorted(rows.tolist()) == train.tolist()  # every training row once per task
        perm = s.plan.views[t]
        assert (perm is None) == (t == 0) and (t == 0 or np.array_equal(perm, share.plan.views[t]))
        want = s.data.x[rows].reshape(len(rows), -1).astype(np.float32)
        np.testing.assert_array_equal(flat[t * len(train):(t + 1) * len(train)],
                                      want if perm is None else want[:, perm])
        np.testing.assert_array_equal(y[t * len(train):(t + 1) * len(train)], s.data.y[rows])
        np.testing.assert_array_equal(s.held_out()[t].tensor("image"), share.held_out()[t].tensor("image"))
    assert not np.array_equal(s.plan.order[:len(train)], s.plan.order[len(train):2 * len(train)])  # reshuffled
    assert s.params()["rows_per_task"] == "all" and "rows_per_task" not in share.params()
    assert s.stream_id == share.stream_id + "-all"
    with pytest.raises(ValueError, match="rows_per_task='all' applies to the domain-incremental split only"):
        ImageStream("digits", split="task-incremental", rows_per_task="all")
    with pytest.raises(ValueError, match=r"rows_per_task must be one of \['share', 'all'\], got 'half'"):
        ImageStream("digits", split="domain-incremental", rows_per_task="half")


# -- bad input -----------------------------------------------------------------------------------

def test_bad_input_is_refused_with_the_column_and_the_value():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, size=(40, 4, 4)), np.arange(40) % 4
    nan = x.copy()
    nan[17, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"x_train row 17: column 'image' holds nan at pixel \(2, 3\)"):
        ImageStream.from_arrays(nan, y, x[:8], y[:8], tasks=2)
    with pytest.raises(ValueError, match=r"y_test row 3: column 'label' holds 7, which is not one of the classes "
                                         r"\[0, 1, 2, 3\]"):
        ImageStream.from_arrays(x, y, x[:8], np.array([0, 1, 2, 7, 0, 1, 2, 3]), tasks=2)
    with pytest.raises(ValueError, match=r"y_train row 3: column 'label' holds 3, which is not one of the classes"):
        ImageStream.from_arrays(x, y, x[:8], y[:8], classes=[0, 1, 2], tasks=3)
    with pytest.raises(ValueError, match=r"y_train row 2: column 'label' holds 1.5, not an integer class id"):
        ImageStream.from_arrays(x, np.array([0, 1, 1.5] + [0] * 37), x[:8], y[:8])
    with pytest.raises(ValueError, match=r"x_test images are \(5, 4\), x_train's \(4, 4\): column 'image'"):
        ImageStream.from_arrays(x, y, rng.uniform(size=(8, 5, 4)), y[:8])
    with pytest.raises(ValueError, match=r"x_train row 1: column 'image' has shape \(3, 4\), row 0 has \(4, 4\)"):
        ImageStream.from_arrays([x[0], x[1][:3], x[2]], y[:3], x[:8], y[:8])
    # an empty task: a class without training rows, more tasks than classes, a task without test rows
    with pytest.raises(ValueError, match=r"classes \[4\] have no training rows .* their task would be empty"):
        ImageStream.from_arrays(x, y, x[:8], y[:8], classes=[0, 1, 2, 3, 4], tasks=5)
    with pytest.raises(ValueError, match="5 tasks need at least 5 classes"):
        ImageStream.from_arrays(x, y, x[:8], y[:8], tasks=5)
    with pytest.raises(ValueError, match=r"task 1 \(classes \[.*\]\) has no test rows"):
        ImageStream.from_arrays(x, y, x[:2], y[:2], tasks=2, class_order=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"class_order must list every class once.*missing \[3\]"):
        ImageStream("digits", class_order="0;1;2;4;5;6;7;8;9")


def test_validate_quarantines_bad_rows_of_an_image_stream():
    s = ImageStream("digits", split="task-incremental", seed=0, batch_size=20)
    first, second = list(s)[:2]
    v = tf.Validate(s.schema())
    img = first.tensor("image").copy()
    img[3, 0, 0] = np.nan
    assert len(v.process(first.with_column("image", tf.tensor_array(img)))) == 19
    assert v.process(second.with_column("image", tf.tensor_array(np.zeros((20, 7, 7), np.float32)))) is None
    assert v.counts == {"nan": 1, "wrong_shape": 20}
    rows = [r for t in v.drain().quarantine for r in t.to_pylist()]
    assert {(r["reason"], r["detail"].split(":")[0]) for r in rows} == {("nan", "image"), ("wrong_shape", "image")}
    assert [r["offset"] for r in rows if r["reason"] == "nan"] == [3]


# -- the frozen encoder and its cache --------------------------------------------------------------

def test_encoder_features_are_cached_by_content_and_a_stale_entry_is_not_trusted(tmp_path):
    images = ImageStream("digits").data.x[:48]
    enc = FrozenEncoder(input_size=32, cache_dir=tmp_path)
    first = enc.encode(images, value_range=(0, 16))
    assert first.shape == (48, 1280) and first.dtype == np.float32 and np.isfinite(first).all()
    assert (enc.computed, enc.cache.misses, enc.cache.hits) == (48, 1, 0)
    again = FrozenEncoder(input_size=32, cache_dir=tmp_path)
    assert np.array_equal(again.encode(images, value_range=(0, 16)), first) and again.computed == 0
    # other preprocessing or other images: another entry, not this one
    assert FrozenEncoder(input_size=40, cache_dir=tmp_path).encode(images[:4], value_range=(0, 16)).shape == (4, 1280)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    (npy,) = [p for p in tmp_path.glob("*.npy") if json.loads(p.with_suffix(".json").read_text())["rows"] == 48]
    # an edited feature file: detected by its checksum, recomputed, replaced
    np.save(npy, first + 1.0)
    with pytest.warns(RuntimeWarning, match="stale .*checksum"):
        fixed = again.encode(images, value_range=(0, 16))
    assert np.array_equal(fixed, first) and again.cache.stale == 1 and again.computed == 48
    # an entry that claims another encoder version under this key: not trusted either
    meta = npy.with_suffix(".json")
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "encoder": doc["encoder"].replace("torch==", "torch==0.")}))
    with pytest.warns(RuntimeWarning, match="stale .*encoder differs"):
        again.encode(images, value_range=(0, 16))
    assert again.cache.stale == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(again.encode(images, value_range=(0, 16)), first)  # the rewritten entry is good
    assert "weights-sha256=" in encoder_version() and "efficientnet-lite-pytorch==" in encoder_version()


def test_every_split_reuses_the_encoded_features_and_a_warm_cache_needs_no_torch(tmp_path):
    enc = FrozenEncoder(cache_dir=tmp_path)  # the default input size (64 px)
    opts = dict(encoder=enc, train_per_class=12, test_per_class=6, seed=4)
    cil = ImageStream("digits", split="class-incremental", **opts)
    assert cil.schema().fields["features"].type.shape == [1280] and cil.schema().feature_names == ["features"]
    x = tf.Batch.concat(list(cil)).tensor("features")
    assert x.shape == (120, 1280) and enc.computed == 180  # train and test images, encoded once
    for split in ("task-incremental", "blurry", "task-free"):
        s = ImageStream("digits", split=split, **opts)
        assert len(tf.Batch.concat(list(s))) == 120 and len(s.held_out()) == 5
    assert enc.computed == 180 and enc.cache.hits == 3
    # a fresh process with the warm cache: same features, torch never imported
    code = (
        "import sys, numpy as np\n"
        "from tideflow.connectors.images import ImageStream\n"
        f"s = ImageStream('digits', split='task-free', encoder='efficientnet-lite0', cache_dir={str(tmp_path)!r},"
        " train_per_class=12, test_per_class=6, seed=4)\n"
        "h = s.held_out()\n"
        "np.save(sys.argv[1], np.concatenate([b.tensor('features') for b in s]))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert s.encoder.computed == 0\n")
    out = tmp_path / "x.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert np.array_equal(np.load(out), x)


# -- recording, source spec ----------------------------------------------------------------------

def test_record_an_image_stream_from_a_source_spec(tmp_path):
    from tideflow.cli import main

    path = tmp_path / "d.arrow"
    assert main(["record", "images:dataset=digits,split=task-incremental,seed=2,batch_size=100", "-o", str(path),
                 "--no-progress"]) == 0
    replay = RecordingSource(path)
    live = ImageStream("digits", split="task-incremental", seed=2, batch_size=100)
    assert replay.schema().task == "task" and replay.schema().target == "label"
    assert tf.Batch.concat(list(replay)).data.equals(tf.Batch.concat(list(live)).data)
    meta = replay.metadata()
    assert meta["task_classes"] == live.plan.task_classes and meta["split"] == "task-incremental"
    replay.seek(250)
    assert next(iter(replay)).first_offset == 250
