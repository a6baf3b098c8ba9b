"""tideflow: continual and streaming learning pipelines on Arrow batches, Ray actors and MLflow.

The public API: build a `Pipeline` from a `Source`, steps (`Validate`,
`DetectDrift`, any `Operator`), strategies (`RiverStrategy`,
`AvalancheStrategy`, ...) and sinks, then ``run`` it on the ``local`` or the
``ray`` runner.
"""

from __future__ import annotations

from tideflow.connectors.base import MemorySink, MemorySource, Sink, Source
from tideflow.connectors.images import ImageStream
from tideflow.connectors.synthetic import SyntheticSource, source_from_spec
from tideflow.connectors.table import TableSource
from tideflow.pipelines.dsl import Pipeline
from tideflow.pipelines.graph import Graph, GraphError, Keyed
from tideflow.pipelines.options import CheckpointOptions, RayOptions, RunOptions
from tideflow.pipelines.prediction_sink import PredictionSink
from tideflow.pipelines.result import RunResult
from tideflow.pipelines.run import run_graph
from tideflow.stream.batch import Batch, tensor_array
from tideflow.stream.drift import DetectDrift, PerformanceTrigger
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.stream.hdc import HDCDetector
from tideflow.stream.operator import Operator
from tideflow.stream.reduce import VarianceHorizon
from tideflow.stream.schema import Field, Schema, Tensor
from tideflow.stream.validate import Validate
from tideflow.strategies.adapt_inf import AdaptInfinity
from tideflow.strategies.avalanche_adapter import AvalancheStrategy
from tideflow.strategies.base import ClassScores, StepReport, Strategy
from tideflow.strategies.dkvb import KeyValueBottleneck
from tideflow.strategies.dst import SparseTraining
from tideflow.strategies.ear import EAR
from tideflow.strategies.forecasting import FrozenGRU, FrozenMLP, IncrementalRefit, Persistence
from tideflow.strategies.liquid import LiquidForecaster
from tideflow.strategies.nowcast import NowcastGBM, NowcastLSTM, NowcastMLP, NowcastPersistence, NowcastSeasonal
from tideflow.strategies.prd import PrototypeDistillation
from tideflow.strategies.river_adapter import RiverStrategy

__version__ = "0.1.0"

__all__ = [
    "AvalancheStrategy", "Batch", "FrozenGRU", "FrozenMLP", "IncrementalRefit", "LiquidForecaster",
    "Persistence", "DetectDrift", "DriftEvent", "Field", "Graph", "GraphError", "Keyed", "ImageStream",
    "MemorySink", "MemorySource", "Operator", "Pipeline", "RiverStrategy", "RunResult", "Schema", "Sink", "Source",
    "StepReport", "Strategy", "SyntheticSource", "Tensor", "Validate", "run_graph", "source_from_spec",
    "RunOptions", "RayOptions", "CheckpointOptions", "TaskBoundary", "ClassScores", "PredictionSink",
    "TableSource",
    "tensor_array", "PerformanceTrigger", "VarianceHorizon", "NowcastGBM", "NowcastLSTM", "NowcastMLP",
    "NowcastPersistence", "NowcastSeasonal", "KeyValueBottleneck",
    "PrototypeDistillation", "SparseTraining",
    "HDCDetector", "EAR",
    "AdaptInfinity",
]


def __getattr__(name: str):  # the link-load source needs topohub; import it on first use
    if name == "LinkLoadSource":
        from tideflow.connectors.linkload import LinkLoadSource

        return LinkLoadSource
    raise AttributeError(f"module 'tideflow' has no attribute {name!r}")
