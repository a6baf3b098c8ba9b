"""Redis Streams as a source: a consumer group, at-least-once, acknowledged after checkpoints.

The connector contract (every broker source keeps it; ``tests/connectors/test_brokers.py``
checks it against real servers):

* **Offsets come from the broker**, so a message read twice gets the same offset: a
  Redis entry id ``<ms>-<seq>`` becomes ``ms * 2**20 + seq`` (ids with a sequence number
  of 2**20 or more are refused with an error: Redis gives ``seq > 0`` only to entries
  added in the same millisecond).
* **At-least-once delivery**: entries are read with ``XREADGROUP``; Redis keeps each in
  the consumer's pending list until it is acknowledged.
* **Acknowledged only after the batch is checkpointed**: the runner calls `commit` with
  the source's snapshot of a completed checkpoint (the Ray runner), or after each batch
  has been learned (the local runner, which keeps no checkpoints); entries below that
  snapshot's position are ``XACK``-ed then, never on read.
* **Resume from the last acknowledged position**: a restarted source (same group and
  consumer name) first reads its own pending entries (``XREADGROUP ... 0``), then new
  ones (``>``); entries below the restored position (processed before the checkpoint
  but not yet acknowledged when the job died) are acknowledged and skipped, so they are
  not learned twice. Batches are filled to ``batch_size`` across the pending/new
  boundary, so a resumed run cuts the same batches as an uninterrupted one.

Messages are flat field/value maps (``XADD stream * x0 0.5 y 1``). Each value is parsed
by the schema's type of its field (JSON for lists); a value that does not parse, or a
missing field, becomes null and is counted in ``stats()`` (the validate step then
quarantines the row, with its reason); fields the schema does not name are counted too.
Nothing is dropped silently. An entry deleted from the stream while pending is
acknowledged and counted as ``deleted``.

The source stops after ``idle_stop_s`` seconds without a new entry (``None``: never,
as a live job would); ``max_messages`` stops it after that many entries.
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

SEQ_BITS = 20


def offset_of(entry_id: bytes | str) -> int:
    """The tideflow offset of a Redis stream entry id (``ms * 2**20 + seq``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    s = int(seq or 0)
    if s >= 1 << SEQ_BITS:
        raise ValueError(f"Redis entry id {text}: sequence {s} >= 2**{SEQ_BITS} cannot map to an offset")
    return (int(ms) << SEQ_BITS) | s


def id_of(offset: int) -> str:
    return f"{offset >> SEQ_BITS}-{offset & ((1 << SEQ_BITS) - 1)}"


class RedisStreamSource(Source):
    """Entries of a Redis stream, read by one consumer of a consumer group (see module docstring).

    Args:
        stream: the stream's key.
        schema: the fields of each entry and their roles.
        url: ``redis://host:port/db`` (default a local server).
        group / consumer: the consumer group (created at ``start_id`` if missing) and this
            reader's name in it; a restarted job must use the same consumer name to get its
            pending entries back.
        batch_size: entries per batch (a smaller batch when the stream goes idle).
        block_ms: how long one read waits for new entries.
        idle_stop_s: stop after this long without new entries (None: run forever).
        max_messages: stop after this many entries (None: no limit).
    """

    def __init__(self, stream: str, schema: Schema, *, url: str = "redis://127.0.0.1:6379/0",
                 group: str = "tideflow", consumer: str = "tideflow-0", batch_size: int = 500,
                 block_ms: int = 500, idle_stop_s: float | None = None, max_messages: int | None = None,
                 start_id: str = "0") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.stream = stream
        self.schema_ = schema
        self.url = url
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.idle_stop_s = idle_stop_s
        self.max_messages = max_messages
        self.start_id = start_id
        self.stream_id = f"redis:{stream}"
        self._next = 0  # offsets below this were handed out before (restored from a checkpoint)
        self._read = 0
        self._unacked: deque[tuple[int, bytes]] = deque()  # (offset, id) delivered, not yet acknowledged
        self.counts: dict[str, int] = {}
        self._redis: Any = None

    # -- plumbing -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_redis"] = None  # a connection does not travel to an actor; it reconnects there
        return state

    @property
    def client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.url)
            try:
                self._redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return self._redis

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def stats(self) -> dict[str, int]:
        """Entries read, acknowledged, skipped as already processed, and decode problems."""
        return dict(self.counts)

    # -- the Source contract --------------------------------------------------------------
    def schema(self) -> Schema:
        return self.schema_

    def params(self) -> dict[str, Any]:
        return {"stream": self.stream, "group": self.group, "consumer": self.consumer,
                "batch_size": self.batch_size}

    @property
    def position(self) -> int:
        return self._next

    def seek(self, offset: int) -> None:
        """Entries below ``offset`` are acknowledged and skipped when they come (again)."""
        self._next = int(offset)

    def snapshot(self) -> dict[str, Any]:
        return {"position": self._next, "read": self._read}

    def restore(self, state: dict[str, Any]) -> None:
        self._next = int(state["position"])
        self._read = int(state.get("read", 0))
        self._unacked.clear()

    def commit(self, state: dict[str, Any]) -> None:
        """Acknowledge every delivered entry below ``state["position"]`` (a durable checkpoint's)."""
        upto = int(state["position"])
        ids = []
        while self._unacked and self._unacked[0][0] < upto:
            ids.append(self._unacked.popleft()[1])
        if ids:
            self.client.xack(self.stream, self.group, *ids)
            self._count("acked", len(ids))

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def batches(self) -> Iterator[Batch]:
        buf: list[tuple[int, bytes, dict[bytes, bytes]]] = []
        pending_from: bytes | str | None = "0"  # own pending entries first, then new ones
        idle_since = time.monotonic()
        while True:
            if self.max_messages is not None and self._read >= self.max_messages:
                break
            want = self.batch_size - len(buf)
            if self.max_messages is not None:
                want = min(want, self.max_messages - self._read)
            if pending_from is not None:
                resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: pending_from}, count=want)
                entries = resp[0][1] if resp else []
                if not entries:
                    pending_from = None
                    continue
                pending_from = entries[-1][0]
            else:
                resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=want,
                                              block=self.block_ms)
                entries = resp[0][1] if resp else []
            for entry_id, fields in entries:
                off = offset_of(entry_id)
                if fields is None:  # deleted from the stream while pending
                    self.client.xack(self.stream, self.group, entry_id)
                    self._count("deleted")
                    continue
                if off < self._next:  # processed before the checkpoint we resumed from
                    self.client.xack(self.stream, self.group, entry_id)
                    self._count("skipped_processed")
                    continue
                buf.append((off, entry_id, fields))
                self._read += 1
            if entries:
                idle_since = time.monotonic()
            if len(buf) >= self.batch_size or (buf and not entries and pending_from is None):
                yield self._batch(buf[:self.batch_size])
                buf = buf[self.batch_size:]
            elif not entries and pending_from is None and self.idle_stop_s is not None \
                    and time.monotonic() - idle_since >= self.idle_stop_s:
                break
        if buf:
            yield self._batch(buf)

    # -- decoding -------------------------------------------------------------------------
    def _batch(self, entries: list[tuple[int, bytes, dict[bytes, bytes]]]) -> Batch:
        names = self.schema_.names
        known = set(names)
        cols: dict[str, list[Any]] = {n: [] for n in names}
        for _, _, fields in entries:
            decoded = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
            extra = len(set(decoded) - known)
            if extra:
                self._count("extra_fields", extra)
            for n in names:
                raw = decoded.get(n)
                if raw is None:
                    self._count("missing_field")
                    cols[n].append(None)
                    continue
                cols[n].append(self._parse(n, raw))
        arrays = [pa.array([e[0] for e in entries], type=pa.int64())]
        for n in names:
            ftype = self.schema_.fields[n].type
            try:
                arrays.append(pa.array(cols[n], type=ftype))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                arrays.append(self._column_by_row(n, cols[n], ftype))
        # offsets move before the consumer sees the batch, as in every source
        self._next = entries[-1][0] + 1
        self._unacked.extend((e[0], e[1]) for e in entries)
        self._count("read", len(entries))
        return Batch(pa.RecordBatch.from_arrays(arrays, names=[OFFSET, *names]), self.stream_id)

    def _parse(self, name: str, raw: bytes) -> Any:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        ftype = self.schema_.fields[name].type
        try:
            if pa.types.is_floating(ftype):
                return float(text)  # "nan"/"inf" parse; validate decides whether they are allowed
            if pa.types.is_integer(ftype):
                v = float(text)
                if not math.isfinite(v) or v != int(v):
                    raise ValueError(text)
                return int(v)
            if pa.types.is_boolean(ftype):
                if text.lower() in ("1", "true"):
                    return True
                if text.lower() in ("0", "false"):
                    return False
                raise ValueError(text)
            if pa.types.is_string(ftype) or pa.types.is_large_string(ftype):
                return text
            return json.loads(text)  # lists / tensors
        except (ValueError, TypeError, json.JSONDecodeError):
            self._count(f"unparsable.{name}")
            return None

    def _column_by_row(self, name: str, values: list[Any], ftype: pa.DataType) -> pa.Array:
        out = []
        for v in values:
            try:
                pa.array([v], type=ftype)
                out.append(v)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                self._count(f"unparsable.{name}")
                out.append(None)
        return pa.array(out, type=ftype)
