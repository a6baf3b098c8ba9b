"""Batch basics, tensor columns without copies, and the plain-data state codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from river import drift, linear_model, preprocessing, tree

import tideflow as tf
from tideflow.stream.state import UnsafeStateError, from_plain, to_plain


def test_batch_needs_int_offsets():
    import pyarrow as pa

    with pytest.raises(ValueError, match="no 'offset' column"):
        tf.Batch(pa.record_batch({"x": [1.0]}))
    with pytest.raises(TypeError, match="must be int64"):
        tf.Batch(pa.record_batch({"offset": pa.array([1.0]), "x": [1.0]}))


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_tensor_column_is_zero_copy_to_numpy_and_torch():
    imgs = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    b = tf.Batch.from_pydict({"image": imgs, "label": [0, 1]})
    arr = b.tensor("image")
    assert arr.shape == (2, 3, 4) and np.array_equal(arr, imgs)
    t = torch.from_numpy(arr)  # read-only view: Arrow buffers are immutable
    assert t.data_ptr() == arr.__array_interface__["data"][0]  # torch shares numpy's (Arrow's) memory
    col = b.column("image")
    assert arr.__array_interface__["data"][0] == col.storage.values.buffers()[1].address


def test_features_stack_scalars_and_flattened_tensors():
    b = tf.Batch.from_pydict({"a": [1.0, 2.0], "v": np.ones((2, 3), dtype=np.float32)})
    assert b.features(["a", "v"]).shape == (2, 4)


def test_take_filter_concat_keep_offsets():
    b = tf.Batch.from_pydict({"x": [1.0, 2.0, 3.0]}, first_offset=5)
    assert b.take([2, 0]).offsets.tolist() == [7, 5]
    assert b.filter([False, True, True]).first_offset == 6
    assert tf.Batch.concat([b.slice(0, 1), b.slice(2)]).offsets.tolist() == [5, 7]


@pytest.mark.parametrize("make", [
    lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
    lambda: tree.HoeffdingTreeClassifier(grace_period=20),
])
def test_river_models_round_trip_as_plain_data(make):
    rng = np.random.default_rng(0)
    model = make()
    clf = isinstance(model, tree.HoeffdingTreeClassifier)
    rows = [({"a": float(a), "b": float(b)}, int(a > b) if clf else float(a - b)) for a, b in rng.normal(size=(300, 2))]
    for x, y in rows[:200]:
        model.learn_one(x, y)
    copy = from_plain(to_plain(model))
    for x, y in rows[200:]:
        assert copy.predict_one(x) == model.predict_one(x)
        model.learn_one(x, y)
        copy.learn_one(x, y)


def test_cython_drift_detector_round_trips():
    d = drift.ADWIN()
    rng = np.random.default_rng(1)
    for v in rng.random(400):
        d.update(v)
    c = from_plain(to_plain(d))
    for v in np.r_[rng.random(100), rng.random(300) + 1]:
        d.update(v)
        c.update(v)
        assert d.drift_detected == c.drift_detected
    assert d.width == c.width


def test_loading_refuses_names_outside_the_allow_list():
    state = {"__reduce__": "os.system", "args": ["echo pwned"], "id": 0}
    with pytest.raises(UnsafeStateError, match="os.system"):
        from_plain(state)
    with pytest.raises(UnsafeStateError):
        from_plain({"__ref__": "subprocess.Popen"})


def test_plain_state_contains_no_objects():
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    model.learn_one({"a": 1.0}, 1.0)

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                assert isinstance(k, str)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert isinstance(v, (type(None), bool, int, float, str, bytes)), type(v)

    walk(to_plain(model))


def test_sealed_snapshots_carry_tensors_as_bytes_and_load_without_pickle():
    import io
    import pickle

    from tideflow.stream.state import seal, unseal

    model = linear_model.LinearRegression()
    model.learn_one({"a": 1.0}, 2.0)
    state = {"w": torch.arange(6.0).reshape(2, 3), "river": model, "n": 3}
    sealed = seal(state)
    assert set(sealed) == {"__sealed__"} and isinstance(sealed["__sealed__"], bytes)
    back = unseal(sealed)
    assert torch.equal(back["w"], state["w"]) and back["n"] == 3
    assert back["river"].predict_one({"a": 1.0}) == model.predict_one({"a": 1.0})
    assert set(seal({"n": 3})) == {"__plain__"}  # no tensors: plain data as it is

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    # a pickled object planted in the bytes is refused by torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save({"x": Boom()}, buf, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        unseal({"__sealed__": buf.getvalue()})
    # and a function named in the plain tree is refused by the allow-list
    with pytest.raises(UnsafeStateError):
        unseal(seal({"f": Boom(), "w": torch.ones(1)}))


def test_the_driver_does_not_import_torch_for_checkpoints_of_torch_learners(tmp_path):
    """Checkpoints of torch learners on the Ray runner travel sealed and are written as JSON: the
    driver holds and writes bytes, so it never imports torch (~470 MiB resident) for them."""
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text('''
import sys
import tideflow as tf
src = tf.SyntheticSource("sea-drift", n=3000, batch_size=100, seed=1)
r = (tf.Pipeline("sealed").source(src).validate()
     .learn(tf.AvalancheStrategy("Naive", n_classes=2, hidden=8, seed=1), name="net")
     .run(runner="ray", tracking=False, progress=False, checkpoint_every=3, max_in_flight=2,
          checkpoint_dir="ckpt"))
assert r.summary["net"]["samples_trained"] == 3000, r.summary
from tideflow.pipelines.checkpoint import CheckpointStore
assert len(CheckpointStore("ckpt", fingerprint="?").files()) == 2
print("TORCH_IN_DRIVER", "torch" in sys.modules)
''')
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TORCH_IN_DRIVER False" in proc.stdout, proc.stdout[-2000:]
