"""The pipeline graph: named steps as data, validated before anything runs.

The DSL (`tideflow.pipelines.dsl.Pipeline`) builds a `Graph`; runners execute
it. The data path is a chain (source, then validate/detect/transform steps),
after which every learn step receives the same batches (broadcast routing, for
side-by-side comparison), each optionally keyed (one strategy instance per key
value), and every sink receives them too.

`Graph.validate` checks, and names the step at fault: a missing source,
duplicate or unknown step names, a strategy without a target column, and
columns a step needs that the schema arriving at it lacks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tideflow.connectors.base import Sink, Source
from tideflow.stream.operator import Operator
from tideflow.stream.schema import Schema
from tideflow.stream.validate import Validate
from tideflow.stream.drift import DetectDrift
from tideflow.stream.events import BOUNDARY_CAUSES
from tideflow.strategies.base import SchemaError, Strategy

#: a learn step's task boundaries by default: the schema's task column changes, the source marks an end
DEFAULT_BOUNDARIES = ("task_column", "end_of_task")


class GraphError(ValueError):
    """The pipeline graph is not runnable; the message names the step."""


@dataclass(frozen=True)
class Keyed:
    """Route rows by a key column: one strategy instance per key value.

    On the Ray runner the key values are spread (by a stable hash) over
    ``actors`` actors.
    """

    key: str
    actors: int = 1

    def describe(self) -> str:
        return f"keyed({self.key}, actors={self.actors})"


@dataclass
class Step:
    """One named node of the graph."""

    name: str
    kind: str  # source | validate | detect | transform | learn | sink
    op: Any
    num_cpus: float | None = None
    num_gpus: float = 0.0
    route: Keyed | None = None  # learn steps only
    detector: str | None = None  # learn steps: River detector on the prequential error
    detector_params: dict[str, Any] = field(default_factory=dict)
    to: tuple[str, ...] | None = None  # detect steps: learn steps that receive the events (None: all)
    resources: dict[str, float] | None = None  # learn steps: custom Ray resources of each actor
    boundaries: tuple[str, ...] = DEFAULT_BOUNDARIES  # learn steps: what counts as a task boundary
    select: Any = None  # learn steps: a `Selector` choosing the rows the strategy trains on

    def describe(self) -> str:
        return self.op.describe() if hasattr(self.op, "describe") else repr(self.op)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "op": self.describe()}
        params = getattr(self.op, "params", None)
        if callable(params):
            out["params"] = {k: _plain(v) for k, v in params().items()}
        if self.kind == "learn":
            out["route"] = self.route.describe() if self.route else "broadcast"
            out["num_cpus"] = self.num_cpus
            out["num_gpus"] = self.num_gpus
            if self.resources:
                out["resources"] = dict(self.resources)
            if self.detector:
                out["detector"] = {"name": self.detector, "params": self.detector_params}
            if self.boundaries != DEFAULT_BOUNDARIES:  # the default leaves the graph's hash as it was
                out["boundaries"] = list(self.boundaries)
            if self.select is not None:
                out["select"] = {"op": self.select.describe(),
                                 "params": {k: _plain(v) for k, v in self.select.params().items()}}
        if self.to is not None:
            out["to"] = list(self.to)
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, Schema):
        return v.to_dict()
    return str(v)


@dataclass
class Graph:
    """A validated pipeline: the chain of data-path steps, the learn steps, the sinks."""

    name: str
    steps: list[Step]

    @property
    def source(self) -> Step:
        return next(s for s in self.steps if s.kind == "source")

    @property
    def chain(self) -> list[Step]:
        return [s for s in self.steps if s.kind in ("validate", "detect", "transform")]

    @property
    def learners(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "learn"]

    @property
    def sinks(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "sink"]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step named {name!r} in pipeline {self.name!r}")

    # -- validation ---------------------------------------------------------------
    def validate(self) -> Schema:
        """Check the graph; returns the schema that reaches the learn steps."""
        sources = [s for s in self.steps if s.kind == "source"]
        if not sources:
            raise GraphError(f"pipeline {self.name!r} has no source: call .source(...) first")
        if len(sources) > 1:
            raise GraphError(f"pipeline {self.name!r} has {len(sources)} sources ({[s.name for s in sources]}); one is supported")
        seen: set[str] = set()
        for s in self.steps:
            if not s.name or not s.name.replace("_", "").replace("-", "").isalnum():
                raise GraphError(f"step name {s.name!r} must be letters, digits, '_' or '-'")
            if s.name in seen:
                raise GraphError(f"duplicate step name {s.name!r} in pipeline {self.name!r}: give each step its own name")
            seen.add(s.name)
        if not self.learners and not self.sinks:
            raise GraphError(f"pipeline {self.name!r} has neither a learn step nor a sink: nothing would use the data")
        learn_names = {s.name for s in self.learners}
        for s in self.chain:
            if s.to is not None:
                unknown = [t for t in s.to if t not in learn_names]
                if unknown:
                    raise GraphError(f"step {s.name!r} sends drift events to unknown learn step(s) {unknown}; known: {sorted(learn_names)}")

        try:
            schema = sources[0].op.schema()
        except Exception as exc:  # the source cannot say what it yields
            raise GraphError(f"source {sources[0].name!r} cannot describe its schema: {exc}") from exc
        for s in self.chain:
            schema = self._check_step_schema(s, schema)
        for s in self.learners:
            strategy: Strategy = s.op
            try:
                strategy.bind(schema)
            except SchemaError as exc:
                raise GraphError(f"learn step {s.name!r}: {exc}") from exc
            if s.detector is not None:
                self._check_error_detector(s, strategy)
            if s.route is not None:
                if s.route.key not in schema.fields:
                    raise GraphError(f"learn step {s.name!r} routes by key {s.route.key!r}, which is not in the schema ({schema.names})")
                if s.route.actors < 1:
                    raise GraphError(f"learn step {s.name!r}: keyed route needs actors >= 1")
            if s.select is not None and not strategy.unordered_rows:
                raise GraphError(f"learn step {s.name!r}: {type(strategy).__name__} learns a time series whose rows "
                                 f"must arrive in time order; a selection stage (select=) hands a strategy rows "
                                 f"of its choosing, for learners of unordered rows (classifiers, regressors)")
            unknown = [b for b in s.boundaries if b not in BOUNDARY_CAUSES]
            if unknown:
                raise GraphError(f"learn step {s.name!r}: unknown task-boundary cause(s) {unknown}; "
                                 f"known: {list(BOUNDARY_CAUSES)}")
            if s.num_gpus < 0 or (s.num_cpus is not None and s.num_cpus < 0) or \
                    any(not isinstance(v, (int, float)) or v < 0 for v in (s.resources or {}).values()):
                raise GraphError(f"learn step {s.name!r}: resources must be numbers >= 0")
        return schema

    @staticmethod
    def _check_error_detector(s: Step, strategy: Strategy) -> None:
        from tideflow.stream.drift import ALIASES, BINARY_DETECTORS, make_river_detector

        try:
            make_river_detector(s.detector, s.detector_params)  # an unknown name or a bad parameter
        except (ValueError, TypeError) as exc:
            raise GraphError(f"learn step {s.name!r}: error detector: {exc}") from exc
        if ALIASES.get(s.detector, s.detector) in BINARY_DETECTORS and strategy.problem != "classification":
            raise GraphError(f"learn step {s.name!r}: {s.detector} watches a 0/1 error (a classifier's mistakes); "
                             f"on the absolute error of a regression strategy use ADWIN, PageHinkley, KSWIN or "
                             f"PerformanceTrigger")

    def _check_step_schema(self, s: Step, schema: Schema) -> Schema:
        op = s.op
        if isinstance(op, Validate):
            for fname, fld in op.schema.fields.items():
                if fname not in schema.fields:
                    raise GraphError(
                        f"validate step {s.name!r} expects field {fname!r}, which the upstream schema lacks ({schema.names})"
                    )
                up = schema.fields[fname].type
                if up != fld.type and not _castable(up, fld.type):
                    raise GraphError(f"validate step {s.name!r}: field {fname!r} is {up} upstream, cannot become {fld.type}")
            return op.schema
        if isinstance(op, DetectDrift):
            if op.on not in schema.fields:
                raise GraphError(f"detect step {s.name!r} watches column {op.on!r}, which is not in the schema ({schema.names})")
            return schema
        output_schema = getattr(op, "output_schema", None)
        if callable(output_schema):
            try:
                return output_schema(schema)
            except (KeyError, ValueError) as exc:
                raise GraphError(f"step {s.name!r}: {exc}") from exc
        return schema

    # -- description --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": [s.to_dict() for s in self.steps]}

    def fingerprint(self) -> str:
        """Hash of the graph's description (checkpoints are only valid for the same graph)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __str__(self) -> str:
        lines = [f"Pipeline {self.name!r}"]
        width = max(len(s.name) for s in self.steps) if self.steps else 4
        for s in self.steps:
            arrow = "└─" if s.kind in ("learn", "sink") else "│ "
            extra = ""
            if s.kind == "learn":
                extra = f"  [{s.route.describe() if s.route else 'broadcast'}"
                extra += f", cpus={s.num_cpus if s.num_cpus is not None else 'auto'}, gpus={s.num_gpus}"
                extra += f", error detector={s.detector} -> on_error_drift" if s.detector else ""
                senders = [d.name for d in self.chain if d.kind == "detect" and (d.to is None or s.name in d.to)]
                extra += f", events from {', '.join(senders)} -> on_drift" if senders else ""
                extra += f", task boundaries: {', '.join(s.boundaries)}]" if s.boundaries != DEFAULT_BOUNDARIES \
                    else "]"
            if s.to is not None:
                extra = f"  -> {', '.join(s.to)}"
            lines.append(f"  {arrow} {s.kind:<9} {s.name:<{width}}  {s.describe()}{extra}")
        return "\n".join(lines)


def _castable(src: Any, dst: Any) -> bool:
    import pyarrow as pa

    numeric = lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)  # noqa: E731
    return (numeric(src) and numeric(dst)) or pa.types.is_string(src) or pa.types.is_null(src)


def is_operator(obj: Any) -> bool:
    return isinstance(obj, Operator)


__all__ = ["Graph", "GraphError", "Keyed", "Step", "Source", "Sink"]
