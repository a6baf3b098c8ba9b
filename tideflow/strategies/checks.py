"""The check suite every `Strategy` must pass, in the manner of River's ``yield_checks``.

docs/architecture.md ("Contracts") lists what a strategy promises; `yield_strategy_checks`
yields one zero-argument function per promise, named after it, so that a
failure reads ``AvalancheStrategy-snapshot_restore_identical``:

================================  ===========================================================
``learn_returns_report``          ``learn`` returns a `StepReport` with ``samples == len(batch)``
``predict_returns_array``         ``predict`` returns a ``pa.Array`` of ``len(batch)`` (float for
                                  regression, integer or boolean for 0/1 classification), also
                                  for a batch without the target column and for an empty batch
``predict_is_pure``               predicting twice gives the same answer, and a strategy that
                                  predicts before each learn ends like one that never predicted
``snapshot_restore_identical``    a snapshot restored into a fresh strategy (and into the used
                                  one) predicts identically, and both go on learning identically
``same_seed_same_results``        two strategies built alike predict identically after each
                                  batch, whatever the global random generators hold
``empty_learn_is_noop``           ``learn`` on an empty batch reports 0 samples, changes nothing
``wrong_schema_clear_error``      a batch missing a feature (or, for ``learn``, the target)
                                  raises an error that names the column, and changes nothing
``snapshot_is_plain``             the snapshot is plain data (`assert_plain`)
``clone_is_fresh``                ``clone()`` of a trained strategy has equal ``params()`` and
                                  behaves like a new, unfitted one
``does_not_mutate_input``         ``learn`` and ``predict`` leave their batch unchanged
``on_drift_keeps_contract``       after ``on_drift`` it still predicts and snapshots plain data
``messy_rows_lose_no_batch``      on a stream with a time column, nulls and NaN in a nullable
                                  feature and rows out of time order (`messy_schema`,
                                  `tideflow.stream.checks.messy_stream`), ``learn`` and
                                  ``predict`` never raise, ``predict`` gives one value per row
                                  (finite for regression; per-class scores finite where no
                                  feature is missing), and a ``learn`` that changed no
                                  prediction reports every row of its batch in
                                  ``StepReport.skipped`` (a replayed batch; a batch whose
                                  nullable feature is null throughout)
================================  ===========================================================

"Identically" means the same predictions on every batch of the check stream
and the same top-level bookkeeping in the snapshot (keys, counters); whole
snapshots of twins are not compared, because libraries keep random generators
seeded from the OS that are never drawn from (River's tree leaves do).

Each check builds its strategies with ``cls(**cls._unit_test_params())`` and binds
them to ``Schema({"x0": "float64", "x1": "float64", "y": ...}, target="y")``,
where ``y`` is float64 when the instance's ``problem`` is ``"regression"`` and int64
(0/1) when it is ``"classification"``. Override ``_unit_test_params`` when the
constructor has required arguments (``AvalancheStrategy`` needs ``n_classes``)
or to keep the checks fast (a small hidden layer). The check stream
(`tideflow.stream.checks.check_stream`) has a few batches of 64 rows with a drift
halfway. ``messy_rows_lose_no_batch`` binds to `messy_schema` instead (the same columns, a
nullable ``x1`` and a time column ``t``) and feeds `tideflow.stream.checks.messy_stream`.

How a strategy is picked up: defining a concrete `Strategy` subclass registers
it (``Operator.__init_subclass__``); ``tests/test_checks.py`` imports every
module under ``tideflow.strategies`` and runs this suite on each registered
strategy. Nothing to list by hand.

>>> from tideflow.strategies.river_adapter import RiverStrategy
>>> checks = list(yield_strategy_checks(RiverStrategy))
>>> checks[0].__name__, len(checks)
('learn_returns_report', 12)
>>> for check in checks:
...     check()
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.checks import (
    scrambled_global_rngs,
    assert_plain,
    assert_same,
    check_stream,
    copy_batch,
    empty_like,
    messy_stream,
    named_check,
)
from tideflow.stream.drift import DriftEvent
from tideflow.stream.schema import Field, Schema
from tideflow.strategies.base import ClassScores, StepReport, Strategy

__all__ = ["check_schema", "check_strategy", "messy_schema", "yield_strategy_checks"]

FEATURES = ("x0", "x1")
TARGET = "y"
TIME = "t"


def check_schema(problem: str) -> Schema:
    """The schema the checks bind a strategy of ``problem`` ("regression" or "classification") to."""
    y = "int64" if problem == "classification" else "float64"
    return Schema({"x0": "float64", "x1": "float64", TARGET: y}, target=TARGET)


def messy_schema(problem: str) -> Schema:
    """The schema of the messy check stream: `check_schema`'s columns, ``x1`` nullable (NaN
    allowed too) and an int64 time column ``t`` in seconds (the schema's time role)."""
    y = "int64" if problem == "classification" else "float64"
    x1 = Field("x1", pa.float64(), nullable=True, allow_nonfinite=True)
    return Schema({TIME: "int64", "x0": "float64", "x1": x1, TARGET: y}, target=TARGET, time=TIME)


@dataclasses.dataclass(frozen=True)
class _Setup:
    cls: type[Strategy]
    params: dict[str, Any]
    problem: str
    seed: int
    n_batches: int = 4

    def make(self) -> Strategy:
        strategy = self.cls(**self.params)
        strategy.bind(check_schema(self.problem))
        return strategy

    def stream(self) -> list[Batch]:
        return check_stream(self.problem, self.n_batches, self.seed, features=FEATURES)


def _predictions(strategy: Strategy, stream: list[Batch]) -> list[pa.Array]:
    return [strategy.predict(batch) for batch in stream]


def _assert_same_bookkeeping(a: dict[str, Any], b: dict[str, Any], where: str) -> None:
    """Compare two snapshots' keys and top-level numbers and strings (counters and the like).

    Twins are compared by their predictions, not by whole snapshots: libraries
    hold random generators that are seeded from the OS and never drawn from
    (every Gaussian estimator in a River tree has one), so whole snapshots of
    equally good twins may differ.
    """
    assert_same(sorted(a), sorted(b), f"snapshot() keys ({where})")
    for key, value in a.items():
        if type(value) in (int, float, str, bool, type(None)):
            assert_same(value, b[key], f"snapshot()[{key!r}] ({where})")


# -- the checks --------------------------------------------------------------------------


def check_learn_returns_report(setup: _Setup) -> None:
    """``learn`` returns a `StepReport` counting the batch's rows."""
    strategy = setup.make()
    for batch in setup.stream():
        report = strategy.learn(batch)
        assert isinstance(report, StepReport), (
            f"learn returned {type(report).__name__}, not StepReport"
        )
        assert report.samples == len(batch), (
            f"StepReport.samples is {report.samples}, the batch has {len(batch)} rows"
        )


def check_predict_returns_array(setup: _Setup) -> None:
    """``predict`` gives one value per row as a ``pa.Array``, with or without the target column."""
    strategy = setup.make()
    stream = setup.stream()
    # labels are 0/1 for classification; River's binary classifiers answer True/False
    kinds = (pa.types.is_integer, pa.types.is_boolean) if setup.problem == "classification" else (
        pa.types.is_floating,
    )
    for i, batch in enumerate(stream):
        for when in ("before learning", "after learning"):
            preds = strategy.predict(batch)
            assert isinstance(preds, pa.Array), (
                f"predict returned {type(preds).__name__}, not pyarrow.Array"
            )
            assert len(preds) == len(batch), (
                f"predict returned {len(preds)} values for {len(batch)} rows"
            )
            if i or when == "after learning":  # an unfitted model may have nothing to say yet
                assert any(is_kind(preds.type) for is_kind in kinds), (
                    f"a {setup.problem} strategy predicted {preds.type} values ({when})"
                )
            unlabelled = batch.select(FEATURES)
            where = f"predict on batch {i} without the target ({when})"
            assert_same(strategy.predict(unlabelled), preds, where)
            if when == "before learning":
                strategy.learn(batch)
    empty = strategy.predict(empty_like(stream[0]))
    assert isinstance(empty, pa.Array) and len(empty) == 0, (
        f"predict(empty batch) returned {empty!r}"
    )


def check_predict_is_pure(setup: _Setup) -> None:
    """Predicting changes nothing: twice gives the same, and it does not alter later learning."""
    stream = setup.stream()
    predicting, learning_only = setup.make(), setup.make()
    for i, batch in enumerate(stream):
        first = predicting.predict(batch)
        assert_same(predicting.predict(batch), first, f"second predict on batch {i}")
        predicting.learn(batch)
        learning_only.learn(batch)
    assert_same(
        _predictions(predicting, stream), _predictions(learning_only, stream),
        "predictions of a strategy that predicted before each learn vs one that only learned",
    )
    _assert_same_bookkeeping(predicting.snapshot(), learning_only.snapshot(), "after predicting")


def check_snapshot_restore_identical(setup: _Setup, split: int = 2) -> None:
    """A restored snapshot predicts identically and goes on learning identically.

    The original goes on learning before anything is restored, so a snapshot
    that shares objects with the live strategy shows up as a difference. The
    state is restored into two fresh strategies and back into the original.
    """
    stream = setup.stream()
    head, tail = stream[:split], stream[split:]
    original = setup.make()
    for batch in head:
        original.learn(batch)
    state = original.snapshot()
    expected_now = _predictions(original, stream)
    expected_later = []
    for batch in tail:
        original.learn(batch)
        expected_later.append(_predictions(original, stream))
    final = original.snapshot()
    twins = (("fresh", setup.make()), ("second fresh", setup.make()), ("rewound", original))
    for who, twin in twins:
        twin.restore(state)
        assert_same(
            _predictions(twin, stream), expected_now, f"predictions right after restore ({who})"
        )
        got_later = []
        for batch in tail:
            twin.learn(batch)
            got_later.append(_predictions(twin, stream))
        assert_same(got_later, expected_later, f"predictions learning on after restore ({who})")
        _assert_same_bookkeeping(twin.snapshot(), final, f"learning on after restore ({who})")


def check_same_seed_same_results(setup: _Setup) -> None:
    """Two strategies built from the same parameters predict identically after every batch."""
    stream = setup.stream()
    first, second = setup.make(), setup.make()
    expected = []
    for batch in stream:
        first.learn(batch)
        expected.append(_predictions(first, stream))
    got = []
    with scrambled_global_rngs():
        for batch in stream:
            second.learn(batch)
            got.append(_predictions(second, stream))
    assert_same(got, expected, "predictions of a second strategy built alike, after each batch")
    _assert_same_bookkeeping(second.snapshot(), first.snapshot(), "a second strategy built alike")


def check_empty_learn_is_noop(setup: _Setup) -> None:
    """``learn`` on an empty batch reports 0 samples and changes neither state nor predictions."""
    stream = setup.stream()
    empty = empty_like(stream[0])
    strategy = setup.make()
    for when, batches in (("unfitted", []), ("after learning", stream[:2])):
        for batch in batches:
            strategy.learn(batch)
        # predict first: an unfitted model may set itself up lazily on its first predict
        preds = strategy.predict(stream[-1])
        state = strategy.snapshot()
        report = strategy.learn(empty)
        assert isinstance(report, StepReport), f"learn(empty) returned {type(report).__name__}"
        assert report.samples == 0, f"learn(empty) ({when}) reported {report.samples} samples"
        assert_same(strategy.snapshot(), state, f"snapshot() after learn(empty) ({when})")
        assert_same(strategy.predict(stream[-1]), preds, f"predictions after learn(empty) ({when})")


def check_wrong_schema_clear_error(setup: _Setup) -> None:
    """A batch without a needed column raises an error naming it (not a bare KeyError).

    The failed call must leave the strategy as it was.
    """
    stream = setup.stream()
    strategy = setup.make()
    strategy.learn(stream[0])
    batch = stream[1]
    cases = [
        ("learn", FEATURES[1], batch.select([FEATURES[0], TARGET])),
        ("predict", FEATURES[1], batch.select([FEATURES[0], TARGET])),
        ("learn", TARGET, batch.select(FEATURES)),
    ]
    for method, missing, bad in cases:
        state = strategy.snapshot()
        try:
            getattr(strategy, method)(bad)
        except Exception as e:  # noqa: BLE001 - any error type will do if it names the column
            message = str(e)
            if missing not in message:
                raise AssertionError(
                    f"{method} on a batch without {missing!r} raised "
                    f"{type(e).__name__}({message!r}), which does not name the column"
                ) from e
            if message.strip("'\"") == missing:
                raise AssertionError(
                    f"{method} on a batch without {missing!r} raised a bare "
                    f"{type(e).__name__}({message}); say what is missing and what the batch has"
                ) from e
        else:
            raise AssertionError(f"{method} on a batch without column {missing!r} raised nothing")
        assert_same(
            strategy.snapshot(), state, f"snapshot() after the failed {method} without {missing!r}"
        )


def check_snapshot_is_plain(setup: _Setup) -> None:
    """``snapshot()`` is a dict of plain data, unfitted and after learning."""
    strategy = setup.make()
    for when, batches in (("unfitted", []), ("after learning", setup.stream())):
        for batch in batches:
            strategy.learn(batch)
        state = strategy.snapshot()
        assert type(state) is dict, (
            f"snapshot() ({when}) returned {type(state).__name__}, not a dict"
        )
        assert_plain(state, f"snapshot() ({when})")


def check_clone_is_fresh(setup: _Setup) -> None:
    """``clone()`` of a trained strategy: a new object with equal params and an unfitted state."""
    stream = setup.stream()
    strategy = setup.make()
    for batch in stream:
        strategy.learn(batch)
    clone = strategy.clone()
    assert type(clone) is setup.cls and clone is not strategy, "clone() must build a new instance"
    assert_same(clone.params(), strategy.params(), "clone().params()")
    clone.bind(check_schema(setup.problem))
    unfitted = setup.make()
    _assert_same_bookkeeping(clone.snapshot(), unfitted.snapshot(), "clone() vs an unfitted one")
    assert_same(
        _predictions(clone, stream), _predictions(unfitted, stream),
        "predictions of clone() vs an unfitted strategy",
    )
    for batch in stream:
        clone.learn(batch)
        unfitted.learn(batch)
    assert_same(
        _predictions(clone, stream), _predictions(unfitted, stream),
        "predictions of clone() vs a new strategy, both trained on the stream",
    )


def check_does_not_mutate_input(setup: _Setup) -> None:
    """``learn`` and ``predict`` leave their input batch unchanged."""
    strategy = setup.make()
    for i, batch in enumerate(setup.stream()):
        before = copy_batch(batch)
        strategy.predict(batch)
        strategy.learn(batch)
        assert_same(batch, before, f"input batch {i} after predict and learn")


def check_on_drift_keeps_contract(setup: _Setup) -> None:
    """After ``on_drift`` the strategy still learns, predicts and snapshots plain data."""
    stream = setup.stream()
    strategy = setup.make()
    strategy.learn(stream[0])
    half = stream[len(stream) // 2]
    event = DriftEvent(half.stream_id, half.first_offset or 0, "ADWIN", "x0", "check", 1.0)
    strategy.on_drift(event)
    for i, batch in enumerate(stream[1:], start=1):
        samples = strategy.learn(batch).samples
        assert samples == len(batch), (
            f"after on_drift, learn on batch {i} reported {samples} samples"
        )
        preds = strategy.predict(batch)
        assert len(preds) == len(batch), (
            f"after on_drift, predict gave {len(preds)} values for {len(batch)} rows"
        )
    assert_plain(strategy.snapshot(), "snapshot() after on_drift")


def _outputs(strategy: Strategy, batches: list[Batch]) -> list[Any]:
    """Predictions of every batch, with per-class scores where the strategy gives them."""
    out: list[Any] = []
    for batch in batches:
        out.append(strategy.predict(batch))
        try:
            out.append(strategy.predict_scores(batch).scores)
        except NotImplementedError:
            pass
    return out


def _check_answers(strategy: Strategy, batch: Batch, problem: str, where: str) -> None:
    preds = strategy.predict(batch)
    assert isinstance(preds, pa.Array) and len(preds) == len(batch), (
        f"predict {where} gave {len(preds)} values for {len(batch)} rows"
    )
    if problem == "regression":
        values = np.asarray(preds.to_numpy(zero_copy_only=False), dtype=np.float64)
        assert np.isfinite(values).all(), (
            f"predict {where} gave {int((~np.isfinite(values)).sum())} non-finite values of {len(batch)}"
        )
    try:
        scores = strategy.predict_scores(batch)
    except NotImplementedError:
        return
    assert isinstance(scores, ClassScores) and scores.scores.shape[0] == len(batch)
    whole = np.isfinite(batch.features(FEATURES)).all(axis=1)
    bad = ~np.isfinite(scores.scores[whole]).all(axis=1)
    assert not bad.any(), (
        f"predict_scores {where} gave non-finite scores for {int(bad.sum())} rows that miss no feature "
        "(a row with a missing value must not spoil the model)"
    )


def _check_skipped(report: StepReport, batch: Batch, where: str) -> None:
    assert isinstance(report, StepReport), f"learn {where} returned {type(report).__name__}"
    assert report.samples == len(batch), (
        f"learn {where}: StepReport.samples is {report.samples}, the batch has {len(batch)} rows"
    )
    for reason, n in report.skipped.items():
        assert type(reason) is str and type(n) is int and n > 0, (
            f"learn {where}: StepReport.skipped must map reasons to positive row counts, got {reason!r}: {n!r}"
        )
    assert sum(report.skipped.values()) <= len(batch), (
        f"learn {where}: StepReport.skipped counts {sum(report.skipped.values())} rows of {len(batch)}"
    )


def check_messy_rows_lose_no_batch(setup: _Setup) -> None:
    """Nulls in a nullable feature and rows out of time order lose no batch, and a row that
    ``learn`` could not use is counted in ``StepReport.skipped``.

    Whether a strategy can use a row depends on what it reads (a nowcaster orders rows by
    time; a River model does not read the time), so the check asks what it can see from
    outside: a ``learn`` after which no prediction (nor per-class score) of any batch has
    changed used none of its rows, and must say so for every one of them.
    """
    strategy = setup.cls(**setup.params)
    strategy.bind(messy_schema(setup.problem))
    stream = messy_stream(setup.problem, setup.n_batches, setup.seed, features=FEATURES, nullable=("x1",),
                          time=TIME)
    for i, batch in enumerate(stream):
        _check_answers(strategy, batch, setup.problem, f"on messy batch {i} before learning it")
        _check_skipped(strategy.learn(batch), batch, f"on messy batch {i}")
        _check_answers(strategy, batch, setup.problem, f"on messy batch {i} after learning it")
    replay = stream[-2]
    last = stream[-1]
    # new times, other targets, x1 null throughout: rows a strategy that reads x1 cannot use
    steps = int(max(b.numpy(TIME).max() for b in stream)) // 3600 + 1 + np.arange(len(last))
    other = last.numpy(TARGET)
    other = 1 - other if setup.problem == "classification" else other + 1.0
    blank = Batch.from_pydict(
        {TIME: pa.array(steps * 3600, type=pa.int64()), "x0": last.column("x0"),
         "x1": pa.nulls(len(last), pa.float64()), TARGET: other},
        stream_id=last.stream_id, first_offset=int(last.last_offset) + 1)  # type: ignore[arg-type]
    probes = (("a replay of messy batch " + str(len(stream) - 2), replay),
              ("a batch whose nullable feature x1 is null throughout", blank))
    for what, probe in probes:
        before = _outputs(strategy, stream)
        report = strategy.learn(probe)
        _check_skipped(report, probe, f"on {what}")
        try:
            assert_same(_outputs(strategy, stream), before)
        except AssertionError:
            continue  # it used some rows: nothing to say about which
        assert sum(report.skipped.values()) == len(probe), (
            f"learn on {what} changed no prediction, so it used none of its {len(probe)} rows, but "
            f"StepReport.skipped counts {dict(report.skipped)}: say why rows are left out"
        )
        _check_answers(strategy, probe, setup.problem, f"on {what}")


STRATEGY_CHECKS: tuple[Callable[[_Setup], None], ...] = (
    check_learn_returns_report,
    check_predict_returns_array,
    check_predict_is_pure,
    check_snapshot_restore_identical,
    check_same_seed_same_results,
    check_empty_learn_is_noop,
    check_wrong_schema_clear_error,
    check_snapshot_is_plain,
    check_clone_is_fresh,
    check_does_not_mutate_input,
    check_on_drift_keeps_contract,
    check_messy_rows_lose_no_batch,
)


def yield_strategy_checks(
    strategy_cls: type[Strategy], *, seed: int = 42
) -> Iterator[Callable[[], None]]:
    """Yield the strategy checks for ``strategy_cls`` (see module docstring).

    The instance's ``problem`` (read from one built with ``_unit_test_params()``,
    since adapters such as `RiverStrategy` decide it from their estimator) picks
    the check schema.
    """
    params = strategy_cls._unit_test_params()
    problem = strategy_cls(**params).problem
    if problem not in ("regression", "classification"):
        raise ValueError(
            f"{strategy_cls.__name__}.problem is {problem!r}; expected 'regression' or 'classification'"
        )
    setup = _Setup(strategy_cls, params, problem, seed)
    for check in STRATEGY_CHECKS:
        yield named_check(check, setup)


def check_strategy(strategy_cls: type[Strategy], **kwargs: Any) -> None:
    """Run every strategy check on ``strategy_cls``; the first failure raises."""
    for check in yield_strategy_checks(strategy_cls, **kwargs):
        check()
