"""A table as a stream: a pandas DataFrame, an Arrow table, a Parquet or a CSV file as a `Source`.

`TableSource` gives rows a user already has offsets, a schema with roles (target, key,
time, task) and an exact ``seek``: a table runs through any pipeline, resumes from a
checkpoint, and records with `tideflow.connectors.recording.record`. `source_from_file`
(the ``tideflow`` command's way in) picks the source for a file by its suffix.

>>> import pandas as pd
>>> df = pd.DataFrame({"when": ["2024-03-01 00:00", "2024-03-01 01:00", "2024-03-01 02:00"],
...                    "x": [0.5, None, 2.5], "y": [1.0, 2.0, 3.0]})
>>> src = TableSource.from_pandas(df, target="y", time="when", batch_size=2)
>>> print(src.schema())
Schema(when: timestamp[us], x: double?, y: double; target=y, time=when)
>>> [b.offsets.tolist() for b in src]
[[0, 1], [2]]
>>> src.seek(1); [b.offsets.tolist() for b in src]
[[1], [2]]

Choices
-------
Offsets
    Row numbers ``0 .. n-1``. A table with a column named ``offset`` keeps it as the
    offsets (a table written from a recording resumes at the same events): it must be
    integer, a null in it is an error when read, and offsets that do not increase go on as
    they are for a validate step to quarantine. ``seek(offset)`` starts at the first row
    whose offset is at least ``offset``.
Batches
    Cut at multiples of ``batch_size`` rows from the first row: the batches after a resume
    are those of an uninterrupted run (the first after a seek into a batch is shorter).
Columns and types
    ``features`` lists the columns kept besides the role columns (default: all); those
    left out are named in ``metadata()["columns_left_out"]``. Categorical columns are read
    as their values; a column with no value (an empty CSV column) is float64; ``types``
    declares a column's type (``{"station": "string"}``), cast batch by batch.
Nulls
    Role columns (target, key, time, task) are not nullable by default: a row without a
    target cannot be scored, without a key not routed, without a time not ordered, so a
    validate step quarantines it (reason ``null``) before a learner meets it. Other columns
    are nullable where the data can hold nulls (not in a ``required`` Parquet column).
    ``nullable=`` names exactly the nullable columns instead (the target among them lets
    learners see null targets, as the weather feed does). `record` takes the source's
    schema, so it stops at a null in a column that is not nullable, naming it.
Time
    A time role given as text becomes ``timestamp[us]``: ISO 8601 (``2024-03-01 12:00``;
    with ``Z`` or a zone offset: ``timestamp[us, tz=UTC]``), or ``time_format`` for
    ``pyarrow.compute.strptime`` (``"%d/%m/%Y %H:%M"``). A text time column none of whose
    first values parses is a ValueError naming the column and a value. Numbers, dates and
    timestamps stay as they are.
Values that do not fit
    A value that cannot take its column's type (text in a CSV column whose first block
    held numbers, a time that does not parse) is never dropped nor made null: that batch
    carries the column as text, and a validate step casts it row by row and quarantines
    the rows that do not fit (``wrong_type``, the row kept as read).
Formats
    pandas and Arrow tables are in memory. Parquet streams a row group at a time
    (``ParquetFile.iter_batches``; memory holds about one row group, whatever the file's
    size), and ``seek`` skips row groups unread (by row counts, or the ``offset`` column's
    statistics). CSV streams by the MiB (``pyarrow.csv.open_csv``; first line: the column
    names; types inferred from the first MiB); ``seek`` reads from the start and skips.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.connectors.base import Source
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Field, Schema, to_arrow_type

DEFAULT_BATCH_SIZE = 1024
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
RECORDING_SUFFIXES = (".arrow", ".arrows")
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_CSV_BLOCK = 1 << 20  # bytes of CSV per read (the first one's types are the inferred ones)
_SAMPLE = 1000  # first values of a text time column that decide how it parses

PathLike = str | os.PathLike[str]


# -- readers: raw record batches from a row number on ------------------------------------


class _TableReader:
    """An in-memory Arrow table (from pandas or Arrow)."""

    def __init__(self, table: pa.Table, fmt: str) -> None:
        self.table, self.fmt, self.schema, self.path = table, fmt, table.schema, None
        self.num_rows: int | None = table.num_rows

    def read(self, columns: list[str], start: int) -> Iterator[pa.RecordBatch]:
        yield from self.table.select(columns).slice(start).to_batches(max_chunksize=1 << 16)

    def row_at_or_after(self, offset: int) -> int:
        hits = np.flatnonzero(self.table.column(OFFSET).to_numpy(zero_copy_only=False) >= offset)
        return int(hits[0]) if len(hits) else self.table.num_rows


class _ParquetReader:
    """A Parquet file, read a row group at a time."""

    fmt = "parquet"

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        with pq.ParquetFile(path) as pf:
            self.schema, meta = pf.schema_arrow, pf.metadata
        self.num_rows = meta.num_rows
        counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # row group i: starts[i]..
        j = self.schema.get_field_index(OFFSET)  # -1: no offset column
        stats = [meta.row_group(i).column(j).statistics if j >= 0 else None for i in range(meta.num_row_groups)]
        self._maxima = [int(st.max) if st is not None and st.has_min_max else None for st in stats]

    def read(self, columns: list[str], start: int) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        groups = len(self.starts) - 1
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        if first >= groups:
            return
        # no pre-buffering (it reads ahead whole row groups) and no thread pool: memory stays near
        # one row group, and a source actor uses the one CPU it was given
        with pq.ParquetFile(self.path, pre_buffer=False) as pf:
            chunks = pf.iter_batches(batch_size=1 << 13, row_groups=range(first, groups), columns=columns,
                                     use_threads=False)
            yield from _skip(chunks, start - int(self.starts[first]))

    def row_at_or_after(self, offset: int) -> int:
        # a row group whose largest offset is below ``offset`` holds no row at or after it
        for i, top in enumerate(self._maxima):
            if top is None or top >= offset:
                return int(self.starts[i])
        return int(self.starts[-1])


class _CsvReader:
    """A CSV file, read block by block with every value as text."""

    fmt = "csv"

    def __init__(self, path: Path, delimiter: str, time: str | None) -> None:
        self.path, self.delimiter, self.num_rows = path, delimiter, None
        # types as pyarrow infers them, but the time column stays text: our own rule parses it
        with self._open(_CSV_BLOCK, {time: pa.string()} if time else None, None) as r:
            self.schema = r.schema
            self.sample: pa.RecordBatch | None = next(self._checked(r), None)

    def _open(self, block: int, types: dict[str, pa.DataType] | None, columns: list[str] | None) -> Any:
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(column_types=types or {}, include_columns=columns or [],
                                      strings_can_be_null=True)
        try:  # opening reads the first block already
            return pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=block, use_threads=False),
                                 parse_options=pcsv.ParseOptions(delimiter=self.delimiter), convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def read(self, columns: list[str], start: int) -> Iterator[pa.RecordBatch]:
        with self._open(_CSV_BLOCK, {c: pa.string() for c in columns}, columns) as r:
            yield from _skip(self._checked(r), start)

    def _checked(self, reader: Any) -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except pa.ArrowInvalid as exc:  # a malformed line: pyarrow names the row, we name the file
            raise ValueError(f"{self.path}: {exc}") from None

    def row_at_or_after(self, offset: int) -> int:
        return 0  # no index: read from the start and skip


# -- the source ---------------------------------------------------------------------------


class TableSource(Source):
    """Rows of a table as a seekable stream (see module docstring).

    Args:
        data: a pandas DataFrame, a ``pyarrow.Table``, or the path of a Parquet
            (``.parquet``, ``.pq``) or CSV (``.csv``, ``.tsv``, ``.txt``, also compressed:
            ``.csv.gz``) file.
        target, key, time, task: the columns playing these roles.
        features: the other columns to keep (a list, or text separated by ``;``);
            default: every column.
        nullable: the columns that may hold nulls (default: see module docstring).
        types: declared types of columns, ``{"col": "float64" | pyarrow type}``.
        time_format: ``strptime`` layout of a text time column (default ISO 8601).
        batch_size: rows per batch.
        stream_id: the stream's id (default: the file's name without suffix, or ``"table"``).
        delimiter: CSV field separator (default ``,``; ``\\t`` for ``.tsv``).
    """

    kind = "table"

    def __init__(self, data: Any, *, target: str | None = None, key: str | None = None, time: str | None = None,
                 task: str | None = None, features: Sequence[str] | str | None = None,
                 nullable: Sequence[str] | str | None = None, types: Mapping[str, Any] | None = None,
                 time_format: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 stream_id: str | None = None, delimiter: str | None = None) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.roles = {"target": target, "key": key, "time": time, "task": task}
        self.time_format = time_format
        self.types = dict(types or {})
        self._reader = _open(data, time=time, delimiter=delimiter)
        path = self._reader.path
        self.stream_id = stream_id or (_plain_name(path)[0].rsplit(".", 1)[0] if path is not None else "table")
        raw = self._reader.schema
        names = [n for n in raw.names if n != OFFSET]
        wanted = _names(features)
        for what, cols in [("role", [c for c in self.roles.values() if c]), ("feature", wanted or []),
                           ("nullable", _names(nullable) or []), ("types", list(self.types))]:
            unknown = [c for c in cols if c not in names]
            if unknown:
                raise ValueError(f"{self._where()}: {what} column(s) {unknown} not in the table; "
                                 f"its columns: {names}")
        keep = set(wanted if wanted is not None else names) | {c for c in self.roles.values() if c}
        self.columns = [n for n in names if n in keep]
        self.left_out = [n for n in names if n not in keep]
        self._offset_column = OFFSET in raw.names
        if self._offset_column and not pa.types.is_integer(raw.field(OFFSET).type):
            raise ValueError(f"{self._where()}: column {OFFSET!r} is {raw.field(OFFSET).type}; as the row "
                             f"offsets it must be integer: rename the column to keep it as data")
        self._declared = {c: self._declared_type(c, raw.field(c)) for c in self.columns}
        given = _names(nullable)
        role_cols = {c for c in self.roles.values() if c}
        allow = set(given) if given is not None else {
            c for c in self.columns if c not in role_cols and raw.field(c).nullable}
        self._schema = Schema({c: Field(c, t, nullable=c in allow) for c, t in self._declared.items()},
                              **self.roles)
        self.nullable = sorted(allow & set(self.columns))
        self._target: int | None = None  # the offset a seek asked for; None: the first row
        self._epoch = 0

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def from_pandas(cls, df: Any, **options: Any) -> TableSource:
        """From a pandas DataFrame (a named index becomes a column; an unnamed one is row labels
        and is not read)."""
        return cls(_TableReader(_from_pandas(df), "pandas"), **options)

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch, **options: Any) -> TableSource:
        return cls(table, **options)

    @classmethod
    def from_parquet(cls, path: PathLike, **options: Any) -> TableSource:
        return cls(_ParquetReader(_existing(path)), **options)

    @classmethod
    def from_csv(cls, path: PathLike, *, delimiter: str = ",", **options: Any) -> TableSource:
        return cls(_CsvReader(_existing(path), delimiter, options.get("time")), **options)

    # -- schema ---------------------------------------------------------------------
    def _where(self) -> str:
        return str(self._reader.path) if self._reader.path is not None else f"{self._reader.fmt} table"

    def _declared_type(self, name: str, field: pa.Field) -> pa.DataType:
        t = field.type
        if name in self.types:
            return to_arrow_type(self.types[name])
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_large_string(t):  # pandas' own strings: one text type for every format
            t = pa.string()
        if name == self.roles["time"]:
            if pa.types.is_string(t):
                return self._time_type(name)
            if not (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_integer(t)
                    or pa.types.is_floating(t) or pa.types.is_duration(t)):
                raise ValueError(f"{self._where()}: time column {name!r} is {t}, not a time: give timestamps, "
                                 f"dates, numbers or text")
        if pa.types.is_null(t):
            return pa.float64()
        return t

    def _time_type(self, name: str) -> pa.DataType:
        """The timestamp type a text time column parses to, decided by its first values."""
        sample = self._sample(name)
        if not len(sample):
            return pa.timestamp("us")
        best, hits = None, 0
        for t in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
            ok = int(_parse_time(sample, t, self.time_format)[1].sum())
            if ok > hits:
                best, hits = t, ok
        if best is None:
            layout = f"the layout {self.time_format!r}" if self.time_format else "ISO 8601 (2024-03-01 " \
                "12:00:00, 2024-03-01T12:00:00Z); pass time_format='%d/%m/%Y %H:%M' or so"
            raise ValueError(f"{self._where()}: time column {name!r} holds text that is not a time: "
                             f"{sample[0].as_py()!r} does not parse as {layout}")
        return best

    def _sample(self, name: str) -> pa.Array:
        chunks = iter([self._reader.sample]) if isinstance(self._reader, _CsvReader) else \
            self._reader.read([name], 0)
        first = next(chunks, None)
        getattr(chunks, "close", lambda: None)()
        col = first.column(name) if first is not None else pa.array([], pa.string())
        return col.cast(pa.string()).drop_null().slice(0, _SAMPLE)

    # -- Source contract --------------------------------------------------------------
    def schema(self) -> Schema:
        return self._schema

    @property
    def num_rows(self) -> int | None:
        """Rows in the table (None for CSV: known only by reading it all)."""
        return self._reader.num_rows

    @property
    def position(self) -> int:
        """The offset the next batch starts at or after (one past the last row yielded, or sought)."""
        return self._target if self._target is not None else 0

    def seek(self, offset: int) -> None:
        """The next batch starts at the first row whose offset is >= ``offset`` (at once, also mid-iteration)."""
        offset = int(offset)
        if offset < 0 and not self._offset_column:
            raise ValueError("offset must be >= 0")
        self._target = offset
        self._epoch += 1

    def batches(self) -> Iterator[Batch]:
        while True:
            epoch, restarted = self._epoch, False
            chunks = self._read(self._target)
            try:
                for batch in chunks:
                    # the position moves before the consumer sees the batch, so a snapshot
                    # taken while holding it resumes after it
                    self._target = int(batch.last_offset) + 1  # type: ignore[arg-type]
                    yield batch
                    if self._epoch != epoch:
                        restarted = True
                        break
            finally:
                chunks.close()
            if not restarted:
                return

    def _read(self, target: int | None) -> Iterator[Batch]:
        if self._offset_column:
            start = self._reader.row_at_or_after(target) if target is not None else 0
        else:
            start = target or 0
            if self._reader.num_rows is not None:
                start = min(start, self._reader.num_rows)
        columns = self.columns + ([OFFSET] if self._offset_column else [])
        seeking = self._offset_column and target is not None
        for rb, row in _grid(self._reader.read(columns, start), start, self.batch_size):
            if self._offset_column:
                offsets = self._offsets(rb.column(OFFSET), row)
                if seeking:
                    hits = np.flatnonzero(offsets.to_numpy(zero_copy_only=False) >= target)
                    if not len(hits):
                        continue
                    rb, offsets, seeking = rb.slice(int(hits[0])), offsets.slice(int(hits[0])), False
            else:
                offsets = pa.array(np.arange(row, row + rb.num_rows, dtype=np.int64))
            yield Batch(self._convert(rb, offsets), self.stream_id)

    def _offsets(self, col: pa.Array, row: int) -> pa.Array:
        if col.null_count:
            bad = row + int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{self._where()}: row {bad} has no offset (null in the {OFFSET!r} column)")
        try:
            return pc.cast(col, pa.int64(), safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{self._where()}: the {OFFSET!r} column from row {row} on is not int64: "
                             f"{exc}") from None

    def _convert(self, rb: pa.RecordBatch, offsets: pa.Array) -> pa.RecordBatch:
        arrays, fields = [offsets], [pa.field(OFFSET, pa.int64(), nullable=False)]
        for name in self.columns:
            want = self._declared[name]
            col = rb.column(name)
            if name == self.roles["time"] and pa.types.is_string(col.type) and pa.types.is_timestamp(want):
                col = _time_column(col, want, self.time_format)
            elif col.type != want:
                try:
                    col = pc.cast(col, want, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    pass  # goes on as read: a validate step quarantines the values that do not fit
            arrays.append(col)
            fields.append(pa.field(name, col.type))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def params(self) -> dict[str, Any]:
        what = str(self._reader.path) if self._reader.path is not None else f"{self._reader.num_rows} rows"
        return {"data": what, **{r: c for r, c in self.roles.items() if c}, "batch_size": self.batch_size}

    def metadata(self) -> dict[str, Any]:
        path = str(self._reader.path) if self._reader.path is not None else None
        return {**super().metadata(), "format": self._reader.fmt, "path": path, "rows": self._reader.num_rows,
                "offsets": f"column {OFFSET!r}" if self._offset_column else "row numbers",
                "columns": list(self.columns), "columns_left_out": list(self.left_out),
                "types": {c: str(t) for c, t in self._declared.items()}, "time_format": self.time_format,
                "batch_size": self.batch_size}


# -- helpers ------------------------------------------------------------------------------


def _open(data: Any, *, time: str | None, delimiter: str | None) -> Any:
    if isinstance(data, (_TableReader, _ParquetReader, _CsvReader)):
        return data
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return _TableReader(pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data, "arrow")
    if type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame":
        return _TableReader(_from_pandas(data), "pandas")
    if isinstance(data, (str, os.PathLike)):
        path = _existing(data)
        kind = file_kind(path)
        if kind == "parquet":
            return _ParquetReader(path)
        if kind == "csv":
            tsv = _plain_name(path)[0].lower().endswith(".tsv")
            return _CsvReader(path, delimiter or ("\t" if tsv else ","), time)
        raise ValueError(f"{path}: not a table file (.parquet, .pq, .csv, .tsv, .txt); a recording "
                         f"(.arrow) is a RecordingSource")
    raise TypeError(f"TableSource takes a pandas DataFrame, a pyarrow Table or a file path, "
                    f"not {type(data).__name__}")


def _from_pandas(df: Any) -> pa.Table:
    import pandas as pd

    named = isinstance(df.index, pd.MultiIndex) or df.index.name is not None
    df = df.reset_index(drop=not named)
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"pandas DataFrame: a column holds values of mixed types ({exc}); give it one "
                         f"type, e.g. df[col].astype(float) or .astype(str)") from None


def _existing(path: PathLike) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return Path(path)


def _plain_name(path: PathLike) -> tuple[str, bool]:
    """The file's name without a compression suffix, and whether it had one."""
    name = Path(path).name
    zipped = next((c for c in _COMPRESSED if name.lower().endswith(c)), "")
    return name[: len(name) - len(zipped)], bool(zipped)


