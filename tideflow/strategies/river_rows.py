"""Arrow batches into River's rows: one dict per row, a missing value's key left out.

River models take a row as a dict and treat an absent key as a missing value, so a
null (and NaN in a float column) leaves its key out of the row's dict
(`tideflow.strategies.river_adapter`, "Missing values"). `RowPlan` holds how the
batches of one Arrow schema are converted, worked out once per schema:

* a few rows (at most `SMALL_BATCH`) whose features all have one floating type go
  through one Arrow tensor: a single conversion for every column, which keeps each
  value (float32 and float64 values are exact in the tensor's floating type) and turns
  a null into NaN, a missing value either way. When the target has the features' type
  it rides along, so that learning reads no column again; an integer label never does
  (it must stay an integer). This is what keeps a stream of one-row batches cheap: each
  Arrow column converted on its own has a fixed cost, which a one-row batch pays per column;
* other few-row batches column by column, zipped into dicts;
* larger batches through the table's ``to_pylist``.

Every path gives the same dicts with the same values, keys in the features' order.

>>> import pyarrow as pa
>>> data = pa.RecordBatch.from_pydict({"offset": pa.array([0, 1]), "a": [1.5, None],
...                                    "b": [float("nan"), 2.0], "y": [1.0, 2.0]})
>>> RowPlan(data.schema, ["a", "b"], "y").convert(data)
([{'a': 1.5}, {'b': 2.0}], [1.0, 2.0])
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from tideflow.strategies.river_per_event import is_missing

__all__ = ["SMALL_BATCH", "RowPlan"]

#: batches of at most this many rows are converted column by column, or through one tensor
#: (cheaper for few rows than a table's to_pylist)
SMALL_BATCH = 32

_FLOATS = (pa.float64(), pa.float32())


class RowPlan:
    """How batches of one Arrow schema become River rows (module docstring).

    ``tensor``: whether few rows go through one tensor; ``select``: the columns that tensor
    is made of (None: the whole batch, when every column is a number, which Arrow casts to
    one floating type); ``pick``: the features' positions in a tensor row; ``target_at``:
    the target's position there, or None when the target does not ride along.
    """

    def __init__(self, schema: pa.Schema, names: list[str], target: str | None) -> None:
        self.schema, self.names, self.target = schema, list(names), target
        types = {schema.field(n).type for n in names}
        self.tensor = len(types) == 1 and next(iter(types)) in _FLOATS
        self.select: list[int] | None = None
        self.pick: Callable[[list[Any]], tuple[Any, ...]] | None = None
        self.target_at: int | None = None
        if not self.tensor:
            return
        numbers = all(pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in schema)
        index = [schema.get_field_index(n) for n in names]
        t = schema.get_field_index(target) if target is not None else -1
        with_target = t >= 0 and target not in names and schema.field(t).type in types
        if not numbers:
            self.select = index + ([t] if with_target else [])
        at = index if numbers else list(range(len(index)))
        self.pick = operator.itemgetter(*at) if len(at) > 1 else (lambda row, i=at[0]: (row[i],))
        if with_target:
            self.target_at = t if numbers else len(index)

    def fits(self, schema: pa.Schema, names: list[str], target: str | None) -> bool:
        """Whether this plan is the one for batches of ``schema`` (same columns, same types)."""
        return (self.schema is schema or self.schema.equals(schema)) and self.names == names and self.target == target

    def convert(self, data: pa.RecordBatch) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """The rows of ``data`` as dicts, and its target values when the conversion took them
        along (None or NaN where missing), else None."""
        names, n = self.names, data.num_rows
        if self.tensor and 0 < n <= SMALL_BATCH:
            table = data if self.select is None else data.select(self.select)
            values = np.asarray(table.to_tensor(null_to_nan=True))
            lists, pick = values.tolist(), self.pick
            rows = [dict(zip(names, pick(r))) for r in lists]  # type: ignore[misc]
            if np.isnan(values).any():
                for row in rows:
                    for name in [k for k, v in row.items() if v != v]:
                        del row[name]
            at = self.target_at
            return rows, (None if at is None else [r[at] for r in lists])
        if not names:
            return [{} for _ in range(n)], None
        if n <= SMALL_BATCH:
            # few rows: per-column lists zipped into dicts cost less than a table's to_pylist
            columns = [data.column(name) for name in names]
            rows = [dict(zip(names, values)) for values in zip(*[col.to_pylist() for col in columns])]
        else:
            table = data.select(names)
            rows = table.to_pylist()
            columns = table.columns
        gaps = [name for name, col in zip(names, columns) if _has_missing(col, rows, name)]
        if gaps:
            for row in rows:
                for name in gaps:
                    if is_missing(row[name]):
                        del row[name]
        return rows, None


def _has_missing(col: pa.Array, rows: list[dict[str, Any]], name: str) -> bool:
    """Whether a column holds a null, or a NaN if it is a float column (``rows``: the column's
    values already converted, under ``name``, which few rows are checked in)."""
    if col.null_count:
        return True
    if not pa.types.is_floating(col.type):
        return False
    if len(rows) <= SMALL_BATCH:
        return any(r[name] != r[name] for r in rows)  # NaN is the one value unequal to itself
    return bool(np.isnan(col.to_numpy(zero_copy_only=False)).any())
