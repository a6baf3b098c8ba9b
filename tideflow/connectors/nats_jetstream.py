"""NATS JetStream as a source: a durable pull consumer, acknowledged after checkpoints.

How JetStream keeps the connector contract (`tideflow.connectors.broker`):

* Offsets: a message's stream sequence number (1, 2, ...; gaps where messages were
  deleted), the same on every delivery.
* The source reads with a durable pull consumer (``ack_policy=all``, no limit on
  unacknowledged messages): JetStream keeps every delivered message unacknowledged until
  `commit` acknowledges the last one below the checkpoint's position (``AckAll`` covers
  everything before it), with a confirmed ("double") ack.
* Resume: when the source connects it (re)creates its durable consumer to start at the
  restored checkpoint's position, or, with no checkpoint, right after the consumer's ack
  floor (what it acknowledged last). Recreating matters: JetStream would redeliver the
  old consumer's unacknowledged messages only after ``ack_wait``, and a restored source
  must not get messages from before its checkpoint again. One source per durable
  consumer name, then (as one Kafka consumer per partition): two jobs that share a
  durable name would reset each other.

Payloads are JSON objects, one per message (``{"x0": 0.5, "y": 1.0}``), decoded by the
schema (`tideflow.connectors.broker.RowDecoder`): anything that is not a JSON object,
a value that does not convert and a missing field are counted and become nulls that
the validate step quarantines.

A redelivery of a message already handed out (JetStream redelivers after ``ack_wait``,
one day by default, which a checkpoint interval should stay well under) is skipped and
counted as ``redelivered``; the next commit's ``AckAll`` acknowledges it.

nats-py is asyncio-only: the source runs its own event loop in a daemon thread and
waits on it, so it works the same in a plain script, a notebook (whose loop it does not
touch) and a Ray actor.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tideflow.connectors.broker import BrokerSource
from tideflow.stream.schema import Schema


class _Loop:
    """An asyncio loop in a daemon thread; `run` waits for one coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tideflow-nats", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class NatsJetStreamSource(BrokerSource):
    """Messages of a JetStream stream, read by one durable pull consumer (see module docstring).

    Args:
        stream: the JetStream stream's name.
        schema: the fields of each message's JSON object and their roles.
        url: the NATS server (default a local one).
        durable: the durable consumer's name (the consumer group, in Redis/Kafka terms).
        subject: only messages on this subject (wildcards allowed; None: the whole stream).
        batch_size: messages per batch (a smaller batch when the stream goes idle).
        fetch_timeout_s: how long one fetch waits for messages.
        idle_stop_s: stop after this long without new messages (None: run forever).
        max_messages: stop after this many messages (None: no limit).
        start_seq: where a consumer that does not exist yet starts (1: the whole stream).
        ack_wait_s: JetStream's redelivery timeout for unacknowledged messages.
        create_stream: create the stream (on ``subject`` or ``<stream>.>``, file storage)
            when it does not exist; otherwise a missing stream is an error.
    """

    _transient = ("_io", "_nc", "_js", "_sub")

    def __init__(self, stream: str, schema: Schema, *, url: str = "nats://127.0.0.1:4222",
                 durable: str = "tideflow", subject: str | None = None, batch_size: int = 500,
                 fetch_timeout_s: float = 0.5, idle_stop_s: float | None = None,
                 max_messages: int | None = None, start_seq: int = 1, ack_wait_s: float = 86400.0,
                 create_stream: bool = False) -> None:
        super().__init__(schema, batch_size=batch_size, idle_stop_s=idle_stop_s, max_messages=max_messages)
        if start_seq < 1:
            raise ValueError("start_seq must be >= 1 (JetStream sequences start at 1)")
        self.stream = stream
        self.url = url
        self.durable = durable
        self.subject = subject
        self.fetch_timeout_s = fetch_timeout_s
        self.start_seq = start_seq
        self.ack_wait_s = ack_wait_s
        self.create_stream = create_stream
        self.stream_id = f"nats:{stream}"
        self._io: _Loop | None = None
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None

    def params(self) -> dict[str, Any]:
        return {"stream": self.stream, "durable": self.durable, "subject": self.subject,
                "batch_size": self.batch_size}

    def _reset(self) -> None:
        self._unacked.clear()  # their acks belong to the consumer that is about to be replaced
        self.close()  # the consumer is recreated at the new position on the next read

    # -- connection ---------------------------------------------------------------------
    def _start_reading(self) -> None:
        if self._sub is not None:
            return
        if self._io is None:
            self._io = _Loop()
        self._io.run(self._aconnect())

    async def _aconnect(self) -> None:
        import nats

        self._nc = await nats.connect(self.url, allow_reconnect=True, max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.5)
        try:
            await self._bind()
        except BaseException:
            await self._nc.close()  # no half-made connection left behind for a retry to add to
            self._nc = self._js = None
            raise

    async def _bind(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
        from nats.js.errors import NotFoundError

        self._js = self._nc.jetstream()
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            if not self.create_stream:
                raise ValueError(f"JetStream stream {self.stream!r} does not exist on {self.url} "
                                 "(create it, or pass create_stream=True)") from None
            await self._js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject or f"{self.stream}.>"]))
        start = self.start_seq
        try:
            info = await self._js.consumer_info(self.stream, self.durable)
            acked = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            start = max(acked + 1, int(info.config.opt_start_seq or 1))
            await self._js.delete_consumer(self.stream, self.durable)
        except NotFoundError:
            pass
        if self._restored:
            start = max(self._next, 1)  # the checkpoint decides what was processed
        self._next = max(self._next, start)
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.ALL,
                                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                                max_ack_pending=-1, ack_wait=self.ack_wait_s, max_deliver=-1,
                                filter_subject=self.subject)
        await self._js.add_consumer(self.stream, config)
        self._sub = await self._js.pull_subscribe_bind(self.durable, stream=self.stream)

    async def _afetch(self, n: int) -> list[Any]:
        try:
            return await self._sub.fetch(n, timeout=self.fetch_timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError, and the plain asyncio one some fetch paths raise
            return []

    def _ack(self, handles: list[Any]) -> None:
        # AckAll: confirming the last one acknowledges every message before it
        self._io.run(handles[-1].ack_sync(timeout=30))

    def close(self) -> None:
        if self._io is not None:
            if self._nc is not None:
                try:
                    self._io.run(self._nc.close(), timeout=10)
                except Exception:  # noqa: BLE001 - a server already gone leaves nothing to close
                    pass
            self._io.stop()
        self._io = self._nc = self._js = self._sub = None

    # -- reading ------------------------------------------------------------------------
    def _fetch(self, want: int) -> tuple[int, list[tuple[int, Any, Any]]]:
        msgs = self._io.run(self._afetch(want))
        return len(msgs), [(int(m.metadata.sequence.stream), m, m.data) for m in msgs]
