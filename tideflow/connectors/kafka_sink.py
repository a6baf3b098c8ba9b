"""Kafka as a sink: batches written to a topic as JSON objects, keyed, delivery confirmed per batch.

`KafkaSink.write` returns only once the broker has confirmed every message of the batch
(an idempotent producer, ``acks=all``). Both runners write a batch to the sinks before
the checkpoint (Ray runner) or the acknowledgement (local runner) that covers it, so a
source never acknowledges input whose output the broker does not hold. A message that
cannot be delivered within ``timeout_s`` fails the write with `KafkaSinkError`, which
stops the run like any fault; a run resumed from its last checkpoint writes the batches
after it again, so the topic gets each row at least once: the ``offset`` column and the
``tideflow-stream`` header (the batch's stream id) tell a repeat from a new row.

Each row becomes one message: a JSON object of the batch's columns (``columns``; all of
them, the offset included, by default), tensors as nested lists, non-finite floats as
null (counted as ``nonfinite``); with ``key`` the column's value, as text, is the message
key, so Kafka's partitioner keeps every key in one partition (a null key is counted as
``null_key`` and sent without a key).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from tideflow.connectors.base import Sink
from tideflow.stream.batch import Batch


class KafkaSinkError(RuntimeError):
    """Messages of a batch the broker did not confirm."""


def _plain(value: Any, counts: dict[str, int]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        counts["nonfinite"] = counts.get("nonfinite", 0) + 1
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v, counts) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, counts) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class KafkaSink(Sink):
    """Writes every batch it gets to a Kafka topic (see module docstring).

    Args:
        topic: the topic (it must exist, or the broker must create topics on first use).
        bootstrap: ``host:port[,host:port...]`` of the brokers.
        key: the column whose value keys each message (None: no key).
        columns: which columns to write (None: all, the offset included).
        timeout_s: how long `write` waits for the broker to confirm a batch.
        config: more librdkafka producer settings (security, compression, ``partitioner``).
    """

    def __init__(self, topic: str, *, bootstrap: str = "127.0.0.1:9092", key: str | None = None,
                 columns: Sequence[str] | None = None, timeout_s: float = 60.0,
                 config: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.key = key
        self.columns = list(columns) if columns is not None else None
        self.timeout_s = timeout_s
        self.config = dict(config or {})
        self.counts: dict[str, int] = {}
        self._producer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_producer"] = None  # a connection does not travel; it reconnects
        return state

    def params(self) -> dict[str, Any]:
        return {"topic": self.topic, "key": self.key, "columns": self.columns}

    def describe(self) -> str:
        return f"KafkaSink(topic={self.topic!r}, key={self.key!r})"

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    @property
    def producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, **self.config,
                                       "enable.idempotence": True, "acks": "all"})
        return self._producer

    def write(self, batch: Batch) -> None:
        """Send every row of ``batch``; returns once the broker confirmed all of them."""
        if not len(batch):
            return
        names = self.columns if self.columns is not None else batch.column_names
        missing = [n for n in names + ([self.key] if self.key else []) if n not in batch.column_names]
        if missing:
            raise KafkaSinkError(f"KafkaSink({self.topic!r}): the batch has no column(s) {missing} "
                                 f"(it has {batch.column_names})")
        rows = batch.data.select(names).to_pylist()
        keys = batch.column(self.key).to_pylist() if self.key else [None] * len(rows)
        failures: list[str] = []
        delivered = 0

        def done(err: Any, msg: Any) -> None:
            nonlocal delivered
            if err is None:
                delivered += 1
            else:
                failures.append(str(err))

        producer = self.producer
        headers = [("tideflow-stream", batch.stream_id.encode())]
        for row, key in zip(rows, keys):
            if self.key and key is None:
                self._count("null_key")
            value = json.dumps(_plain(row, self.counts), allow_nan=False).encode()
            kbytes = None if key is None else str(key).encode()
            while True:
                try:
                    producer.produce(self.topic, value, kbytes, headers=headers, on_delivery=done)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(self.timeout_s)
        if left or failures or delivered != len(rows):
            self._count("failed", len(rows) - delivered)
            raise KafkaSinkError(
                f"KafkaSink({self.topic!r}) on {self.bootstrap}: {len(rows) - delivered} of {len(rows)} "
                f"messages of batch {batch.stream_id}@{batch.first_offset} not confirmed within "
                f"{self.timeout_s:g} s" + (f"; first error: {failures[0]}" if failures else ""))
        self._count("written", delivered)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
