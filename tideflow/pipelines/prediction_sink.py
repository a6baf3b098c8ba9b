"""Predictions out: every scored row, with each learn step's prediction, written to Parquet or CSV.

One row per scored row of the stream: its ``offset``, the schema's ``key`` and ``time``
columns when it has them, the ``target`` (the truth the row was scored against) and one
column ``pred_<step>`` per learn step (null where that step did not predict the row, e.g.
a batch it failed on). Rows are written batch by batch as the run records them (the file
grows with the stream; the run does not hold the predictions in memory for it), in offset
order within a batch.

Recovery on the Ray runner: batches that come again after a rollback were written the
first time and are not written twice. A run resumed from a checkpoint folder in a new
process writes a new file (use a new path) from its resume point on.

>>> sink = PredictionSink("preds.parquet")   # doctest: +SKIP
>>> pipeline.observe(sink).run()             # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tideflow.pipelines.metrics.base import BatchRecord, Observer

FORMATS = ("parquet", "csv")


class PredictionSink(Observer):
    """Writes each scored row's predictions to ``path`` (``.parquet`` or ``.csv``; ``format=`` to
    choose otherwise)."""

    streams_predictions = True

    def __init__(self, path: str | os.PathLike[str], *, format: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        fmt = format or self.path.suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise ValueError(f"predictions go to Parquet or CSV: {self.path} ends in neither "
                             f"(or pass format='parquet' / 'csv')")
        self.format = fmt
        self.rows = 0
        self._writer: Any = None
        self._schema: Any = None
        self._steps: list[str] = []
        self._types: dict[str, Any] = {}

    def on_start(self, graph: Any) -> None:
        import pyarrow as pa

        schema = graph.validate()
        self._steps = [s.name for s in graph.learners]
        fields = [pa.field("offset", pa.int64(), nullable=False)]
        for role in ("key", "time"):
            name = getattr(schema, role)
            if name is not None:
                fields.append(pa.field(role, schema.fields[name].type))
        target_type = schema.fields[schema.target].type if schema.target else pa.float64()
        fields.append(pa.field("target", target_type))
        for s in graph.learners:
            kind = pa.float64() if s.op.problem == "regression" else target_type
            fields.append(pa.field(f"pred_{s.name}", kind))
        self._schema = pa.schema(fields)
        self.rows = 0
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> Any:
        if self._writer is None:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(str(self.path), self._schema)
            else:
                import pyarrow.csv as pcsv

                self._writer = pcsv.CSVWriter(str(self.path), self._schema)
        return self._writer

    def on_batch(self, record: BatchRecord) -> None:
        if record.replay:
            return  # written the first time this batch came
        rows: dict[int, dict[str, Any]] = {}
        for step, res in record.results.items():
            for part in res.predictions:
                offsets, preds, truth = part[0], part[1], part[2]
                keys = part[3] if len(part) > 3 else None
                times = part[4] if len(part) > 4 else None
                for i, off in enumerate(offsets):
                    row = rows.setdefault(off, {"offset": off, "target": truth[i]})
                    if keys is not None:
                        row["key"] = keys[i]
                    if times is not None:
                        row["time"] = times[i]
                    row[f"pred_{step}"] = preds[i]
        if not rows:
            return
        import pyarrow as pa

        ordered = [rows[o] for o in sorted(rows)]
        columns = {f.name: pa.array([r.get(f.name) for r in ordered], type=f.type, from_pandas=True)
                   for f in self._schema}
        self._open().write_table(pa.table(columns, schema=self._schema))
        self.rows += len(ordered)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_finish(self, result: Any) -> None:
        self.close()

    def on_abort(self) -> None:
        self.close()  # a Parquet file is readable only once closed: what was written stays readable

    def result(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.rows, "format": self.format}


__all__ = ["PredictionSink"]
