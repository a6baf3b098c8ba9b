"""Broker sources: the connector contract, and one decoder of messages for all of them.

Every broker source (`RedisStreamSource`, `NatsJetStreamSource`, `KafkaSource`) keeps
one contract, which ``tests/connectors/test_brokers.py`` checks against real servers:

* **Offsets come from the broker**, so a message delivered twice gets the same offset
  (a Redis entry id, a JetStream stream sequence, a Kafka partition offset).
* **At-least-once delivery**: the broker keeps a message as unacknowledged until the
  source acknowledges it.
* **Acknowledged only after the batch is checkpointed**: the runner calls `commit` with
  the source's snapshot of a completed checkpoint (the Ray runner), or after each batch
  has been learned (the local runner, which keeps no checkpoints); messages below that
  snapshot's position are acknowledged then, never on read.
* **Resume from the last acknowledged position**: a restarted source starts after the
  restored checkpoint's position, or, with no checkpoint, after what its consumer group
  acknowledged; messages below the restored position (processed before the checkpoint
  but not yet acknowledged when the job died) are not learned again.

`BrokerSource` holds what the brokers share (position, snapshot, the list of delivered
but unacknowledged messages, counts); each broker module adds reading and acknowledging.

A broker message is a map of field to value: Redis Streams gives field/value bytes,
NATS and Kafka payloads are JSON objects. `RowDecoder` turns a list of such maps into
a `Batch` with the schema's columns and the broker-derived offsets. Each value is
converted by the schema's type of its field: text is parsed (``"0.5"``, ``"nan"``,
``"true"``, JSON for lists), JSON numbers/booleans/lists are taken as they are. A value
that does not convert, a missing field or a message that is not a map becomes null
(the validate step then quarantines the row with its reason) and is counted; fields
the schema does not name are counted too. Nothing is dropped silently.

>>> from tideflow.stream.schema import Schema
>>> d = RowDecoder(Schema({"x": "float64", "n": "int64"}))
>>> b = d.batch([(7, {"x": "0.5", "n": 3}), (9, {"x": "abc"}), (12, b"not json")], "s")
>>> b.column("x").to_pylist(), b.column("n").to_pylist(), b.offsets.tolist()
([0.5, None, None], [3, None, None], [7, 9, 12])
>>> sorted(d.counts.items())
[('missing_field', 3), ('not_a_map', 1), ('unparsable.x', 1)]
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from typing import Any, Iterator

import pyarrow as pa

from tideflow.connectors.base import Source
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema


class _Bad(Exception):
    pass


class RowDecoder:
    """Decodes broker messages by a schema, counting every problem in ``counts``."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.counts: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def message(self, payload: bytes | str | dict[Any, Any] | None) -> dict[str, Any] | None:
        """A JSON object payload as a dict (None, counted as ``not_a_map``, if it is not one)."""
        if isinstance(payload, dict):
            return payload
        try:
            value = json.loads(payload) if payload is not None else None
        except (ValueError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            self.count("not_a_map")
            return None
        return value

    def batch(self, entries: list[tuple[int, Any]], stream_id: str) -> Batch:
        """``entries``: (offset, message) pairs, message a field map or a JSON object payload."""
        names = self.schema.names
        known = set(names)
        cols: dict[str, list[Any]] = {n: [] for n in names}
        for _, raw in entries:
            fields = self.message(raw)
            if fields is None:
                fields = {}
            decoded = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in fields.items()}
            extra = len(set(decoded) - known)
            if extra:
                self.count("extra_fields", extra)
            for n in names:
                if n not in decoded or decoded[n] is None:
                    self.count("missing_field")
                    cols[n].append(None)
                    continue
                cols[n].append(self.value(n, decoded[n]))
        arrays = [pa.array([e[0] for e in entries], type=pa.int64())]
        for n in names:
            ftype = self.schema.fields[n].type
            try:
                arrays.append(pa.array(cols[n], type=ftype))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                arrays.append(self._column_by_row(n, cols[n], ftype))
        return Batch(pa.RecordBatch.from_arrays(arrays, names=[OFFSET, *names]), stream_id)

    def value(self, name: str, raw: Any) -> Any:
        """One field's value converted to its schema type (None, counted, if it does not convert)."""
        ftype = self.schema.fields[name].type
        try:
            return _convert(ftype, raw)
        except (_Bad, ValueError, TypeError, OverflowError):
            self.count(f"unparsable.{name}")
            return None

    def _column_by_row(self, name: str, values: list[Any], ftype: pa.DataType) -> pa.Array:
        out = []
        for v in values:
            try:
                pa.array([v], type=ftype)
                out.append(v)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                self.count(f"unparsable.{name}")
                out.append(None)
        return pa.array(out, type=ftype)


def _convert(ftype: pa.DataType, raw: Any) -> Any:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if pa.types.is_string(ftype) or pa.types.is_large_string(ftype):
        if not isinstance(raw, str):
            raise _Bad(raw)
        return raw
    if isinstance(raw, str):
        text = raw
        if pa.types.is_floating(ftype):
            return float(text)  # "nan"/"inf" parse; validate decides whether they are allowed
        if pa.types.is_integer(ftype):
            v = float(text)
            if not math.isfinite(v) or v != int(v):
                raise _Bad(text)
            return int(v)
        if pa.types.is_boolean(ftype):
            if text.lower() in ("1", "true"):
                return True
            if text.lower() in ("0", "false"):
                return False
            raise _Bad(text)
        return json.loads(text)  # lists / tensors
    if pa.types.is_boolean(ftype):
        if isinstance(raw, bool):
            return raw
        raise _Bad(raw)
    if isinstance(raw, bool):  # a JSON true is not a number
        raise _Bad(raw)
    if pa.types.is_floating(ftype):
        if not isinstance(raw, (int, float)):
            raise _Bad(raw)
        return float(raw)
    if pa.types.is_integer(ftype):
        if isinstance(raw, float) and (not math.isfinite(raw) or raw != int(raw)):
            raise _Bad(raw)
        if not isinstance(raw, (int, float)):
            raise _Bad(raw)
        return int(raw)
    return raw  # lists / tensors: arrow checks the shape and element type


