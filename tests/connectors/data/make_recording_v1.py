"""How ``recording_v1_digits.arrows`` was made: a format-1 recording, written by tideflow's own
format-1 writer, of a small class-incremental digits stream.

Format 1 kept the rows, the schema's roles and the source's metadata, but not the end-of-task
marks, the held-out sets or the unlabeled rows; the file lets the tests check that such a
recording still replays and says what it lacks. Two steps, because the format-1 writer predates
image streams (run from the repository root)::

    .venv/bin/python tests/connectors/data/make_recording_v1.py dump /tmp/digits.ipc
    PYTHONPATH=/path/to/format-1/tideflow .venv/bin/python tests/connectors/data/make_recording_v1.py \\
        write /tmp/digits.ipc tests/connectors/data/recording_v1_digits.arrows

``dump`` writes the stream's batches as a plain Arrow IPC stream (schema roles and metadata as
JSON in its schema metadata); ``write`` replays them into the older tideflow's ``RecordingWriter``.
"""

from __future__ import annotations

import json
import sys

import pyarrow as pa

#: the stream the file holds (tests build the same stream live to compare)
STREAM = dict(dataset="digits", split="class-incremental", tasks=5, seed=0, batch_size=10,
              train_per_class=8, test_per_class=3)


def dump(out: str) -> None:
    from tideflow.connectors.images import ImageStream

    src = ImageStream(**STREAM)
    batches = [b.data for b in src]
    schema = src.schema()
    doc = {"stream_id": src.stream_id, "metadata": src.metadata(),
           "roles": {r: getattr(schema, r) for r in ("target", "key", "task", "time")}}
    arrow = batches[0].schema.with_metadata({b"dump": json.dumps(doc).encode()})
    with pa.OSFile(out, "wb") as f, pa.ipc.new_stream(f, arrow) as w:
        for b in batches:
            w.write_batch(b)


def write(dumped: str, out: str) -> None:
    from tideflow.connectors.recording import RecordingWriter
    from tideflow.stream.batch import Batch
    from tideflow.stream.schema import Schema

    with pa.ipc.open_stream(pa.memory_map(dumped)) as reader:
        doc = json.loads(reader.schema.metadata[b"dump"])
        table = reader.read_all()
    schema = Schema.infer(table.schema, **doc["roles"])
    with RecordingWriter(out, schema, stream_id=doc["stream_id"], metadata=doc["metadata"]) as w:
        for rb in table.to_batches():
            w.write(Batch(rb, doc["stream_id"]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["dump"]:
        dump(sys.argv[2])
    elif sys.argv[1:2] == ["write"]:
        write(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
