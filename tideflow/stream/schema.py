"""Schema declaration for a stream: field types, tensor shapes, and column roles.

A `Schema` names each field's Arrow type and which columns play the roles the
engine cares about: the learning target, the task id (task-incremental image
streams), the routing key (one model per network link), and event time.

>>> s = Schema({"x": "float64", "y": "int64"}, target="y")
>>> s.feature_names
['x']
>>> Schema({"image": Tensor((28, 28)), "label": "int64"}, target="label").fields["image"].type
FixedShapeTensorType(extension<arrow.fixed_shape_tensor[value_type=float, shape=[28,28]]>)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa

from tideflow.stream.batch import OFFSET

_TYPE_NAMES: dict[str, pa.DataType] = {
    "float64": pa.float64(),
    "float": pa.float64(),
    "double": pa.float64(),
    "float32": pa.float32(),
    "int64": pa.int64(),
    "int": pa.int64(),
    "int32": pa.int32(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "str": pa.string(),
    "timestamp": pa.timestamp("us"),
    "timestamp[s]": pa.timestamp("s"),
    "timestamp[ms]": pa.timestamp("ms"),
    "timestamp[us]": pa.timestamp("us"),
}


@dataclass(frozen=True)
class Tensor:
    """A fixed-shape tensor field (an image, a feature vector) of one row."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def arrow_type(self) -> pa.DataType:
        return pa.fixed_shape_tensor(to_arrow_type(self.dtype), list(self.shape))


def to_arrow_type(spec: Any) -> pa.DataType:
    if isinstance(spec, pa.DataType):
        return spec
    if isinstance(spec, Tensor):
        return spec.arrow_type()
    if isinstance(spec, str) and spec in _TYPE_NAMES:
        return _TYPE_NAMES[spec]
    raise ValueError(f"unknown field type {spec!r}; use a pyarrow type, a Tensor, or one of {sorted(_TYPE_NAMES)}")


@dataclass(frozen=True)
class Field:
    """One column: its type, whether nulls are allowed, whether NaN/inf are allowed."""

    name: str
    type: pa.DataType
    nullable: bool = False
    allow_nonfinite: bool = False

    def describe(self) -> str:
        extra = ("?" if self.nullable else "") + (" (nan ok)" if self.allow_nonfinite else "")
        return f"{self.name}: {self.type}{extra}"


@dataclass(frozen=True)
class Schema:
    """The columns a step expects, and which of them are target, key, task and time."""

    spec: Mapping[str, Any]
    target: str | None = None
    key: str | None = None
    task: str | None = None
    time: str | None = None
    nullable: tuple[str, ...] = ()
    fields: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields: dict[str, Field] = {}
        for name, spec in self.spec.items():
            if name == OFFSET:
                raise ValueError(f"{OFFSET!r} is reserved for the row offset and must not be declared")
            if isinstance(spec, Field):
                fields[name] = spec
            else:
                fields[name] = Field(name, to_arrow_type(spec), nullable=name in self.nullable)
        for role in ("target", "key", "task", "time"):
            col = getattr(self, role)
            if col is not None and col not in fields:
                raise ValueError(f"schema {role} column {col!r} is not a declared field ({list(fields)})")
        object.__setattr__(self, "fields", fields)

    @property
    def names(self) -> list[str]:
        return list(self.fields)

    @property
    def feature_names(self) -> list[str]:
        roles = {self.target, self.key, self.task, self.time}
        return [n for n in self.fields if n not in roles]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(OFFSET, pa.int64(), nullable=False)]
            + [pa.field(f.name, f.type, nullable=f.nullable) for f in self.fields.values()]
        )

    def with_roles(self, **roles: str | None) -> Schema:
        kw = dict(target=self.target, key=self.key, task=self.task, time=self.time)
        kw.update(roles)
        return Schema(dict(self.fields), nullable=self.nullable, **kw)

    @classmethod
    def infer(cls, arrow_schema: pa.Schema, **roles: str | None) -> Schema:
        """A schema that accepts exactly the given Arrow schema's columns."""
        spec = {
            f.name: Field(f.name, f.type, nullable=f.nullable)
            for f in arrow_schema
            if f.name != OFFSET
        }
        return cls(spec, **roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": {n: str(f.type) + ("?" if f.nullable else "") for n, f in self.fields.items()},
            "target": self.target,
            "key": self.key,
            "task": self.task,
            "time": self.time,
        }

    def __str__(self) -> str:
        roles = ", ".join(f"{r}={getattr(self, r)}" for r in ("target", "key", "task", "time") if getattr(self, r))
        cols = ", ".join(f.describe() for f in self.fields.values())
        return f"Schema({cols}{'; ' + roles if roles else ''})"
