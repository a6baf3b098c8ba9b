"""Kafka as a source: one partition, offsets committed after checkpoints (confluent-kafka).

How Kafka keeps the connector contract (`tideflow.connectors.broker`):

* Offsets: the message's offset in its partition. One source reads one partition
  (``stream_id`` ``kafka:<topic>/<partition>``); a topic with several partitions is read
  by one source per partition, as offsets only order messages within a partition.
* Auto-commit is off: the consumer group's committed offset moves only in `commit`, to
  the checkpoint's position, synchronously.
* Resume: the source assigns its partition at the restored checkpoint's position, or,
  with no checkpoint, at the group's committed offset (the beginning of the partition
  when the group has none); messages below the restored position are skipped.

Payloads are JSON objects (``{"x0": 0.5, "y": 1.0}``) decoded by the schema
(`tideflow.connectors.broker.RowDecoder`); a tombstone (null value) or a payload that is
not a JSON object is counted as ``not_a_map`` and quarantined by the validate step.
Consumer errors that Kafka reports per message are counted as ``error.<name>``.

This module needs a Kafka broker to be tested; ``tests/connectors/test_brokers.py`` runs
its leg of the contract suite when ``KAFKA_BOOTSTRAP`` names one, and reports it as not
run otherwise (Debian ships no Kafka broker).
"""

from __future__ import annotations

from typing import Any

from tideflow.connectors.broker import BrokerSource
from tideflow.stream.schema import Schema


class KafkaSource(BrokerSource):
    """Messages of one partition of a Kafka topic (see module docstring).

    Args:
        topic: the topic.
        schema: the fields of each message's JSON object and their roles.
        bootstrap: ``host:port[,host:port...]`` of the brokers.
        group: the consumer group whose committed offset marks what was processed.
        partition: which partition this source reads.
        batch_size: messages per batch (a smaller batch when the topic goes idle).
        poll_timeout_s: how long one poll waits for messages.
        idle_stop_s: stop after this long without new messages (None: run forever).
        max_messages: stop after this many messages (None: no limit).
        config: more librdkafka settings (security, timeouts); ``enable.auto.commit``
            stays off.
    """

    _transient = ("_consumer",)

    def __init__(self, topic: str, schema: Schema, *, bootstrap: str = "127.0.0.1:9092",
                 group: str = "tideflow", partition: int = 0, batch_size: int = 500,
                 poll_timeout_s: float = 0.5, idle_stop_s: float | None = None,
                 max_messages: int | None = None, config: dict[str, Any] | None = None) -> None:
        super().__init__(schema, batch_size=batch_size, idle_stop_s=idle_stop_s, max_messages=max_messages)
        self.topic = topic
        self.bootstrap = bootstrap
        self.group = group
        self.partition = int(partition)
        self.poll_timeout_s = poll_timeout_s
        self.config = dict(config or {})
        self.stream_id = f"kafka:{topic}/{self.partition}"
        self._consumer: Any = None

    def params(self) -> dict[str, Any]:
        return {"topic": self.topic, "group": self.group, "partition": self.partition,
                "batch_size": self.batch_size}

    def _reset(self) -> None:
        self.close()  # assigned again at the new position on the next read

    def _connect(self) -> Any:
        if self._consumer is not None:
            return self._consumer
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        conf = {"bootstrap.servers": self.bootstrap, "group.id": self.group, "auto.offset.reset": "earliest",
                **self.config, "enable.auto.commit": False, "enable.auto.offset.store": False}
        consumer = Consumer(conf)
        if self._restored:
            start = self._next
        else:
            committed = consumer.committed([TopicPartition(self.topic, self.partition)], timeout=30)[0]
            start = committed.offset if committed.offset >= 0 else OFFSET_BEGINNING
            if start >= 0:
                self._next = max(self._next, start)
        consumer.assign([TopicPartition(self.topic, self.partition, start)])
        self._consumer = consumer
        return consumer

    def _start_reading(self) -> None:
        self._connect()

    def _ack(self, handles: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        # Kafka's committed offset is the next message to read
        self._connect().commit(offsets=[TopicPartition(self.topic, self.partition, int(handles[-1]) + 1)],
                               asynchronous=False)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _fetch(self, want: int) -> tuple[int, list[tuple[int, Any, Any]]]:
        got, out = 0, []
        for msg in self._connect().consume(num_messages=want, timeout=self.poll_timeout_s):
            err = msg.error()
            if err is not None:
                self._count(f"error.{err.name()}")
                if err.fatal():
                    raise RuntimeError(f"Kafka consumer failed on {self.stream_id}: {err}")
                continue
            got += 1
            out.append((int(msg.offset()), int(msg.offset()), msg.value()))
        return got, out
