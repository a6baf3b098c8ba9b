"""The pipeline ``test_join_cluster.py`` replays on a cluster started with ``ray start``.

``tideflow replay REC --pipeline tests/pipelines/join_pipeline.py``: two River learners;
``pinned`` asks for the custom resource ``TIDEFLOW_TEST_PINNED_RESOURCE`` (default
``strategy_node``, which only the test cluster's worker node has), so the run can only
finish if that node took part; ``anywhere`` goes where Ray puts it.
"""

from __future__ import annotations

import os
from typing import Any


def build(source: Any = None) -> Any:
    from river import linear_model, preprocessing, tree

    import tideflow as tf

    pinned = os.environ.get("TIDEFLOW_TEST_PINNED_RESOURCE", "strategy_node")
    logistic = tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LogisticRegression())
    hoeffding = tf.RiverStrategy(tree.HoeffdingTreeClassifier(grace_period=50))
    return (tf.Pipeline("joined").source(source).validate()
            .detect(tf.DetectDrift(on="x0"))
            .learn(logistic, name="pinned", resources={pinned: 1})
            .learn(hoeffding, name="anywhere", detector="ADWIN"))
