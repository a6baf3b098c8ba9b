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

from typing import Any

from tideflow.connectors.broker import BrokerSource
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

    def _start_reading(self) -> None:
        self._pending_from: bytes | str | None = "0"  # own pending entries first, then new ones

    def _fetch(self, want: int) -> tuple[int, list[tuple[int, Any, Any]]]:
        if self._pending_from is not None:
            resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: self._pending_from}, count=want)
            entries = resp[0][1] if resp else []
            if entries:
                self._pending_from = entries[-1][0]
                return len(entries), self._entries(entries)
            self._pending_from = None
        resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=want, block=self.block_ms)
        entries = resp[0][1] if resp else []
        return len(entries), self._entries(entries)

    def _entries(self, entries: list[Any]) -> list[tuple[int, Any, Any]]:
        out = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                self.client.xack(self.stream, self.group, entry_id)
                self._count("deleted")
                continue
            out.append((offset_of(entry_id), entry_id, fields))
        return out

    def _skip(self, handle: Any) -> None:
        # processed before the checkpoint we resumed from: acknowledged now
        self.client.xack(self.stream, self.group, handle)
        self._count("skipped_processed")
