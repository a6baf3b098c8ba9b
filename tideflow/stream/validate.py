"""Schema validation with a quarantine: bad rows are kept and counted, never dropped.

`Validate` checks every batch against a `Schema`. Rows that cannot be made to
fit go to quarantine, each with a reason:

======================  =====================================================
``missing_field``       a declared column is absent (every row of the batch)
``extra_field``         an undeclared column is present (with ``extra="quarantine"``)
``wrong_type``          a value that cannot be cast safely to the declared type
``wrong_shape``         a tensor column whose shape differs from the declared one
``null``                a null in a non-nullable column
``nan`` / ``inf``       a non-finite float where the field does not allow it
``duplicate_offset``    an offset already seen (repeated delivery)
``out_of_order_offset`` an offset lower than one already accepted
``time_out_of_order``   a time earlier than the newest time already accepted
                        for the row's key (``time_order="quarantine"``)
======================  =====================================================

Time order. When the schema declares a ``time`` role, time must not go back
within a key (the schema's ``key`` role; the whole stream when there is none):
a row whose time is earlier than the newest time accepted so far for its key is
``time_out_of_order``. Ties are allowed (several rows of one key may share a
time: a sensor that reports two values at once, stations on one clock), which is
also the rule the nowcasters keep ("not after the newest"). Only rows that pass
every other check move the newest time on: a row quarantined for its content
never reached a learner, so its time (often the broken value itself) must not
make the rows after it late. A null time (in a nullable time column) is not
compared. ``time_order="keep"`` lets late rows through and counts them as
``time_out_of_order_kept`` (not quarantined); ``"off"`` does not look at time.

Quarantined rows travel as a small Arrow table (offset, reason, detail and the
row as JSON, so that rows whose types are wrong can still be stored) and end in
the run's quarantine file and counts. The valid rows go on, cast to the schema.

>>> from tideflow.stream.schema import Schema
>>> v = Validate(Schema({"x": "float64", "y": "int64"}, target="y"))
>>> good = v.process(Batch.from_pydict({"x": [1.0, float("nan"), 3.0], "y": [0, 1, 1]}))
>>> len(good), v.counts
(2, {'nan': 1})
"""

from __future__ import annotations

import json
import math
from collections import Counter, deque
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.stream.batch import OFFSET, Batch, is_tensor_type
from tideflow.stream.operator import Operator, SideOutput
from tideflow.stream.schema import Schema

TIME_ORDER = ("quarantine", "keep", "off")

#: reasons that are counted but whose rows go on (not quarantined)
PASSED_REASONS = ("extra_field_dropped", "time_out_of_order_kept")

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("stream_id", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("step", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("row", pa.string()),
    ]
)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _finite(v: Any) -> Any:
    # JSON has no NaN/inf: write them as strings, also inside tensors and lists
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def _row_json(row: dict[str, Any]) -> str:
    return json.dumps(_finite(row), default=_json_default, allow_nan=False)


def quarantine_table(
    batch: Batch, rows: np.ndarray, reasons: list[str], details: list[str], step: str
) -> pa.Table:
    """Quarantine records for ``rows`` (indices into ``batch``)."""
    sub = batch.data.take(pa.array(rows, type=pa.int64())).to_pylist() if len(rows) else []
    offsets = [r.get(OFFSET) for r in sub]
    return pa.table(
        {
            "stream_id": [batch.stream_id] * len(sub),
            "offset": pa.array(offsets, type=pa.int64()),
            "step": [step] * len(sub),
            "reason": reasons,
            "detail": details,
            "row": [_row_json(r) for r in sub],
        },
        schema=QUARANTINE_SCHEMA,
    )