class BrokerSource(Source):
    """What every broker source shares (see module docstring).

    Subclasses read messages and hand them to `_emit` as (offset, handle, message)
    triples (``handle``: what the broker needs to acknowledge the message), and
    implement `_ack` (acknowledge those handles) and `batches`. Attributes named in
    ``_transient`` (connections, threads) do not travel to a Ray actor; they reconnect
    there.
    """

    _transient: tuple[str, ...] = ()

    def __init__(self, schema: Schema, *, batch_size: int, idle_stop_s: float | None,
                 max_messages: int | None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.schema_ = schema
        self.batch_size = batch_size
        self.idle_stop_s = idle_stop_s
        self.max_messages = max_messages
        self._next = 0  # offsets below this were handed out before (or restored from a checkpoint)
        self._read = 0
        self._restored = False
        self._unacked: deque[tuple[int, Any]] = deque()  # (offset, handle) delivered, not yet acknowledged
        self.decoder = RowDecoder(schema)
        self.counts = self.decoder.counts  # decode problems and the source's own counts, one dict

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._transient:
            state[name] = None
        return state

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def stats(self) -> dict[str, int]:
        """Messages read, acknowledged, skipped as already processed, and decode problems."""
        return dict(self.counts)

    def schema(self) -> Schema:
        return self.schema_

    @property
    def position(self) -> int:
        return self._next

    def seek(self, offset: int) -> None:
        """Messages below ``offset`` are acknowledged and skipped when they come (again)."""
        self._next = int(offset)
        self._restored = True
        self._reset()

    def snapshot(self) -> dict[str, Any]:
        return {"position": self._next, "read": self._read}

    def restore(self, state: dict[str, Any]) -> None:
        self._next = int(state["position"])
        self._read = int(state.get("read", 0))
        self._restored = True
        self._unacked.clear()
        self._reset()

    def commit(self, state: dict[str, Any]) -> None:
        """Acknowledge every delivered message below ``state["position"]`` (a durable checkpoint's)."""
        upto = int(state["position"])
        n = 0
        while n < len(self._unacked) and self._unacked[n][0] < upto:
            n += 1
        if n:
            self._ack([self._unacked[i][1] for i in range(n)])  # a failure keeps them for the next commit
            for _ in range(n):
                self._unacked.popleft()
            self._count("acked", n)

    # -- what each broker adds ----------------------------------------------------------
    def _ack(self, handles: list[Any]) -> None:
        """Acknowledge these delivered messages (their handles, oldest first)."""
        raise NotImplementedError

    def _start_reading(self) -> None:
        """Connect (or reconnect) before a `batches` loop."""

    def _fetch(self, want: int) -> tuple[int, list[tuple[int, Any, Any]]]:
        """Up to ``want`` messages as (offset, handle, message), waiting a little for them; and
        how many the broker delivered (0: nothing new, the stream is idle for now)."""
        raise NotImplementedError

    def _skip(self, handle: Any) -> None:
        """A message below the position came again (a redelivery): not learned twice."""
        self._count("redelivered")

    def _reset(self) -> None:
        """The position moved (seek, restore): drop what belongs to the old reads."""

    def batches(self) -> Iterator[Batch]:
        """Batches of ``batch_size`` messages (a smaller one when the stream goes idle), stopping
        after ``max_messages`` or ``idle_stop_s`` without new messages."""
        self._start_reading()
        buf: list[tuple[int, Any, Any]] = []
        idle_since = time.monotonic()
        while True:
            want = self._want(len(buf))
            if want == 0 and not buf:
                break
            got, entries = self._fetch(want) if want else (0, [])
            for off, handle, message in entries:
                if off < self._next:
                    self._skip(handle)
                    continue
                buf.append((off, handle, message))
                self._read += 1
            if got:
                idle_since = time.monotonic()
            if len(buf) >= self.batch_size or (buf and not got):
                yield self._emit(buf[:self.batch_size])
                buf = buf[self.batch_size:]
            elif not got and self.idle_stop_s is not None and time.monotonic() - idle_since >= self.idle_stop_s:
                break
        if buf:
            yield self._emit(buf)

    def _want(self, buffered: int) -> int:
        """How many messages to ask the broker for next (0: `max_messages` reached)."""
        want = self.batch_size - buffered
        if self.max_messages is not None:
            want = min(want, self.max_messages - self._read)
        return max(want, 0)

    def _emit(self, entries: list[tuple[int, Any, Any]]) -> Batch:
        batch = self.decoder.batch([(e[0], e[2]) for e in entries], self.stream_id)
        # offsets move before the consumer sees the batch, as in every source
        self._next = entries[-1][0] + 1
        self._unacked.extend((e[0], e[1]) for e in entries)
        self._count("read", len(entries))
        return batch
