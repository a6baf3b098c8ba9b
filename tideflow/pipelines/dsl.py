"""The pipeline DSL: chain named steps, get a `Graph`, run it on a runner.

>>> import tideflow as tf
>>> p = (tf.Pipeline("demo")
...      .source(tf.SyntheticSource("friedman-drift", n=600, batch_size=200))
...      .validate()
...      .detect(tf.DetectDrift(on="x0"))
...      .learn(tf.RiverStrategy(_linear()), name="linear"))
>>> print(p)  # doctest: +ELLIPSIS
Pipeline 'demo'
  │  source    source ...
>>> result = p.run(runner="local", tracking=False, progress=False)
>>> result.summary["linear"]["rows_scored"]
600
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tideflow.connectors.base import Sink, Source
from tideflow.pipelines.graph import DEFAULT_BOUNDARIES, Graph, GraphError, Keyed, Step
from tideflow.stream.drift import DetectDrift
from tideflow.stream.operator import Operator
from tideflow.stream.schema import Schema
from tideflow.stream.validate import Validate
from tideflow.strategies.base import Strategy


def _linear() -> Any:  # used by the doctest above
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def default_name(obj: Any) -> str:
    """A step name from an operator: ``RiverStrategy(HoeffdingTreeClassifier)`` -> ``hoeffdingtreeclassifier``."""
    if hasattr(obj, "estimator"):
        est = obj.estimator
        last = list(est.steps.values())[-1] if hasattr(est, "steps") else est
        base = type(last).__name__
    elif isinstance(getattr(obj, "strategy", None), str):
        base = f"{type(obj).__name__.replace('Strategy', '')}_{obj.strategy}"
    elif isinstance(obj, DetectDrift):
        return obj.name
    else:
        base = type(obj).__name__
    return re.sub(r"[^0-9a-zA-Z_-]", "", base).lower()


class Pipeline:
    """A pipeline under construction: each method adds a step and returns the pipeline."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[Step] = []
        # callables (result) -> None run by the CLI after a run: tables, plots of a ready pipeline
        self.reporters: list[Any] = []
        # metric observers every run of this pipeline gets (besides those run() is given)
        self.observers: list[Any] = []

    # -- steps --------------------------------------------------------------------
    def source(self, source: Source, *, name: str = "source") -> Pipeline:
        if not isinstance(source, Source):
            raise TypeError(f"source must be a tideflow Source, got {type(source).__name__}")
        self._steps.append(Step(name, "source", source))
        return self

    def validate(self, schema: Schema | None = None, *, name: str = "validate", extra: str = "quarantine",
                 time_order: str = "quarantine") -> Pipeline:
        """Validate against ``schema`` (default: the source's declared schema); ``time_order``: what
        happens to a row whose time is earlier than its key's newest (`Validate`)."""
        if schema is None:
            src = next((s for s in self._steps if s.kind == "source"), None)
            if src is None:
                raise GraphError(f"pipeline {self.name!r}: .validate() without a schema needs a source before it")
            schema = src.op.schema()
        self._steps.append(Step(name, "validate", Validate(schema, extra=extra, name=name, time_order=time_order)))
        return self

    def detect(self, *detectors: DetectDrift, to: list[str] | None = None) -> Pipeline:
        """Drift detectors on columns; events go to the learn steps named in ``to`` (default all)."""
        if not detectors:
            raise ValueError("detect() needs at least one detector")
        for d in detectors:
            if not isinstance(d, Operator):
                raise TypeError(f"detectors must be operators such as DetectDrift, got {type(d).__name__}")
            self._steps.append(Step(getattr(d, "name", None) or default_name(d), "detect", d,
                                    to=tuple(to) if to is not None else None))
        return self

    def apply(self, operator: Operator, *, name: str | None = None) -> Pipeline:
        """Any other operator on the data path (reducers, selectors, feature steps)."""
        if not isinstance(operator, Operator) or isinstance(operator, Strategy):
            raise TypeError("apply() takes a data-path Operator; strategies go to learn()")
        self._steps.append(Step(name or default_name(operator), "transform", operator))
        return self

    def learn(
        self,
        *strategies: Strategy,
        name: str | None = None,
        names: list[str] | None = None,
        route: Keyed | None = None,
        detector: str | None = None,
        detector_params: dict[str, Any] | None = None,
        num_cpus: float | None = None,
        num_gpus: float = 0.0,
        resources: dict[str, float] | None = None,
        boundaries: tuple[str, ...] | list[str] = DEFAULT_BOUNDARIES,
        select: Any = None,
    ) -> Pipeline:
        """Add strategies; all of them receive the same batches (broadcast).

        Args:
            name / names: step names (default: derived from each strategy).
            route: `Keyed` for one strategy instance per key value.
            detector: River detector name run on each strategy's prequential
                error (absolute error, or 0/1 misclassification); its events call
                that strategy's ``on_drift`` and are logged.
            num_cpus / num_gpus: resources of each strategy's actor on the Ray runner
                (an actor that asks for GPUs is placed on a node that has them).
            resources: custom Ray resources each strategy's actor needs, e.g.
                ``{"strategy_node": 1}`` to place it on the nodes started with that resource.
            boundaries: what tells the strategy that a task ended (``on_task_boundary``):
                ``"task_column"`` (the schema's task column changes value), ``"end_of_task"``
                (the source marks a batch), ``"drift"`` (every drift event that reaches it).
            select: a selection stage (`tideflow.strategies.selection.Selector`) that hands each
                strategy the rows it trains on (scoring stays on the incoming batch); with
                several strategies, each gets its own copy.
        """
        if not strategies:
            raise ValueError("learn() needs at least one strategy")
        if name is not None and len(strategies) > 1:
            raise ValueError("name= is for one strategy; use names=[...] for several")
        if names is not None and len(names) != len(strategies):
            raise ValueError("names must have one entry per strategy")
        for i, s in enumerate(strategies):
            if not isinstance(s, Strategy):
                raise TypeError(f"learn() takes Strategy objects, got {type(s).__name__}")
            step_name = name if name is not None else (names[i] if names else default_name(s))
            self._steps.append(Step(step_name, "learn", s, num_cpus=num_cpus, num_gpus=num_gpus, route=route,
                                    detector=detector, detector_params=dict(detector_params or {}),
                                    resources=dict(resources) if resources else None,
                                    boundaries=tuple(boundaries),
                                    select=copy.deepcopy(select) if select is not None and i else select))
        return self

    def sink(self, sink: Sink, *, name: str | None = None) -> Pipeline:
        if not isinstance(sink, Sink):
            raise TypeError(f"sink must be a tideflow Sink, got {type(sink).__name__}")
        self._steps.append(Step(name or default_name(sink), "sink", sink))
        return self

    def observe(self, *observers: Any) -> Pipeline:
        """Metric observers (`tideflow.pipelines.metrics`) for every run of this pipeline; their
        results are in ``RunResult.metrics`` (each run starts them afresh: ``on_start``)."""
        from tideflow.pipelines.metrics.base import Observer

        for o in observers:
            if not isinstance(o, Observer):
                raise TypeError(f"observe() takes metric observers, got {type(o).__name__}")
        self.observers.extend(observers)
        return self

    def report(self, reporter: Any) -> Pipeline:
        """Add a reporter ``reporter(result)`` that the CLI calls after the run (tables, plots)."""
        self.reporters.append(reporter)
        return self

    # -- build and run ------------------------------------------------------------
    def build(self) -> Graph:
        graph = Graph(self.name, list(self._steps))
        graph.validate()
        return graph

    def run(self, runner: str = "local", **options: Any) -> Any:
        """Validate the graph, then run it; options go to `tideflow.pipelines.run.run_graph` (`tideflow.pipelines.options`)."""
        from tideflow.pipelines.options import RunOptions
        from tideflow.pipelines.run import run_graph

        if self.observers:
            given = options.get("options")
            if isinstance(given, RunOptions):
                import dataclasses

                options["options"] = dataclasses.replace(given, observers=(*self.observers, *given.observers))
            else:
                options["observers"] = (*self.observers, *options.get("observers", ()))
        return run_graph(self.build(), runner=runner, **options)

    def __str__(self) -> str:
        return str(Graph(self.name, list(self._steps)))

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[s.name for s in self._steps]})"
