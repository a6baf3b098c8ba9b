"""The contracts of pipeline stages, and the registry the check suites use.

`Stateful` is what every stage shares: constructor parameters stored under their
own names (River's habit), so ``params()`` lists a stage's configuration without
extra code and ``clone()`` builds a fresh one; and its state as plain data:

* ``snapshot() -> dict`` returns the state as plain data;
* ``restore(state)`` puts that state back.

An `Operator` is a data-path stage (validation, detectors, reducers) with
``process(batch) -> Batch | None`` (None: nothing to pass on); side outputs that
are not rows (drift events, quarantined rows) are collected by ``drain()``,
which the runners call after each ``process``. Learners are `Stateful` too but
not operators: their contract (``learn``/``predict``/...) is
`tideflow.strategies.base.Strategy` (see docs/architecture.md, "Contracts").

Every concrete subclass is registered on definition; the check suites in
``tideflow/stream/checks.py`` and ``tideflow/strategies/checks.py`` iterate over
the registry, so a new stage is checked by being defined and imported.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tideflow.stream.batch import Batch

REGISTRY: dict[str, type[Stateful]] = {}


@dataclass
class SideOutput:
    """What a step produced besides its output batch."""

    drift_events: list[Any] = field(default_factory=list)
    quarantine: list[Any] = field(default_factory=list)  # pyarrow Tables of quarantined rows

    def extend(self, other: SideOutput) -> None:
        self.drift_events.extend(other.drift_events)
        self.quarantine.extend(other.quarantine)

    def __bool__(self) -> bool:
        return bool(self.drift_events or self.quarantine)


class Stateful:
    """What every stage shares: configuration from its constructor, state as plain data."""

    kind: ClassVar[str] = "stateful"
    #: set False on abstract helpers so the registry and check suites skip them
    checkable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls) and cls.__dict__.get("checkable", True):
            REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls

    # -- state --------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")

    # -- configuration ------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters, read back from same-named attributes."""
        out = {}
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if hasattr(self, name):
                out[name] = getattr(self, name)
        return out

    def clone(self) -> Stateful:
        return type(self)(**self.params())

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters the check suite builds an instance with (override when required)."""
        return {}

    def describe(self) -> str:
        def short(v: Any) -> str:
            if isinstance(v, (int, float, str, bool, type(None))):
                return repr(v)
            return type(v).__name__
        args = ", ".join(f"{k}={short(v)}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __repr__(self) -> str:
        return self.describe()


class Operator(Stateful):
    """Base class of every data-path stage (see module docstring)."""

    kind: ClassVar[str] = "operator"
    checkable: ClassVar[bool] = False

    def process(self, batch: Batch) -> Batch | None:
        return batch

    def drain(self) -> SideOutput:
        return SideOutput()