def file_kind(path: PathLike) -> str | None:
    """``"csv"``, ``"parquet"`` or ``"recording"`` by the file's suffix (CSV may be compressed), else None."""
    name, zipped = _plain_name(path)
    name = name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if zipped:
        return None
    return "parquet" if name.endswith(PARQUET_SUFFIXES) else "recording" if name.endswith(RECORDING_SUFFIXES) \
        else None


def _names(value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[;,]", value) if v.strip()]
    return list(value)


def _grid(chunks: Iterator[pa.RecordBatch], start: int, size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Re-cut raw chunks into batches that end at multiples of ``size`` rows (counted from the
    table's first row), with the row number each starts at."""
    pending: list[pa.RecordBatch] = []
    row = begin = start
    limit = (start // size + 1) * size
    try:
        for rb in chunks:
            while rb.num_rows:
                take = min(rb.num_rows, limit - row)
                pending.append(rb.slice(0, take))
                rb = rb.slice(take)
                row += take
                if row == limit:
                    yield _concat(pending), begin
                    pending, begin, limit = [], row, limit + size
        if pending:
            yield _concat(pending), begin
    finally:
        getattr(chunks, "close", lambda: None)()  # a generator over a file: release the file now


def _skip(chunks: Any, rows: int) -> Iterator[pa.RecordBatch]:
    """The chunks without their first ``rows`` rows."""
    for rb in chunks:
        if rows >= rb.num_rows:
            rows -= rb.num_rows
            continue
        yield rb.slice(rows)
        rows = 0


def _concat(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(parts) == 1:
        return parts[0]
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def _parse_time(col: pa.Array, t: pa.DataType, layout: str | None) -> tuple[pa.Array, np.ndarray]:
    """Text times parsed to type ``t``: the parsed column (null where a value does not parse) and
    a mask of the values that parsed."""
    try:
        parsed = _parse_all(col, t, layout)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = []
        for v in col.to_pylist():  # one value at a time: only for chunks with a bad value
            try:
                values.append(None if v is None else _parse_all(pa.array([v], pa.string()), t, layout)[0].as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values.append(None)
        parsed = pa.array(values, type=t)
    return parsed, parsed.is_valid().to_numpy(zero_copy_only=False)


def _parse_all(col: pa.Array, t: pa.DataType, layout: str | None) -> pa.Array:
    """Every value of ``col`` as type ``t``; raises ArrowInvalid when one does not parse."""
    if layout is None:
        return pc.cast(col, t)
    parsed = pc.strptime(col, format=layout, unit=t.unit)
    if (parsed.type.tz is None) != (t.tz is None):  # a zone in the layout (%z) decides the type
        raise pa.ArrowInvalid(f"{layout!r} gives {parsed.type}, not {t}")
    return parsed


def _time_column(col: pa.Array, t: pa.DataType, layout: str | None) -> pa.Array:
    """A text time column as timestamps; when some values do not parse, as text a validate step
    casts row by row: parsed values rewritten in ISO 8601, the others as read."""
    parsed, ok = _parse_time(col, t, layout)
    bad = ~ok & col.is_valid().to_numpy(zero_copy_only=False)
    if not bad.any():
        return parsed
    iso = pc.strftime(parsed, format="%Y-%m-%dT%H:%M:%S" + ("%z" if t.tz else "")).to_pylist()
    raw = col.to_pylist()
    return pa.array([r if b else s for r, s, b in zip(raw, iso, bad)], pa.string())


# -- from a file name (the CLI) -------------------------------------------------------------

_SPEC = re.compile(r"^(?P<path>.+?\.(?:csv|tsv|txt|parquet|pq|arrows?)(?:\.(?:gz|bz2|zst|lz4))?)"
                   r"(?::(?P<options>.*))?$", re.IGNORECASE)


def is_file_spec(spec: str) -> bool:
    """Whether a source spec names a file (a table, a recording) rather than a registered stream."""
    return _SPEC.match(spec) is not None


def parse_file_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``data.csv:target=temp,key=station,time=time_hour`` -> (path, options); lists inside an
    option are separated by ``;`` (``features=a;b``), ``types=a:float64;b:string``."""
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError(f"{spec!r} names no table or recording file")
    options: dict[str, Any] = {}
    known = [n for n in inspect.signature(source_from_file).parameters if n != "path"]
    for part in filter(None, (m.group("options") or "").split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"bad source option {part!r} in {spec!r}: expected key=value")
        key, value = key.strip().replace("-", "_"), value.strip()
        if key not in known:
            raise ValueError(f"unknown option {key!r} in {spec!r}; a file source takes {known}")
        if key == "types":
            pairs = [p.partition(":") for p in value.split(";") if p]
            options[key] = {k.strip(): t.strip() for k, _, t in pairs}
        else:
            options[key] = value
    return m.group("path"), options


def source_from_file(path: PathLike, *, target: str | None = None, key: str | None = None,
                     time: str | None = None, task: str | None = None, features: Sequence[str] | str | None = None,
                     nullable: Sequence[str] | str | None = None, types: Mapping[str, Any] | None = None,
                     time_format: str | None = None, batch_size: int | str | None = None,
                     stream_id: str | None = None, delimiter: str | None = None,
                     speed: float | str | None = None) -> Source:
    """A source for a file: a `TableSource` for Parquet and CSV, a `RecordingSource` for a recording
    (``.arrow``/``.arrows``: it carries its schema, so only ``batch_size`` and ``speed`` apply).
    None means the default for every option; text is accepted where a number is expected."""
    table = {k: v for k, v in locals().items() if k not in ("path", "batch_size", "speed") and v is not None}
    size = int(batch_size) if batch_size is not None else None
    kind = file_kind(path)
    if kind == "recording":
        if table:
            raise ValueError(f"{path}: a recording carries its schema and stream id; {sorted(table)} cannot "
                             f"apply (record the table again with them)")
        from tideflow.connectors.recording import RecordingSource

        return RecordingSource(path, batch_size=size, speed=float(speed) if speed is not None else None)
    if speed is not None:
        raise ValueError(f"{path}: speed= paces a recording; record the table first, then replay it")
    if kind is None:
        raise ValueError(f"{path}: unknown file type; tables: .parquet, .pq, .csv, .tsv, .txt (.gz, ...); "
                         f"recordings: .arrow, .arrows")
    return TableSource(path, batch_size=size or DEFAULT_BATCH_SIZE, **table)
