"""The unit that moves through a pipeline: an Arrow record batch with stream metadata.

A `Batch` wraps a `pyarrow.RecordBatch` whose rows each carry an integer offset
(the position of the event in its stream) plus the stream's id. Offsets are what
make replay, seek and checkpoint/resume exact. Columns may hold fixed-shape
tensors (images, feature vectors) through Arrow's canonical fixed-shape tensor
extension type; `Batch.tensor` hands them out as numpy arrays without copying.

>>> import numpy as np
>>> b = Batch.from_pydict({"x": [1.0, 2.0], "y": [0, 1]}, stream_id="demo", first_offset=10)
>>> b.first_offset, b.last_offset, len(b)
(10, 11, 2)
>>> img = Batch.from_pydict({"image": np.zeros((3, 2, 2), dtype=np.float32)}, stream_id="imgs")
>>> img.tensor("image").shape
(3, 2, 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OFFSET = "offset"
"""Name of the per-row offset column every batch carries."""


def tensor_array(values: np.ndarray) -> pa.ExtensionArray:
    """Wrap an ``(n, *shape)`` numpy array as an Arrow fixed-shape tensor column.

    The conversion shares memory with ``values`` when it is C-contiguous.
    """
    values = np.ascontiguousarray(values)
    if values.ndim < 2:
        raise ValueError(f"a tensor column needs at least 2 dimensions (rows, ...), got {values.shape}")
    return pa.FixedShapeTensorArray.from_numpy_ndarray(values)


def is_tensor_type(dtype: pa.DataType) -> bool:
    return isinstance(dtype, pa.FixedShapeTensorType)


def _column_from_python(values: Any) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if isinstance(values, np.ndarray) and values.ndim >= 2:
        return tensor_array(values)
    return pa.array(values)


@dataclass(frozen=True)
class Batch:
    """An Arrow record batch of one stream, every row with an offset.

    Attributes:
        data: the rows; always holds an int64 ``offset`` column.
        stream_id: which stream the rows come from.
        end_of_task: the source marks the batch whose last row ends a task (task streams
            whose boundaries are not in a column); a row subset keeps the mark, a slice
            keeps it only when it reaches the batch's last row.
    """

    data: pa.RecordBatch
    stream_id: str = "stream"
    end_of_task: bool = False

    def __post_init__(self) -> None:
        if OFFSET not in self.data.schema.names:
            raise ValueError(f"batch of stream {self.stream_id!r} has no {OFFSET!r} column")
        if self.data.schema.field(OFFSET).type != pa.int64():
            raise TypeError(
                f"batch of stream {self.stream_id!r}: {OFFSET!r} must be int64, "
                f"got {self.data.schema.field(OFFSET).type}"
            )

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_pydict(
        cls,
        columns: Mapping[str, Any],
        *,
        stream_id: str = "stream",
        first_offset: int = 0,
    ) -> Batch:
        """Build a batch from column values; offsets are numbered from ``first_offset``
        unless an ``offset`` column is given."""
        arrays = {name: _column_from_python(v) for name, v in columns.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        if OFFSET not in arrays:
            arrays = {OFFSET: pa.array(np.arange(first_offset, first_offset + n, dtype=np.int64)), **arrays}
        else:
            arrays[OFFSET] = arrays[OFFSET].cast(pa.int64())
        return cls(pa.RecordBatch.from_arrays(list(arrays.values()), names=list(arrays)), stream_id)

    @classmethod
    def from_record_batch(cls, data: pa.RecordBatch, *, stream_id: str = "stream") -> Batch:
        return cls(data, stream_id)

    @classmethod
    def of_checked_schema(cls, data: pa.RecordBatch, stream_id: str, end_of_task: bool = False) -> Batch:
        """A batch of ``data`` whose schema the caller has already checked to hold an int64
        ``offset`` column, without checking it again (a recording checks its one schema when
        it opens the file and reads every batch under it; per batch, the check would be a
        cost of the order of reading the batch's message from the mapped file)."""
        batch = object.__new__(cls)
        # the fields set as the generated __init__ would (a frozen dataclass keeps them in __dict__)
        batch.__dict__.update(data=data, stream_id=stream_id, end_of_task=end_of_task)
        return batch

    @classmethod
    def empty(cls, schema: pa.Schema, *, stream_id: str = "stream") -> Batch:
        return cls(pa.RecordBatch.from_pylist([], schema=schema), stream_id)

    # -- metadata -------------------------------------------------------------------
    def __len__(self) -> int:
        return self.data.num_rows

    @property
    def num_rows(self) -> int:
        return self.data.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self.data.schema

    @property
    def column_names(self) -> list[str]:
        return self.data.schema.names

    @property
    def offsets(self) -> np.ndarray:
        return self.data.column(OFFSET).to_numpy(zero_copy_only=False)

    @property
    def first_offset(self) -> int | None:
        return int(self.data.column(OFFSET)[0].as_py()) if len(self) else None

    @property
    def last_offset(self) -> int | None:
        return int(self.data.column(OFFSET)[len(self) - 1].as_py()) if len(self) else None

    def event_time_range(self, column: str) -> tuple[Any, Any] | None:
        """(min, max) of an event-time column, or None for an empty batch."""
        if not len(self):
            return None
        mm = pc.min_max(self.data.column(column))
        return mm["min"].as_py(), mm["max"].as_py()

    # -- access ---------------------------------------------------------------------
    def column(self, name: str) -> pa.Array:
        try:
            return self.data.column(name)
        except KeyError:
            raise KeyError(
                f"batch of stream {self.stream_id!r} has no column {name!r}; columns: {self.column_names}"
            ) from None

    def numpy(self, name: str) -> np.ndarray:
        """A column as numpy: tensors keep their shape, scalars become 1-d."""
        col = self.column(name)
        if is_tensor_type(col.type):
            return col.to_numpy_ndarray()
        return col.to_numpy(zero_copy_only=False)

    def tensor(self, name: str) -> np.ndarray:
        """A fixed-shape tensor column as an ``(n, *shape)`` numpy array (zero-copy)."""
        col = self.column(name)
        if not is_tensor_type(col.type):
            raise TypeError(f"column {name!r} is {col.type}, not a fixed-shape tensor")
        return col.to_numpy_ndarray()

    def features(self, names: Iterable[str], dtype: Any = np.float64) -> np.ndarray:
        """Stack scalar columns (and flattened tensor columns) into an ``(n, d)`` matrix."""
        parts = []
        for name in names:
            arr = self.numpy(name)
            parts.append(arr.reshape(len(self), -1).astype(dtype, copy=False))
        if not parts:
            return np.zeros((len(self), 0), dtype=dtype)
        return np.concatenate(parts, axis=1)

    def to_pylist(self) -> list[dict[str, Any]]:
        return self.data.to_pylist()

    # -- transformation -----------------------------------------------------------
    def slice(self, start: int, length: int | None = None) -> Batch:
        data = self.data.slice(start, length)
        to_end = self.end_of_task and start + data.num_rows >= self.data.num_rows
        return Batch(data, self.stream_id, to_end)

    def take(self, indices: Any) -> Batch:
        return Batch(self.data.take(pa.array(indices, type=pa.int64())), self.stream_id, self.end_of_task)

    def filter(self, mask: Any) -> Batch:
        return Batch(self.data.filter(pa.array(mask, type=pa.bool_())), self.stream_id, self.end_of_task)

    def select(self, names: Iterable[str]) -> Batch:
        names = list(names)
        if OFFSET not in names:
            names = [OFFSET, *names]
        return Batch(self.data.select(names), self.stream_id, self.end_of_task)

    def with_column(self, name: str, values: Any) -> Batch:
        arr = _column_from_python(values)
        if name in self.column_names:
            data = self.data.set_column(self.column_names.index(name), name, arr)
        else:
            data = self.data.append_column(name, arr)
        return Batch(data, self.stream_id, self.end_of_task)

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if not batches:
            raise ValueError("nothing to concatenate")
        table = pa.Table.from_batches([b.data for b in batches])
        combined = table.combine_chunks().to_batches()
        data = combined[0] if combined else batches[0].data.slice(0, 0)
        return Batch(data, batches[0].stream_id, batches[-1].end_of_task)

    def __repr__(self) -> str:
        if len(self):
            span = f"offsets {self.first_offset}..{self.last_offset}"
        else:
            span = "empty"
        mark = ", end of task" if self.end_of_task else ""
        return f"Batch(stream={self.stream_id!r}, rows={len(self)}, {span}, columns={self.column_names}{mark})"
