"""Generic checks every data-path operator must pass, in the manner of River's ``yield_checks``.

River's ``utils.estimator_checks.yield_checks(model)`` yields a couple of dozen
small functions, each testing one promise of the estimator contract; one test
file runs them for every estimator it can find. This module does the same for
the operator contract of docs/architecture.md ("Contracts") (``process``/``snapshot``/
``restore``/``drain``, constructor parameters as configuration):
`yield_operator_checks` yields zero-argument check functions for one operator
class, each named after the promise it tests, so that pytest ids read like
``DetectDrift-snapshot_restore_identical``.

=================================  ==========================================================
``params_round_trip``              constructor arguments are stored under their own names,
                                   ``clone()`` rebuilds an operator with the same ``params()``
``clone_is_fresh``                 a clone of a used operator holds no state of the original
``empty_batch``                    ``process`` on an empty batch gives an empty batch or None
``snapshot_is_plain``              ``snapshot()`` is a dict of plain data only (`assert_plain`)
``snapshot_restore_identical``     snapshot mid-stream, restore into a fresh operator (and into
                                   the used one): the same next outputs and side outputs follow
``deterministic``                  two operators built alike give the same outputs
``drain_empties_side_outputs``     what ``drain()`` returned is not returned again
``does_not_mutate_input``          ``process`` leaves its input batch as it was
=================================  ==========================================================

Outputs are compared as Arrow data, side outputs (drift events, quarantine
tables) after every batch, and twins also by their whole snapshot: an
operator's state is written by hand and must come back exactly. Strategies have
their own suite (``tideflow/strategies/checks.py``), built on the helpers here
(`assert_plain`, `assert_same`, `check_stream`).

How an operator is picked up: defining a concrete subclass of `Operator`
registers it in ``tideflow.stream.operator.REGISTRY`` (``__init_subclass__``);
``tests/test_checks.py`` imports every module under ``tideflow.stream`` and
``tideflow.strategies`` and runs the suites over the registry. There is no list
to edit. A helper base class opts out with ``checkable = False``.

What ``_unit_test_params`` is for: the suite must build an instance without
knowing the class, so it calls ``cls(**cls._unit_test_params())``. Override it
when the constructor has required arguments or when the defaults would not
exercise the operator on the check stream; for instance `DetectDrift` returns
``{"on": "x"}`` and `Validate` a schema with ``x`` and ``y`` as float64. The
check stream has an int64 ``offset``, a float64 ``x`` and a ``y`` that is
float64 (regression) or int64 0/1 (classification), with a drift halfway; the
operator's ``task`` attribute, or the target type of a `Schema` among its
parameters, picks which.

>>> from tideflow.stream.drift import DetectDrift
>>> checks = list(yield_operator_checks(DetectDrift))
>>> [check.__name__ for check in checks][:3]
['params_round_trip', 'clone_is_fresh', 'empty_batch']
>>> for check in checks:
...     check()
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import sys
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.operator import Operator, SideOutput
from tideflow.stream.schema import Schema

__all__ = [
    "assert_plain",
    "assert_same",
    "check_operator",
    "check_stream",
    "copy_batch",
    "empty_like",
    "messy_stream",
    "named_check",
    "scrambled_global_rngs",
    "yield_operator_checks",
]

TASKS = ("regression", "classification")

# -- check streams ----------------------------------------------------------------


def check_stream(
    schema_kind: str = "regression",
    n_batches: int = 8,
    seed: int = 0,
    *,
    features: Sequence[str] = ("x",),
    batch_size: int = 64,
    stream_id: str = "check",
    first_offset: int = 0,
) -> list[Batch]:
    """Batches of a small drifting stream for the checks.

    Columns: ``offset`` (int64, increasing across batches from ``first_offset``),
    one float64 column per name in ``features``, and ``y``: float64 for
    ``schema_kind="regression"``, int64 0/1 for ``"classification"``. Halfway
    through, the features' mean jumps by 3 standard deviations and the relation
    between features and ``y`` flips (covariate and concept drift at once), so
    that drift detectors fire and learners see something change.

    >>> stream = check_stream("classification", n_batches=4, seed=1)
    >>> [b.first_offset for b in stream], stream[0].column_names
    ([0, 64, 128, 192], ['offset', 'x', 'y'])
    >>> str(stream[0].schema.field("y").type), set(stream[0].numpy("y").tolist())
    ('int64', {0, 1})
    """
    if schema_kind not in TASKS:
        raise ValueError(f"schema_kind must be one of {TASKS}, got {schema_kind!r}")
    features = list(features)
    if "y" in features or "offset" in features:
        raise ValueError(f"feature names must not be 'y' or 'offset', got {features}")
    rng = np.random.default_rng(seed)
    n = n_batches * batch_size
    after = np.arange(n) >= n // 2
    shift = 3.0
    x = rng.normal(size=(n, len(features))) + shift * after[:, None]
    weights = np.linspace(1.0, -1.0, len(features)) if len(features) > 1 else np.ones(1)
    sign = np.where(after, -1.0, 1.0)
    signal = sign * ((x - shift * after[:, None]) @ weights)
    noise = rng.normal(scale=0.1, size=n)
    if schema_kind == "regression":
        y: np.ndarray = signal + 5.0 * after + noise
    else:
        y = (signal + noise > 0).astype(np.int64)
    batches = []
    for i in range(n_batches):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        columns: dict[str, Any] = {name: x[rows, j].copy() for j, name in enumerate(features)}
        columns["y"] = y[rows].copy()
        start = first_offset + i * batch_size
        batches.append(Batch.from_pydict(columns, stream_id=stream_id, first_offset=start))
    return batches


def messy_stream(
    schema_kind: str = "regression",
    n_batches: int = 4,
    seed: int = 0,
    *,
    features: Sequence[str] = ("x0", "x1"),
    nullable: Sequence[str] = ("x1",),
    time: str = "t",
    step_seconds: int = 3600,
    batch_size: int = 64,
    stream_id: str = "check",
) -> list[Batch]:
    """`check_stream`'s batches with what real streams bring: a time column, gaps in the
    nullable features and rows out of time order.

    * ``time`` (int64, seconds): one ``step_seconds`` per row in offset order, except that
      in every batch after the first the first 3 rows carry the times of the previous
      batch's last 3 rows (late rows: their time is not after the newest one already
      seen), and rows 10 and 11 of every batch swap their times (disorder inside a batch).
    * every feature in ``nullable``: null in every 16th row from row 5, NaN in row 7.

    Offsets increase as in `check_stream`; the other columns are its columns.

    >>> stream = messy_stream(n_batches=2, batch_size=16)
    >>> stream[1].column("t").to_pylist()[:4] == [13 * 3600, 14 * 3600, 15 * 3600, 19 * 3600]
    True
    >>> stream[0].column("x1").to_pylist()[5] is None
    True
    """
    if time in features or time in ("y", "offset"):
        raise ValueError(f"time column {time!r} must not be a feature, 'y' or 'offset'")
    if not set(nullable) <= set(features):
        raise ValueError(f"nullable {list(nullable)} must be features ({list(features)})")
    if batch_size < 16:
        raise ValueError("messy_stream needs batches of at least 16 rows")
    out = []
    for batch in check_stream(schema_kind, n_batches, seed, features=features, batch_size=batch_size,
                              stream_id=stream_id):
        columns: dict[str, Any] = {name: batch.column(name) for name in batch.column_names if name != "offset"}
        steps = batch.offsets.astype(np.int64).copy()
        if out:
            steps[:3] = steps[0] - np.arange(3, 0, -1)
        steps[[10, 11]] = steps[[11, 10]]
        columns[time] = pa.array(steps * step_seconds, type=pa.int64())
        for name in nullable:
            values = batch.numpy(name).astype(np.float64).tolist()
            values[7] = float("nan")
            for i in range(5, len(values), 16):
                values[i] = None
            columns[name] = pa.array(values, type=pa.float64())
        ordered = {name: columns[name] for name in [time, *features, "y"]}
        out.append(Batch.from_pydict(ordered, stream_id=stream_id, first_offset=int(batch.first_offset or 0)))
    return out


def empty_like(batch: Batch) -> Batch:
    """A batch with ``batch``'s columns and stream, and no rows."""
    return Batch.empty(batch.schema, stream_id=batch.stream_id)


