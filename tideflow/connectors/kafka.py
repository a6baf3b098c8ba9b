"""Kafka as a source: every partition of a topic (or a chosen set), one consumer-group member,
offsets committed per partition after durable checkpoints (confluent-kafka).

How Kafka keeps the connector contract (`tideflow.connectors.broker`):

* **Offsets are per partition.** Kafka orders messages only within a partition, so each
  batch holds messages of one partition and carries that partition's stream id
  (``kafka:<topic>/<partition>``); the validate step tracks duplicates and order per
  stream id. The source's position is a map ``{partition: next offset}``: it is what the
  checkpoint keeps, what `seek` takes (an int seeks every partition to that offset) and
  what `commit` writes back, one committed offset per partition.
* **Batch cuts do not depend on timing.** A partition's messages are cut into batches of
  ``batch_size`` counted from its position, so a run resumed from a checkpoint cuts the
  same batches as an uninterrupted one. A partition's last, shorter batch is handed out
  only when the source stops (``idle_stop_s``, ``max_messages``) or, with ``linger_s``,
  when it has waited that long (cuts then depend on timing: a live topic with little
  traffic). Which partition's batch comes first is not fixed (Kafka gives no order across
  partitions): what a run learns is the same per partition, hence per message key, as
  Kafka's partitioner keeps a key in one partition.
* **Auto-commit is off**: the consumer group's committed offsets move only in `commit`, to
  a durable checkpoint's positions, synchronously. A commit the broker refuses while the
  group rebalances is counted (``commit_failed``) and made by the next commit.
* **Resume**: a partition starts at the restored checkpoint's position, or, with no
  checkpoint, at the group's committed offset (``start`` when the group has none).
* **One member per consumer group.** The source joins the group with ``subscribe()`` and
  sets the position of every partition it is assigned itself (the checkpoint's, not the
  group's). It reads nothing until it has been assigned every partition it reads; when
  another member of the group still holds some after ``join_timeout_s``, it stops with
  `KafkaGroupConflict` naming them, instead of reading the same messages as that member.
  A member that died (a killed job) holds its partitions until the broker's session
  timeout (``session.timeout.ms``, 10 s unless ``config`` says otherwise) expires it: a
  resumed job waits for that, not for ``join_timeout_s``. When a running source loses
  partitions to a newcomer it keeps the others, warns, and gets them back when the
  newcomer leaves; if they stay away longer than ``join_timeout_s`` it stops with the same
  error, so two jobs in one group never both go on silently.

Messages: the value is a JSON object (``{"x0": 0.5, "y": 1.0}``) decoded by the schema
(`tideflow.connectors.broker.RowDecoder`); with ``key_column`` the message key (UTF-8
text) becomes that column, so that ``Keyed`` routing on it keeps one strategy instance
per Kafka key. Bad input never stops the job and is never dropped: a payload that is not
JSON, a JSON value that is not an object (an array, a number), a tombstone (no value) and
a value longer than ``max_message_bytes`` (not parsed) are counted (``not_a_map``,
``oversized``), and, like a missing field or a value that does not convert, become nulls
that the validate step quarantines with the batch's stream id (the partition) and the
message's offset. Consumer errors that Kafka reports per message are counted as
``error.<name>``; a fatal one stops the source.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Iterator, Sequence

from tideflow.connectors.broker import BrokerSource
from tideflow.stream.batch import Batch
from tideflow.stream.schema import Schema

#: the session timeout the source asks for unless ``config`` sets one: how long the broker keeps
#: the partitions of a member that stopped heartbeating (a killed job) before a resumed job
#: gets them (librdkafka's default is 45 s)
SESSION_TIMEOUT_MS = 10_000


class KafkaGroupConflict(RuntimeError):
    """Another member of the consumer group holds partitions this source reads."""


def _as_partitions(partitions: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if partitions is None:
        return None
    if isinstance(partitions, (int, str)):
        partitions = [partitions]
    out = tuple(sorted({int(p) for p in partitions}))
    if not out or out[0] < 0:
        raise ValueError(f"partitions must be partition numbers >= 0, got {partitions!r}")
    return out


class KafkaSource(BrokerSource):
    """Messages of the partitions of a Kafka topic, one batch per partition at a time
    (see module docstring).

    Args:
        topic: the topic.
        schema: the fields of each message's JSON object (and the key column) and their roles.
        bootstrap: ``host:port[,host:port...]`` of the brokers.
        group: the consumer group: its committed offsets mark what was processed, and it has
            one member, this source.
        partitions: which partitions to read (a number or a list; None: all of the topic's).
        batch_size: messages per batch, counted per partition.
        poll_timeout_s: how long one poll waits for messages.
        idle_stop_s: stop after this long without new messages (None: run forever).
        max_messages: stop after this many messages (None: no limit).
        key_column: the schema column that receives the message key as text (None: the key
            is not read).
        max_message_bytes: a message value longer than this is not parsed: counted as
            ``oversized`` and quarantined.
        linger_s: hand out a partition's shorter batch once its first message has waited this
            long (None: only full batches until the source stops; see module docstring).
        join_timeout_s: how long to wait for every partition to be assigned to this member
            before `KafkaGroupConflict` (also how long a running source tolerates losing some).
        start: where a partition starts when the group has no committed offset for it:
            ``"earliest"`` or ``"latest"``.
        config: more librdkafka settings (security, timeouts, ``session.timeout.ms``);
            ``enable.auto.commit`` stays off.
    """

    _transient = ("_consumer",)

    def __init__(self, topic: str, schema: Schema, *, bootstrap: str = "127.0.0.1:9092",
                 group: str = "tideflow", partitions: int | Sequence[int] | None = None,
                 batch_size: int = 500, poll_timeout_s: float = 0.5, idle_stop_s: float | None = None,
                 max_messages: int | None = None, key_column: str | None = None,
                 max_message_bytes: int = 1 << 20, linger_s: float | None = None,
                 join_timeout_s: float = 60.0, start: str = "earliest",
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(schema, batch_size=batch_size, idle_stop_s=idle_stop_s, max_messages=max_messages)
        if key_column is not None and key_column not in schema.fields:
            raise ValueError(f"key_column {key_column!r} is not a column of the schema ({schema.names})")
        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', got {start!r}")
        self.topic = topic
        self.bootstrap = bootstrap
        self.group = group
        self.partitions = _as_partitions(partitions)
        self.poll_timeout_s = poll_timeout_s
        self.key_column = key_column
        self.max_message_bytes = int(max_message_bytes)
        self.linger_s = linger_s
        self.join_timeout_s = join_timeout_s
        self.start = start
        self.config = dict(config or {})
        self.stream_id = f"kafka:{topic}"
        self._pos: dict[int, int] = {}  # partition -> next offset to hand out
        self._committed: dict[int, int] = {}  # partition -> the group's committed offset, as known
        self._emitted: deque[tuple[int, int, int]] = deque()  # (partition, last offset, rows) not acked
        self._consumer: Any = None
        self._clear_reading()

    # -- position -----------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"topic": self.topic, "group": self.group, "partitions": self.partitions,
                "batch_size": self.batch_size, "key_column": self.key_column}

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "topic": self.topic, "partitions": self.partitions}

    def stream_of(self, partition: int) -> str:
        """The stream id of one partition's batches."""
        return f"{self.stream_id}/{partition}"

    @property
    def position(self) -> dict[int, int]:  # type: ignore[override]
        """``{partition: next offset}`` for every partition read so far (or restored)."""
        return dict(self._pos)

    def seek(self, offset: int | dict[Any, int]) -> None:  # type: ignore[override]
        """Start each partition at its offset in ``offset`` (a map), or every partition at
        ``offset`` (an int); messages below are skipped."""
        if isinstance(offset, dict):
            self._pos = {int(p): int(o) for p, o in offset.items()}
        else:
            if int(offset) < 0:
                raise ValueError("offset must be >= 0")
            self._pos = {p: int(offset) for p in self._partitions_of_topic()}
        self._restored = True
        self._emitted.clear()
        self._reset()

    def snapshot(self) -> dict[str, Any]:
        # JSON object keys are text: partitions travel as strings
        return {"positions": {str(p): o for p, o in sorted(self._pos.items())}, "read": self._read}

    def restore(self, state: dict[str, Any]) -> None:
        if "positions" not in state:
            raise ValueError("this checkpoint's Kafka source state has no per-partition positions "
                             "(written by a single-partition KafkaSource): it cannot be resumed")
        self._pos = {int(p): int(o) for p, o in state["positions"].items()}
        self._read = int(state.get("read", 0))
        self._restored = True
        self._emitted.clear()
        self._reset()

    def commit(self, state: dict[str, Any]) -> None:
        """Commit ``state``'s positions (a durable checkpoint's) as the group's offsets, one per
        partition, synchronously."""
        positions = {int(p): int(o) for p, o in state.get("positions", {}).items()}
        todo = {p: o for p, o in positions.items() if o > self._committed.get(p, -1)}
        if not todo:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(todo.items())]
        try:
            if self._consumer is not None:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                # not a member now (stopped, or not started): a plain commit, which the broker
                # takes while the group has no member
                self._commit_outside_group(offsets)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if err is not None and hasattr(err, "fatal") and err.fatal():
                raise
            # a rebalance or a broker away: the offsets stay due, the next commit makes them
            self._count("commit_failed")
            print(f"tideflow: Kafka commit on {self.stream_id} (group {self.group}) failed, retried "
                  f"with the next checkpoint: {exc}", file=sys.stderr, flush=True)
            return
        self._committed.update(todo)
        acked = 0
        while self._emitted:
            p, last, rows = self._emitted[0]
            if last >= positions.get(p, -1):
                break
            acked += rows
            self._emitted.popleft()
        if acked:
            self._count("acked", acked)

    def _commit_outside_group(self, offsets: list[Any]) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(self._conf())
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        finally:
            consumer.close()

    # -- connection -----------------------------------------------------------------------
    def _conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "group.id": self.group,
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": min(3000, SESSION_TIMEOUT_MS // 5),
                # eager rebalancing: a member gives back everything, then gets its share
                "partition.assignment.strategy": "range",
                **self.config, "enable.auto.commit": False, "enable.auto.offset.store": False,
                "auto.offset.reset": self.start}

    def _partitions_of_topic(self) -> tuple[int, ...]:
        from confluent_kafka import Consumer

        consumer = self._consumer if self._consumer is not None else Consumer(self._conf())
        try:
            meta = consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        finally:
            if consumer is not self._consumer:
                consumer.close()
        if meta is None or meta.error is not None or not meta.partitions:
            why = meta.error if meta is not None else "no metadata"
            raise ValueError(f"Kafka topic {self.topic!r} on {self.bootstrap} cannot be read: {why}")
        return tuple(sorted(meta.partitions))

    def _clear_reading(self) -> None:
        self._bufs: dict[int, list[tuple[int, Any, Any]]] = {}
        self._buf_since: dict[int, float] = {}
        self._assigned: set[int] = set()
        self._joined = False  # assigned every partition it reads, once
        self._missing_since: float | None = None
        self._join_started = 0.0
        self._wanted: tuple[int, ...] = ()
        self._last_assignment: list[int] = []  # what the group gave a newcomer that waits

    def _reset(self) -> None:
        self.close()  # assigned again at the new positions on the next read

    def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close()  # leaves the group: the partitions are free at once
            except Exception:  # noqa: BLE001 - a broker already gone leaves nothing to leave
                pass
        self._clear_reading()

    def _start_reading(self) -> None:
        if self._consumer is not None:
            return
        from confluent_kafka import Consumer

        self._clear_reading()
        wanted = self._partitions_of_topic()
        if self.partitions is not None:
            unknown = sorted(set(self.partitions) - set(wanted))
            if unknown:
                raise ValueError(f"Kafka topic {self.topic!r} has partitions {list(wanted)}, not {unknown}")
            wanted = self.partitions
        self._wanted = wanted
        consumer = Consumer(self._conf())
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        self._consumer = consumer
        self._join_started = time.monotonic()

    def _start_of(self, consumer: Any, partitions: list[int]) -> dict[int, int]:
        """Where each partition starts: this source's own position (a checkpoint's, or where it
        was before a rebalance), else the group's committed offset, else ``start``."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        ask = [p for p in partitions if p not in self._pos]
        if ask:
            for tp in consumer.committed([TopicPartition(self.topic, p) for p in ask], timeout=30):
                if tp.offset >= 0:
                    self._committed[tp.partition] = tp.offset
                    self._pos[tp.partition] = tp.offset
        out = {}
        for p in partitions:
            if p in self._pos:
                out[p] = self._pos[p]
            else:
                out[p] = OFFSET_BEGINNING if self.start == "earliest" else OFFSET_END
        return out

    def _on_assign(self, consumer: Any, assigned: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        got = {tp.partition for tp in assigned}
        missing = sorted(set(self._wanted) - got)
        self._count("rebalances")
        if missing:
            if self._missing_since is None:
                self._missing_since = time.monotonic()
            if self._joined:
                print(f"tideflow: another member of Kafka group {self.group!r} was assigned partitions "
                      f"{missing} of {self.topic!r}; this source reads the others and waits for them "
                      f"(one source per group)", file=sys.stderr, flush=True)
        else:
            self._missing_since = None
        if not self._joined and missing:
            # a newcomer reads nothing until it holds everything: the other member may be reading
            consumer.assign([])
            self._assigned = set()
            self._last_assignment = sorted(got)
            return
        self._joined = True
        mine = [p for p in sorted(got) if p in self._wanted]
        starts = self._start_of(consumer, mine)
        consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in mine])
        self._assigned = set(mine)

    def _on_revoke(self, consumer: Any, revoked: list[Any]) -> None:
        # the positions stay: buffered messages past them are read again where assigned next
        for tp in revoked:
            self._bufs.pop(tp.partition, None)
            self._buf_since.pop(tp.partition, None)
        self._assigned = set()
        if self._joined and self._missing_since is None:
            # away until the rebalance ends: neither idle nor read by this source meanwhile
            self._missing_since = time.monotonic()
        consumer.unassign()

    def _check_group(self) -> None:
        """Stop with `KafkaGroupConflict` when another member has held partitions too long."""
        now = time.monotonic()
        if not self._joined:
            if now - self._join_started < self.join_timeout_s:
                return
        elif self._missing_since is None or now - self._missing_since < self.join_timeout_s:
            return
        held = sorted(set(self._wanted) - self._assigned)
        if self._joined:
            what = f"partitions {held} of topic {self.topic!r} have been held by another member of group " \
                   f"{self.group!r} for over {self.join_timeout_s:g} s"
        elif self._missing_since is not None:
            held = sorted(set(self._wanted) - set(self._last_assignment))
            what = f"group {self.group!r} has another member: it holds partitions {held} of topic " \
                   f"{self.topic!r} (this source was assigned {self._last_assignment})"
        else:
            what = f"group {self.group!r} assigned no partitions of topic {self.topic!r} to this source " \
                   f"within {self.join_timeout_s:g} s"
        self.close()
        raise KafkaGroupConflict(
            f"KafkaSource on {self.bootstrap}: {what}. One KafkaSource per consumer group: two members "
            f"would each learn part of the stream and re-read what the other had not committed. Stop "
            f"the other consumer, or give this source a group of its own (group=...).")

    # -- reading --------------------------------------------------------------------------
    def _poll(self, want: int) -> int:
        """One poll: messages go to their partition's buffer. Returns how many arrived."""
        got = 0
        for msg in self._consumer.consume(num_messages=max(1, want), timeout=self.poll_timeout_s):
            err = msg.error()
            if err is not None:
                self._count(f"error.{err.name()}")
                if err.fatal():
                    raise RuntimeError(f"Kafka consumer failed on {self.stream_id}: {err}")
                continue
            p, off = int(msg.partition()), int(msg.offset())
            if p not in self._assigned:
                continue  # fetched before a revoke: read again where the partition goes next
            if off < self._pos.get(p, -1):
                self._count("redelivered")  # processed before the checkpoint resumed from
                continue
            got += 1
            self._read += 1
            if not self._bufs.get(p):
                self._bufs[p] = []
                self._buf_since[p] = time.monotonic()
            self._bufs[p].append((off, msg.key(), msg.value()))
        return got

    def _want(self, buffered: int) -> int:
        want = max(self.batch_size, 1)
        if self.max_messages is not None:
            want = min(want, self.max_messages - self._read)
        return max(want, 0)

    def batches(self) -> Iterator[Batch]:
        """Batches of ``batch_size`` messages of one partition each (see module docstring)."""
        self._start_reading()
        consumer = self._consumer
        idle_since = time.monotonic()
        try:
            while True:
                want = self._want(0)
                if want == 0:
                    break
                got = self._poll(want)
                self._check_group()
                if not self._joined:
                    idle_since = time.monotonic()  # waiting for the group is not idleness
                    continue
                if self._missing_since is not None:
                    # partitions held by another member may hold messages: not idle either
                    idle_since = time.monotonic()
                if got:
                    idle_since = time.monotonic()
                for p in sorted(self._bufs):
                    while len(self._bufs.get(p, ())) >= self.batch_size:
                        yield self._emit_partition(p, self.batch_size)
                if self.linger_s is not None:
                    now = time.monotonic()
                    for p in sorted(self._bufs):
                        if self._bufs[p] and now - self._buf_since[p] >= self.linger_s:
                            yield self._emit_partition(p, len(self._bufs[p]))
                if not got and self.idle_stop_s is not None and time.monotonic() - idle_since >= self.idle_stop_s:
                    break
            for p in sorted(self._bufs):
                if self._bufs[p]:
                    yield self._emit_partition(p, len(self._bufs[p]))
        finally:
            if self._consumer is consumer:
                # done (or abandoned): leave the group now rather than after the session timeout
                self.close()

    def _emit_partition(self, p: int, n: int) -> Batch:
        entries, self._bufs[p] = self._bufs[p][:n], self._bufs[p][n:]
        self._buf_since[p] = time.monotonic()
        rows = [(off, self._fields(key, value)) for off, key, value in entries]
        batch = self.decoder.batch(rows, self.stream_of(p))
        # the position moves before the consumer sees the batch, as in every source
        self._pos[p] = entries[-1][0] + 1
        self._emitted.append((p, entries[-1][0], len(entries)))
        self._count("read", len(entries))
        return batch

    def _fields(self, key: bytes | None, value: bytes | None) -> Any:
        if value is not None and len(value) > self.max_message_bytes:
            self._count("oversized")
            fields: Any = {}
        else:
            fields = self.decoder.message(value)  # None (counted as not_a_map) unless a JSON object
            if fields is None:
                fields = {}
        if self.key_column is not None:
            if key is None:
                self._count("null_key")
            else:
                text = key.decode("utf-8", errors="replace")
                if self.key_column in fields and fields[self.key_column] != text:
                    self._count("key_differs_from_field")
                fields = {**fields, self.key_column: text}
        return fields