def _cast_rowwise(col: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast value by value; returns the cast column (nulls where it failed) and a failure mask."""
    values = col.to_pylist()
    failed = np.zeros(len(values), dtype=bool)
    out: list[Any] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(pa.scalar(v).cast(target, safe=True).as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError):
            if pa.types.is_floating(target) and isinstance(v, str):
                try:
                    out.append(float(v))
                    continue
                except ValueError:
                    pass
            failed[i] = True
            out.append(None)
    return pa.array(out, type=target), failed


class _Marks:
    """Which rows of a batch are bad, each with the first reason found (a later check never
    overwrites it). The reason and detail arrays are made at the first marked row, so a clean
    batch builds none."""

    __slots__ = ("bad", "_reason", "_detail")

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self._reason: np.ndarray | None = None
        self._detail: np.ndarray | None = None

    @property
    def reason(self) -> np.ndarray:
        if self._reason is None:
            self._reason = np.empty(len(self.bad), dtype=object)
        return self._reason

    @property
    def detail(self) -> np.ndarray:
        if self._detail is None:
            self._detail = np.empty(len(self.bad), dtype=object)
        return self._detail

    def mark(self, mask: np.ndarray, why: str, what: str) -> None:
        if not mask.any():
            return
        new = mask & ~self.bad
        self.reason[new] = why
        self.detail[new] = what
        self.bad |= mask


class _Plan:
    """How `Validate` checks batches of one column layout (``in_schema``): the declared columns
    missing from it, the undeclared ones in it, where each declared column is (its index, or
    its name where the layout holds the name twice, so that the lookup fails as it always
    did), and which ones need the finiteness check."""

    __slots__ = ("schema", "in_schema", "missing", "extra", "fields", "offset_index", "out_schema")

    def __init__(self, schema: Schema, in_schema: pa.Schema) -> None:
        self.schema = schema
        self.in_schema = in_schema
        names = in_schema.names
        have = set(names)
        self.missing = [f for f in schema.fields if f not in have]
        self.extra = sorted(have - set(schema.fields) - {OFFSET})
        self.fields: list[tuple[str, Any, int | str, bool]] = []
        for fname, fld in schema.fields.items():
            if fname not in have:
                continue
            value_type = fld.type.value_type if is_tensor_type(fld.type) else fld.type
            check = not fld.allow_nonfinite and pa.types.is_floating(value_type)
            self.fields.append((fname, fld, _where(names, fname), check))
        self.offset_index = _where(names, OFFSET)
        self.out_schema = schema.arrow_schema()


def _where(names: list[str], name: str) -> int | str:
    return names.index(name) if names.count(name) == 1 else name


class Validate(Operator):
    """Check batches against a schema; quarantine what does not fit (see module docstring).

    Args:
        schema: the expected columns and their roles.
        extra: what to do with undeclared columns: ``"quarantine"`` every row of
            the batch (default), or ``"drop"`` the column (counted as
            ``extra_field_dropped``).
        check_offsets: quarantine duplicate and out-of-order offsets.
        offset_window: how many recent offsets per stream are remembered to tell a
            duplicate (seen before) from a late event (never seen).
        time_order: with a ``time`` role in the schema, what to do with a row whose time is
            earlier than the newest time of its key: ``"quarantine"`` it (default, reason
            ``time_out_of_order``), ``"keep"`` it and count it (``time_out_of_order_kept``),
            or ``"off"``: no check. The time column must be orderable (timestamp, date,
            duration, integer or float) unless ``"off"``.
        name: the step name written into quarantine records.
    """

    kind = "validate"

    def __init__(
        self,
        schema: Schema,
        *,
        extra: str = "quarantine",
        check_offsets: bool = True,
        offset_window: int = 4096,
        time_order: str = "quarantine",
        name: str = "validate",
    ) -> None:
        if extra not in ("quarantine", "drop"):
            raise ValueError(f"extra must be 'quarantine' or 'drop', got {extra!r}")
        if time_order not in TIME_ORDER:
            raise ValueError(f"time_order must be one of {TIME_ORDER}, got {time_order!r}")
        if schema.time is not None and time_order != "off":
            ttype = schema.fields[schema.time].type
            if not _orderable(ttype):
                raise ValueError(
                    f"time column {schema.time!r} is {ttype}, which has no time order: declare it as a "
                    f"timestamp, date, duration or number (TableSource parses text times), or pass "
                    f"time_order='off'"
                )
        self.schema = schema
        self.extra = extra
        self.check_offsets = check_offsets
        self.offset_window = offset_window
        self.time_order = time_order
        self.name = name
        self.counts: dict[str, int] = {}
        self.rows_in = 0
        self.rows_out = 0
        self._last_offset: dict[str, int] = {}
        self._recent: dict[str, deque[int]] = {}
        # stream id -> key value -> newest accepted time, as the number `_time_numbers` reads
        self._newest: dict[str, dict[Any, int | float]] = {}
        self._pending: list[pa.Table] = []
        self._plan_cache: _Plan | None = None

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        # The check stream has no time column; declaring ``x`` (random, so it goes back
        # often) as the time makes the suite exercise the newest-time state and its snapshot.
        return {"schema": Schema({"x": "float64", "y": "float64"}, target="y", time="x")}

    def _count(self, reasons: list[str]) -> None:
        c = Counter(self.counts)
        c.update(reasons)
        self.counts = dict(c)

    def _plan(self, in_schema: pa.Schema) -> _Plan:
        """What ``process`` does with a batch of this column layout (kept for the next batch
        with the same layout: a stream's batches almost always share it)."""
        plan = self._plan_cache
        if plan is None or plan.schema is not self.schema or not plan.in_schema.equals(in_schema):
            plan = self._plan_cache = _Plan(self.schema, in_schema)
        return plan

    def process(self, batch: Batch) -> Batch | None:
        n = len(batch)
        self.rows_in += n
        if n == 0:
            return batch
        data = batch.data
        plan = self._plan(data.schema)
        marks = _Marks(n)
        mark = marks.mark

        if plan.missing:
            mark(np.ones(n, dtype=bool), "missing_field", ",".join(plan.missing))
        if plan.extra and self.extra == "quarantine":
            mark(np.ones(n, dtype=bool), "extra_field", ",".join(plan.extra))
        elif plan.extra:
            self._count(["extra_field_dropped"] * len(plan.extra))

        columns: dict[str, pa.Array] = {}
        for fname, fld, index, check_finite in plan.fields:
            col = data.column(index) if isinstance(index, int) else batch.column(index)
            if is_tensor_type(fld.type):
                if not is_tensor_type(col.type) or list(col.type.shape) != list(fld.type.shape):
                    mark(np.ones(n, dtype=bool), "wrong_shape", f"{fname}: {col.type} != {fld.type}")
                    continue
                if col.type.value_type != fld.type.value_type:
                    arr = col.to_numpy_ndarray().astype(fld.type.value_type.to_pandas_dtype())
                    col = pa.FixedShapeTensorArray.from_numpy_ndarray(arr)
                if check_finite:
                    values = col.to_numpy_ndarray().reshape(n, -1)
                    mark(np.isnan(values).any(axis=1), "nan", fname)
                    mark(np.isinf(values).any(axis=1), "inf", fname)
                columns[fname] = col
                continue
            if col.type != fld.type:
                try:
                    col = pc.cast(col, fld.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    col, failed = _cast_rowwise(col, fld.type)
                    mark(failed, "wrong_type", f"{fname}: not {fld.type}")
            nulls = col.null_count
            if nulls and not fld.nullable:
                mark(col.is_null().to_numpy(zero_copy_only=False), "null", fname)
            if check_finite:
                values = col.to_numpy(zero_copy_only=False)
                # a finite sum means every value is finite (NaN and inf both poison a sum); the
                # rare sum that overflows on finite values only takes the exact path below
                if nulls or not math.isfinite(values.sum()):
                    with np.errstate(invalid="ignore"):
                        nan = np.isnan(values)
                        if nulls:
                            nan &= ~col.is_null().to_numpy(zero_copy_only=False)
                        mark(nan, "nan", fname)
                        mark(np.isinf(values), "inf", fname)
            columns[fname] = col

        if self.check_offsets:
            self._check_offsets(batch, marks)

        tname = self.schema.time
        if tname is not None and self.time_order != "off" and tname in columns:
            late, why = self._late_rows(batch, columns, marks.bad)
            if late.any():
                if self.time_order == "quarantine":
                    # late rows passed every other check, so this is their only reason
                    for i, text in why.items():
                        marks.reason[i] = "time_out_of_order"
                        marks.detail[i] = text
                    marks.bad |= late
                else:
                    self._count(["time_out_of_order_kept"] * int(late.sum()))

        bad = marks.bad
        any_bad = bool(bad.any())
        if any_bad:
            idx = np.flatnonzero(bad)
            self._pending.append(
                quarantine_table(batch, idx, list(marks.reason[idx]), list(marks.detail[idx]), self.name)
            )
            self._count(list(marks.reason[idx]))
            if len(idx) == n:
                return None
        where = plan.offset_index
        offsets = data.column(where) if isinstance(where, int) else batch.column(OFFSET)
        ordered = [offsets] + [columns[f] for f in self.schema.fields]
        out = pa.RecordBatch.from_arrays(ordered, schema=plan.out_schema)
        if any_bad:
            out = out.filter(pa.array(~bad))
        self.rows_out += out.num_rows
        return Batch(out, batch.stream_id, batch.end_of_task)

    def _check_offsets(self, batch: Batch, marks: _Marks) -> None:
        """Quarantine duplicate and late offsets (module docstring). Offsets at or below the
        running mark are either redeliveries (seen: duplicate) or late events (never seen: out
        of order); a window of recent offsets tells which."""
        recent = self._recent.setdefault(batch.stream_id, deque(maxlen=self.offset_window))
        running = self._last_offset.get(batch.stream_id)
        offsets = batch.offsets
        # Every remembered offset is at most the running mark (an offset is remembered either
        # as the new mark or as a late one below it). So a batch whose offsets rise strictly
        # and start above the mark holds neither a duplicate nor a late offset: it only
        # moves the mark and the window, with no per-row work.
        rising = not np.count_nonzero(offsets[1:] <= offsets[:-1])
        if rising and (running is None or int(offsets[0]) > running):
            recent.extend(offsets[-self.offset_window:].tolist() if self.offset_window else ())
            self._last_offset[batch.stream_id] = int(offsets[-1])
            return
        n = len(offsets)
        recent_set = set(recent)
        for i, off in enumerate(offsets.tolist()):
            if off in recent_set:
                marks.mark(_one(n, i), "duplicate_offset", str(off))
                continue
            if running is not None and off < running:
                marks.mark(_one(n, i), "out_of_order_offset", f"{off} < {running}")
            else:
                # a row quarantined for its content still consumed its offset: a
                # redelivery of that offset is a duplicate, not a second chance
                running = off
            recent.append(off)
            recent_set.add(off)
        if running is not None:
            self._last_offset[batch.stream_id] = running

    def _late_rows(self, batch: Batch, columns: dict[str, pa.Array], bad: np.ndarray
                   ) -> tuple[np.ndarray, dict[int, str]]:
        """Rows whose time is earlier than the newest accepted time of their key, and why;
        moves each key's newest time on over the rows that passed every other check."""
        n = len(batch)
        tcol = columns[self.schema.time]  # type: ignore[index]
        times = _time_numbers(tcol)
        eligible = ~bad & tcol.is_valid().to_numpy(zero_copy_only=False)
        kcol = columns.get(self.schema.key) if self.schema.key is not None else None
        groups = _key_groups(kcol, np.flatnonzero(eligible))
        newest = self._newest.setdefault(batch.stream_id, {})
        late = np.zeros(n, dtype=bool)
        why: dict[int, str] = {}
        for key, idx in groups.items():
            values = times[idx]
            # the newest time before each row: the key's newest so far, then the running
            # maximum of this batch's rows (late rows are below it, so they never raise it)
            before = np.empty_like(values)
            prior = newest.get(key)
            before[0] = prior if prior is not None else _lowest(values.dtype)
            if len(values) > 1:
                before[1:] = np.fmax.accumulate(values[:-1])
                if prior is not None:
                    before[1:] = np.fmax(before[1:], prior)
            is_late = values < before  # ties pass
            late[idx[is_late]] = True
            for i, b in zip(idx[is_late].tolist(), before[is_late].tolist()):
                who = "" if self.schema.key is None else f"{self.schema.key}={key}: "
                why[i] = f"{who}{_time_text(times[i], tcol.type)} < {_time_text(b, tcol.type)}"
            top = np.fmax.reduce(values)
            if prior is None or top > prior:
                newest[key] = top.item()
        return late, why

    def drain(self) -> SideOutput:
        out = SideOutput(quarantine=self._pending)
        self._pending = []
        return out

    @property
    def quarantined(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in PASSED_REASONS)

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "last_offset": dict(self._last_offset),
            "recent": {k: list(v) for k, v in self._recent.items()},
            "newest_time": {k: dict(v) for k, v in self._newest.items()},
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.counts = dict(state["counts"])
        self._last_offset = dict(state["last_offset"])
        self._recent = {k: deque(v, maxlen=self.offset_window) for k, v in state["recent"].items()}
        # snapshots from before the time-order check have no newest times: nothing seen yet
        self._newest = {k: dict(v) for k, v in state.get("newest_time", {}).items()}
        self.rows_in = state["rows_in"]
        self.rows_out = state["rows_out"]
        self._pending = []


def _orderable(t: pa.DataType) -> bool:
    return (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_duration(t)
            or pa.types.is_integer(t) or pa.types.is_floating(t))


def _time_numbers(col: pa.Array) -> np.ndarray:
    """A time column as numbers that order like it: int64 in the column's own unit (exact,
    also for nanosecond timestamps), float64 for floats; nulls read as 0 (callers skip them)."""
    t = col.type
    if pa.types.is_floating(t):
        return pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(t):
        return pc.cast(col, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    storage = pa.int32() if t.bit_width == 32 else pa.int64()
    return col.view(storage).cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)


def _time_text(value: Any, t: pa.DataType) -> str:
    """A number from `_time_numbers` written as the column's own value (for quarantine details)."""
    if pa.types.is_floating(t) or pa.types.is_integer(t):
        return str(value)
    storage = pa.int32() if t.bit_width == 32 else pa.int64()
    return str(pa.array([int(value)], pa.int64()).cast(storage).view(t)[0].as_py())


def _lowest(dtype: np.dtype) -> Any:
    return -np.inf if dtype.kind == "f" else np.iinfo(np.int64).min


def _plain_key(value: Any) -> Any:
    # snapshot keys must be plain scalars; a key column of another type (dates, decimals)
    # is stored by its text, which is one-to-one within one column type
    if value is None or type(value) in (str, int, float, bool, bytes):
        return value
    return str(value)


def _key_groups(col: pa.Array | None, rows: np.ndarray) -> dict[Any, np.ndarray]:
    """Row indices ``rows`` (ascending) grouped by their key (`_plain_key` of their value in
    ``col``; one group, key None, without a key column): each group ascending, the groups in
    the order of their first row."""
    if not len(rows):
        return {}
    if col is None:
        return {None: rows}
    try:
        encoded = pc.dictionary_encode(col)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        # a key type Arrow cannot hash: the values themselves, row by row
        keys = col.to_pylist()
        by_key: dict[Any, list[int]] = {}
        for i in rows.tolist():
            by_key.setdefault(_plain_key(keys[i]), []).append(i)
        return {k: np.asarray(v, dtype=np.int64) for k, v in by_key.items()}
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)[rows]
    order = np.argsort(codes, kind="stable")  # stable: each group keeps its rows ascending
    parts = np.split(rows[order], np.flatnonzero(np.diff(codes[order])) + 1)
    values = encoded.dictionary.to_pylist()
    groups: dict[Any, np.ndarray] = {}
    for part in sorted(parts, key=lambda p: int(p[0])):
        code = int(codes[np.searchsorted(rows, part[0])])
        key = None if code < 0 else _plain_key(values[code])
        if key in groups:  # two Arrow values with one plain key (0.0 and -0.0, say): one group
            groups[key] = np.sort(np.concatenate([groups[key], part]))
        else:
            groups[key] = part
    return groups


def _one(n: int, i: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[i] = True
    return m
