"""Redis Streams as a source: a consumer group, at-least-once, acknowledged after checkpoints.

How Redis keeps the connector contract (`tideflow.connectors.broker`):

* Offsets: a Redis entry id ``<ms>-<seq>`` becomes ``ms * 2**20 + seq`` (ids with a
  sequence number of 2**20 or more are refused with an error: Redis gives ``seq > 0``
  only to entries added in the same millisecond).
* Entries are read with ``XREADGROUP``; Redis keeps each in the consumer's pending list
  until `commit` ``XACK``-s it.
* A restarted source (same group and consumer name) first reads its own pending entries
  (``XREADGROUP ... 0``), then new ones (``>``); entries below the restored position are
  acknowledged and skipped. Batches are filled to ``batch_size`` across the pending/new
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

import time
from typing import Any, Iterator

from tideflow.connectors.broker import BrokerSource
from tideflow.stream.batch import Batch
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


class RedisStreamSource(BrokerSource):
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

    _transient = ("_redis",)

    def __init__(self, stream: str, schema: Schema, *, url: str = "redis://127.0.0.1:6379/0",
                 group: str = "tideflow", consumer: str = "tideflow-0", batch_size: int = 500,
                 block_ms: int = 500, idle_stop_s: float | None = None, max_messages: int | None = None,
                 start_id: str = "0") -> None:
        super().__init__(schema, batch_size=batch_size, idle_stop_s=idle_stop_s, max_messages=max_messages)
        self.stream = stream
        self.url = url
        self.group = group
        self.consumer = consumer
        self.block_ms = block_ms
        self.start_id = start_id
        self.stream_id = f"redis:{stream}"
        self._redis: Any = None

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

    def params(self) -> dict[str, Any]:
        return {"stream": self.stream, "group": self.group, "consumer": self.consumer,
                "batch_size": self.batch_size}

    def _ack(self, handles: list[Any]) -> None:
        self.client.xack(self.stream, self.group, *handles)

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
            want = self._want(len(buf))
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
                yield self._emit(buf[:self.batch_size])
                buf = buf[self.batch_size:]
            elif not entries and pending_from is None and self.idle_stop_s is not None \
                    and time.monotonic() - idle_since >= self.idle_stop_s:
                break
        if buf:
            yield self._emit(buf)
