"""The ``drift`` pipeline: a drifting River stream, River and Avalanche learners side by side.

The default job until the link-load pipeline exists: the SEA concept stream
(River's ``ConceptDriftStream``: SEA variant 0 drifting gradually to variant 2
halfway), validated against its schema, watched by an ADWIN detector on a
feature, and learned prequentially by four strategies on the same batches:

* ``hoeffding_tree``: River's Hoeffding tree, with ADWIN on its own error;
* ``logistic``: River's standardised logistic regression;
* ``avalanche_naive``: an MLP trained by Avalanche's Naive strategy;
* ``avalanche_replay``: the same MLP with Avalanche's Replay (500 rows of memory).
"""

from __future__ import annotations

from typing import Any

from tideflow.connectors.base import Source
from tideflow.connectors.synthetic import SyntheticSource
from tideflow.pipelines.dsl import Pipeline
from tideflow.stream.drift import DetectDrift
from tideflow.strategies.avalanche_adapter import AvalancheStrategy
from tideflow.strategies.river_adapter import RiverStrategy


def build(source: Source | None = None, *, n: int | None = None, batch_size: int | None = None, seed: int = 0
          ) -> Pipeline:
    """The drift pipeline on SEA (or on ``source``: any stream whose schema has the feature ``x0``
    that the detector watches, and a classification target).

    Options:
        seed: seeds the stream and the Avalanche learners (default 0)
        n: rows of the SEA stream (default 50000; not with a source of your own)
        batch_size: rows per batch of the SEA stream (default 500; not with a source of your own)
    """
    from river import linear_model, preprocessing, tree

    if source is not None and (n is not None or batch_size is not None):
        raise ValueError("drift: n= and batch_size= size the SEA stream; with a source of your own they cannot "
                         "apply (tideflow replay --batch-size re-chunks a recording)")
    seed = int(seed)
    source = source or SyntheticSource("sea-drift", n=int(n or 50_000), batch_size=int(batch_size or 500), seed=seed)
    return (
        Pipeline("drift")
        .source(source)
        .validate()
        .detect(DetectDrift(on="x0", detector="ADWIN"))
        .learn(RiverStrategy(tree.HoeffdingTreeClassifier(grace_period=100)), name="hoeffding_tree",
               detector="ADWIN")
        .learn(RiverStrategy(preprocessing.StandardScaler() | linear_model.LogisticRegression()), name="logistic")
        .learn(AvalancheStrategy("Naive", n_classes=2, hidden=32, seed=seed), name="avalanche_naive")
        .learn(AvalancheStrategy("Replay", n_classes=2, hidden=32, seed=seed, strategy_kwargs={"mem_size": 500}),
               name="avalanche_replay")
    )
