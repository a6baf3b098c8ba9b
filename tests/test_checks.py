"""Run the check suites on every registered operator and strategy.

Discovery: importing ``tideflow`` and every module under ``tideflow.stream`` and
``tideflow.strategies`` defines their classes, and ``Operator.__init_subclass__``
registers each concrete one in ``REGISTRY``. Strategies get
``tideflow.strategies.checks.yield_strategy_checks``, the other operators
``tideflow.stream.checks.yield_operator_checks``. Test ids read
``<Class>-<check>``, e.g. ``RiverStrategy-snapshot_restore_identical``.

Only classes defined inside the ``tideflow`` package are checked: helper
operators that other test modules define (and so register) while pytest
collects them would otherwise make this file's tests depend on collection order.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from typing import Any, Callable

import pytest

import tideflow
import tideflow.strategies
import tideflow.stream
from tideflow.stream.checks import check_stream, yield_operator_checks
from tideflow.stream.operator import REGISTRY, Operator
from tideflow.strategies.base import Strategy
from tideflow.strategies.checks import yield_strategy_checks

for package in (tideflow.stream, tideflow.strategies):
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        importlib.import_module(module.name)


def _checked_classes() -> dict[str, type[Operator]]:
    # operators and strategies only: a selection stage (tideflow.strategies.selection) is neither
    # and its tests are its own (tideflow.testing's KeepAll registers when a test imports it)
    classes = {key: cls for key, cls in REGISTRY.items()
               if cls.__module__.startswith("tideflow.") and issubclass(cls, (Operator, Strategy))}
    short = Counter(cls.__qualname__ for cls in classes.values())
    # the class name reads best; the full path only where two classes share a name
    return {
        (cls.__qualname__ if short[cls.__qualname__] == 1 else key): cls
        for key, cls in sorted(classes.items())
    }


def _cases() -> list[Any]:
    cases = []
    for name, cls in _checked_classes().items():
        suite = yield_strategy_checks if issubclass(cls, Strategy) else yield_operator_checks
        for check in suite(cls):
            cases.append(pytest.param(check, id=f"{name}-{check.__name__}"))
    return cases


@pytest.mark.parametrize("check", _cases())
def test_check(check: Callable[[], None]) -> None:
    check()


def test_registry_finds_the_known_classes() -> None:
    names = {cls.__qualname__ for cls in _checked_classes().values()}
    assert names >= {"RiverStrategy", "AvalancheStrategy", "Validate", "DetectDrift"}, names
    assert "Strategy" not in names and "Operator" not in names, "abstract bases must not be checked"


def test_check_stream_makes_detectors_fire() -> None:
    # the operator checks compare side outputs; they only mean something if there are some
    from tideflow.stream.drift import DetectDrift

    stream = check_stream("regression", n_batches=8, seed=42)
    detector = DetectDrift(**DetectDrift._unit_test_params())
    events = []
    for batch in stream:
        detector.process(batch)
        events.extend(detector.drain().drift_events)
    midpoint = len(stream) * len(stream[0]) // 2
    assert events, "no drift detected on the check stream"
    assert events[0].offset >= midpoint, f"drift found before the drift at {midpoint}: {events[0]}"
    offsets = [o for b in stream for o in b.offsets.tolist()]
    assert offsets == sorted(set(offsets)), "check stream offsets must increase"
