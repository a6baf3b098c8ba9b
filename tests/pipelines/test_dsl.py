"""The DSL builds a readable graph and rejects broken graphs before anything runs, naming the step."""

from __future__ import annotations

import pytest
from river import linear_model, preprocessing, tree

import tideflow as tf


def _src(**kw):
    return tf.SyntheticSource("friedman-drift", n=400, batch_size=100, **kw)


def _reg():
    return tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression())


def test_print_shows_every_step_and_route():
    p = (tf.Pipeline("demo").source(_src()).validate().detect(tf.DetectDrift(on="x0"))
         .learn(_reg(), name="lin", detector="ADWIN")
         .learn(_reg(), name="per_key", route=tf.Keyed("x1", actors=2)))
    text = str(p)
    for part in ("Pipeline 'demo'", "source", "validate", "adwin_x0", "lin", "per_key", "keyed(x1, actors=2)",
                 "error detector=ADWIN", "broadcast"):
        assert part in text


def test_missing_source_is_an_error():
    with pytest.raises(tf.GraphError, match="no source"):
        tf.Pipeline("p").learn(_reg(), name="lin").build()


def test_duplicate_step_names_are_named():
    p = tf.Pipeline("p").source(_src()).learn(_reg(), name="lin").learn(_reg(), name="lin")
    with pytest.raises(tf.GraphError, match="duplicate step name 'lin'"):
        p.build()


def test_two_strategies_of_one_kind_need_names():
    p = tf.Pipeline("p").source(_src()).learn(_reg(), _reg())
    with pytest.raises(tf.GraphError, match="duplicate step name 'linearregression'"):
        p.build()


def test_unknown_step_named_in_detector_routing():
    p = (tf.Pipeline("p").source(_src()).detect(tf.DetectDrift(on="x0"), to=["nope"])
         .learn(_reg(), name="lin"))
    with pytest.raises(tf.GraphError, match=r"'adwin_x0' sends drift events to unknown learn step\(s\) \['nope'\]"):
        p.build()


def test_strategy_without_target_names_the_step():
    schema = tf.Schema({f"x{i}": "float64" for i in range(10)} | {"y": "float64"})  # no target role
    src = tf.MemorySource([], schema)
    p = tf.Pipeline("p").source(src).learn(_reg(), name="lin")
    with pytest.raises(tf.GraphError, match="learn step 'lin'.*no target column"):
        p.build()


def test_strategy_target_not_in_schema():
    p = tf.Pipeline("p").source(_src()).learn(tf.RiverStrategy(linear_model.LinearRegression(), target="price"),
                                              name="lin")
    with pytest.raises(tf.GraphError, match="learn step 'lin'.*'price'"):
        p.build()


def test_schema_mismatch_between_source_and_validate():
    schema = tf.Schema({"x0": "float64", "temperature": "float64", "y": "float64"}, target="y")
    p = tf.Pipeline("p").source(_src()).validate(schema).learn(_reg(), name="lin")
    with pytest.raises(tf.GraphError, match="validate step 'validate' expects field 'temperature'"):
        p.build()


def test_detector_on_unknown_column():
    p = tf.Pipeline("p").source(_src()).detect(tf.DetectDrift(on="wind")).learn(_reg(), name="lin")
    with pytest.raises(tf.GraphError, match="detect step 'adwin_wind' watches column 'wind'"):
        p.build()


def test_keyed_route_on_unknown_column():
    p = tf.Pipeline("p").source(_src()).learn(_reg(), name="lin", route=tf.Keyed("link"))
    with pytest.raises(tf.GraphError, match="learn step 'lin' routes by key 'link'"):
        p.build()


def test_pipeline_needs_a_consumer():
    with pytest.raises(tf.GraphError, match="neither a learn step nor a sink"):
        tf.Pipeline("p").source(_src()).validate().build()


def test_wrong_objects_are_rejected_early():
    with pytest.raises(TypeError):
        tf.Pipeline("p").source(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tf.Pipeline("p").source(_src()).learn(tree.HoeffdingTreeClassifier())  # a bare River model


def test_graph_is_data():
    g = tf.Pipeline("demo").source(_src()).validate().learn(_reg(), name="lin").build()
    d = g.to_dict()
    assert [s["name"] for s in d["steps"]] == ["source", "validate", "lin"]
    assert d["steps"][2]["route"] == "broadcast"
    assert g.fingerprint() == tf.Pipeline("demo").source(_src()).validate().learn(_reg(), name="lin").build().fingerprint()
    assert g.fingerprint() != tf.Pipeline("demo").source(_src(seed=1)).validate().learn(_reg(), name="lin").build().fingerprint()