def copy_batch(batch: Batch) -> Batch:
    """A deep copy of ``batch`` (through Arrow IPC), to detect in-place changes."""
    data = pa.ipc.read_record_batch(batch.data.serialize(), batch.schema)
    return Batch(data, batch.stream_id)


# -- plain data and deep equality -----------------------------------------------------

_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor cannot exist unless torch was imported
    return torch is not None and isinstance(obj, torch.Tensor)


def _child(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def assert_plain(obj: Any, path: str = "state") -> None:
    """Fail, naming the path of the first value that is not plain data.

    Plain data is what a checkpoint can hold without pickling an object graph
    (docs/architecture.md, "Snapshots"): dicts (keys: str, int, float, bool, None, bytes or
    tuples of those), lists, tuples, str, int, float, bool, None, bytes, numpy
    arrays of a non-object dtype and torch tensors. Types are matched exactly,
    so ``np.int64(3)``, an enum member or a named tuple is reported.

    >>> assert_plain({"w": np.zeros(3), "n": [1, 2.0, "a", None]})
    >>> assert_plain({"model": {"steps": [object()]}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: state['model']['steps'][0] is builtins.object, not plain data ...
    """
    if type(obj) in _PLAIN_SCALARS:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if not _plain_key(key):
                raise AssertionError(
                    f"{path} has a key {key!r} of type {_type_name(key)}, not a plain scalar"
                )
            assert_plain(value, _child(path, key))
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            assert_plain(value, f"{path}[{i}]")
        return
    if type(obj) is np.ndarray:
        if obj.dtype.hasobject:
            raise AssertionError(
                f"{path} is a numpy array of dtype {obj.dtype}, which holds Python objects"
            )
        return
    if _is_tensor(obj):
        return
    raise AssertionError(
        f"{path} is {_type_name(obj)}, not plain data (dict, list, tuple, str, int, float, bool, "
        "None, bytes, numpy array, torch tensor)"
    )


def _plain_key(key: Any) -> bool:
    if type(key) is tuple:
        return all(_plain_key(k) for k in key)
    return type(key) in _PLAIN_SCALARS


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Fail, naming the first path where ``a`` and ``b`` differ.

    Handles batches and Arrow data (``equals``), numpy arrays and torch tensors
    (exact, NaN equal to NaN), floats (NaN equal to NaN), dataclasses (field by
    field, e.g. `SideOutput` and drift events), dicts, lists and tuples; other
    values are compared with ``==``.

    >>> assert_same({"a": [1.0, float("nan")]}, {"a": [1.0, float("nan")]})
    >>> assert_same({"a": [1.0, 2.0]}, {"a": [1.0, 3.0]}, "snapshot")
    Traceback (most recent call last):
    ...
    AssertionError: snapshot['a'][1]: 2.0 != 3.0
    """
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        raise AssertionError(f"{path}: {_type_name(a)} != {_type_name(b)}")
    if isinstance(a, Batch):
        if a.stream_id != b.stream_id:
            raise AssertionError(f"{path}: stream {a.stream_id!r} != {b.stream_id!r}")
        assert_same(a.data, b.data, path)
    elif isinstance(a, (pa.RecordBatch, pa.Table)):
        if a.schema != b.schema:
            raise AssertionError(f"{path}: schema {a.schema} != {b.schema}")
        for name in a.schema.names:
            assert_same(a.column(name), b.column(name), f"{path}.column({name!r})")
    elif isinstance(a, (pa.Array, pa.ChunkedArray)):
        if a.type != b.type or len(a) != len(b):
            raise AssertionError(f"{path}: {a.type}[{len(a)}] != {b.type}[{len(b)}]")
        if not a.equals(b):
            _raise_first_difference(path, a.to_pylist(), b.to_pylist())
    elif isinstance(a, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{path}: array {a.dtype}{a.shape} != {b.dtype}{b.shape}")
        equal_nan = a.dtype.kind in "fc"
        if not np.array_equal(a, b, equal_nan=equal_nan):
            _raise_first_difference(path, a.ravel().tolist(), b.ravel().tolist())
    elif _is_tensor(a):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(
                f"{path}: tensor {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
            )
        x, y = a.detach().cpu(), b.detach().cpu()
        same = x == y
        if x.is_floating_point() or x.is_complex():
            same = same | (x.isnan() & y.isnan())
        if not bool(same.all()):
            _raise_first_difference(path, x.flatten().tolist(), y.flatten().tolist())
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        if a.keys() != b.keys():
            only_a = sorted(map(repr, a.keys() - b.keys()))
            only_b = sorted(map(repr, b.keys() - a.keys()))
            raise AssertionError(f"{path}: keys differ: only left {only_a}, only right {only_b}")
        for key in a:
            assert_same(a[key], b[key], _child(path, key))
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise AssertionError(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            raise AssertionError(f"{path}: {a!r} != {b!r}")
    else:
        try:
            equal = bool(a == b)
        except Exception as e:  # noqa: BLE001 - an ``==`` that fails is a difference
            raise AssertionError(f"{path}: cannot compare {_type_name(a)} values ({e})") from None
        if not equal:
            raise AssertionError(f"{path}: {_short(a)} != {_short(b)}")


def _raise_first_difference(path: str, a: list[Any], b: list[Any]) -> None:
    def same(x: Any, y: Any) -> bool:
        both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        return x == y or both_nan

    differ = [i for i, (x, y) in enumerate(zip(a, b)) if not same(x, y)]
    if differ:
        i = differ[0]
        raise AssertionError(
            f"{path}: {len(differ)} of {len(a)} values differ, "
            f"first at (flat) index {i}: {a[i]!r} != {b[i]!r}"
        )
    raise AssertionError(f"{path}: values differ")


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _short(v: Any, limit: int = 200) -> str:
    text = repr(v).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- running an operator ----------------------------------------------------------------


def named_check(func: Callable[..., None], *args: Any, **kwargs: Any) -> Callable[[], None]:
    """``func`` with its arguments bound, named after it without a ``check_`` prefix.

    The name is what pytest ids show (``RiverStrategy-predict_is_pure``).
    """
    check = functools.partial(func, *args, **kwargs)
    check.__name__ = func.__name__.removeprefix("check_")  # type: ignore[attr-defined]
    check.__doc__ = func.__doc__
    return check  # type: ignore[return-value]


def _feed(op: Operator, batches: Sequence[Batch]) -> list[tuple[Batch | None, SideOutput]]:
    """Process each batch and drain after each, as the runners do."""
    return [(op.process(b), op.drain()) for b in batches]


def _stream_kind(op: Operator) -> str:
    """Which check stream suits ``op``: its ``task``, else its schema's target type."""
    task = getattr(op, "task", None)
    if task in TASKS:
        return task
    for value in op.params().values():
        if isinstance(value, Schema) and value.target is not None:
            target = value.fields[value.target].type
            if pa.types.is_integer(target) or pa.types.is_boolean(target):
                return "classification"
    return "regression"


@dataclasses.dataclass(frozen=True)
class _Setup:
    cls: type[Operator]
    params: dict[str, Any]
    kind: str
    seed: int
    streams: Callable[[int, int], list[Batch]] | None = None

    def make(self) -> Operator:
        return self.cls(**self.params)

    def stream(self, n_batches: int = 8) -> list[Batch]:
        if self.streams is not None:
            return self.streams(n_batches, self.seed)
        return check_stream(self.kind, n_batches, self.seed)


# -- the checks --------------------------------------------------------------------------


def check_params_round_trip(setup: _Setup) -> None:
    """Constructor arguments come back from ``params()``; ``clone()`` has the same params."""
    op = setup.make()
    params = op.params()
    for name, value in setup.params.items():
        if name not in params:
            raise AssertionError(
                f"{setup.cls.__name__}.params() lacks the constructor argument {name!r}; store "
                "constructor arguments under their own names (or override params())"
            )
        assert_same(params[name], value, f"params()[{name!r}]")
    clone = op.clone()
    assert type(clone) is setup.cls, (
        f"clone() built a {type(clone).__name__}, not a {setup.cls.__name__}"
    )
    assert clone is not op, "clone() returned the operator itself"
    assert_same(clone.params(), params, "clone().params()")
    assert_same(setup.cls(**params).params(), params, "cls(**params()).params()")
    assert isinstance(op.describe(), str) and isinstance(repr(op), str)


def check_clone_is_fresh(setup: _Setup) -> None:
    """A clone of an operator that has processed a stream starts from scratch."""
    op = setup.make()
    _feed(op, setup.stream())
    assert_same(op.clone().snapshot(), setup.make().snapshot(), "clone().snapshot()")


def check_empty_batch(setup: _Setup) -> None:
    """``process`` on an empty batch returns an empty batch or None, at the start and mid-stream."""
    stream = setup.stream(4)
    empty = empty_like(stream[0])
    op = setup.make()
    for where in ("at the start", "mid-stream"):
        out = op.process(empty)
        if out is not None:
            assert isinstance(out, Batch), f"process(empty) {where} returned {_type_name(out)}"
            assert len(out) == 0, f"process(empty) {where} returned {len(out)} rows"
        op.drain()
        _feed(op, stream[:2])


def check_snapshot_is_plain(setup: _Setup) -> None:
    """``snapshot()`` is a dict of plain data, before, during and after a stream."""
    op = setup.make()
    stream = setup.stream()
    stages = (("fresh", []), ("mid-stream", stream[:3]), ("after the stream", stream[3:]))
    for where, batches in stages:
        _feed(op, batches)
        state = op.snapshot()
        assert type(state) is dict, f"snapshot() ({where}) returned {_type_name(state)}, not a dict"
        assert_plain(state, f"snapshot() ({where})")


def check_snapshot_restore_identical(setup: _Setup, split: int = 3) -> None:
    """Snapshot after ``split`` batches; restored operators continue exactly like the original.

    The original goes on first, so a snapshot that shares objects with the live
    operator (instead of copying them) shows up as a difference. The state is
    restored into two fresh operators (restore must not change the state it is
    given) and back into the original (rewinding a used operator).
    """
    stream = setup.stream()
    head, tail = stream[:split], stream[split:]
    op = setup.make()
    _feed(op, head)
    state = op.snapshot()
    expected = _feed(op, tail)
    final = op.snapshot()
    for who, twin in (("fresh", setup.make()), ("second fresh", setup.make()), ("rewound", op)):
        twin.restore(state)
        assert_same(_feed(twin, tail), expected, f"after restore into the {who} operator: outputs")
        assert_same(twin.snapshot(), final, f"after restore into the {who} operator: snapshot()")


def check_deterministic(setup: _Setup) -> None:
    """Two operators built from the same parameters give the same outputs on the same stream."""
    stream = setup.stream()
    first = setup.make()
    expected = _feed(first, stream)
    second = setup.make()
    with scrambled_global_rngs():
        got = _feed(second, stream)
    assert_same(got, expected, "outputs of a second operator")
    assert_same(second.snapshot(), first.snapshot(), "snapshot() of a second operator")


def check_drain_empties_side_outputs(setup: _Setup) -> None:
    """After ``drain()``, a second ``drain()`` with no ``process`` between returns nothing."""
    op = setup.make()
    for batch in setup.stream():
        op.process(batch)
        op.drain()
        again = op.drain()
        assert isinstance(again, SideOutput), f"drain() returned {_type_name(again)}"
        assert not again, f"a second drain() returned {again} again"


def check_does_not_mutate_input(setup: _Setup) -> None:
    """``process`` leaves its input batch unchanged."""
    op = setup.make()
    stream = setup.stream()
    for i, batch in enumerate([*stream, empty_like(stream[0])]):
        before = copy_batch(batch)
        op.process(batch)
        op.drain()
        assert_same(batch, before, f"input batch {i} after process")


class scrambled_global_rngs:
    """Move Python's, numpy's and torch's global generators to an unrelated state, then put
    them back: an operator that draws from them unseeded stops being deterministic."""

    def __enter__(self) -> None:
        self.states: list[tuple[Callable[[Any], Any], Any]] = [
            (random.setstate, random.getstate()),
            (np.random.set_state, np.random.get_state()),
        ]
        random.seed(0xC0FFEE)
        np.random.seed(0xC0FFEE % 2**32)
        torch = sys.modules.get("torch")
        if torch is not None:
            self.states.append((torch.set_rng_state, torch.get_rng_state()))
            torch.manual_seed(0xC0FFEE)

    def __exit__(self, *exc: Any) -> None:
        for setter, state in self.states:
            setter(state)


OPERATOR_CHECKS: tuple[Callable[[_Setup], None], ...] = (
    check_params_round_trip,
    check_clone_is_fresh,
    check_empty_batch,
    check_snapshot_is_plain,
    check_snapshot_restore_identical,
    check_deterministic,
    check_drain_empties_side_outputs,
    check_does_not_mutate_input,
)


def yield_operator_checks(
    operator_cls: type[Operator], *, schema_kind: str | None = None, seed: int = 42,
    params: dict[str, Any] | None = None, streams: Callable[[int, int], list[Batch]] | None = None,
) -> Iterator[Callable[[], None]]:
    """Yield the generic checks for a data-path operator class (see module docstring).

    Each check builds its own instances with ``operator_cls(**operator_cls._unit_test_params())``
    (or ``params`` when given: one configuration of several, e.g. each River detector)
    and raises ``AssertionError`` naming what differs. ``schema_kind`` overrides
    the check stream's kind (default: from the operator, see module docstring);
    ``streams(n_batches, seed)`` replaces the check stream altogether (a stream on which
    the operator has decisions to make, e.g. an error rate that jumps for a binary
    drift detector).
    """
    params = dict(operator_cls._unit_test_params() if params is None else params)
    kind = schema_kind or _stream_kind(operator_cls(**params))
    setup = _Setup(operator_cls, params, kind, seed, streams)
    for check in OPERATOR_CHECKS:
        yield named_check(check, setup)


def check_operator(operator_cls: type[Operator], **kwargs: Any) -> None:
    """Run every operator check on ``operator_cls``; the first failure raises."""
    for check in yield_operator_checks(operator_cls, **kwargs):
        check()
