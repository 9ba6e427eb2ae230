"""Commands with acknowledgment over Kafka: send, wait for the reply that carries the
command's id as correlation id, resend with exponential backoff while unanswered.

Commands leave through the service's one publisher (topic and key from `topics.py`); this
module only adds the waiting for replies.

Receivers are idempotent (a resent command has the same id and business key), so a retry
never causes a second reservation or delivery. Every worker process listens to the reply
topics on all partitions without a consumer group: the reply may land on any partition and
only the process that sent the command is waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ConsumerStoppedError

from edpo.models import Message
from edpo.runtime.consume import Unread, read
from edpo.runtime.publish import Publish
from edpo.runtime.retry import STARTUP, Backoff
from edpo.topics import TopicSpec, route

logger = logging.getLogger(__name__)


class CommandUnanswered(Exception):
    """No acknowledgment arrived after every resend."""


class Commands(Protocol):
    """What external-task handlers use to send commands (a CommandClient, or a fake in unit tests)."""

    async def send(self, command: Message) -> None: ...

    async def request(self, command: Message, *, replies: tuple[type[Message], ...]) -> Message: ...


class CommandClient(mode.Service):
    """Sends commands through the publisher and listens, without a consumer group, for replies."""

    def __init__(self, bootstrap: str, publish: Publish, reply_topics: list[TopicSpec], *, timeout: float,
                 attempts: int) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.publish = publish
        self.reply_topics = reply_topics
        self.backoff = Backoff(first=timeout, cap=float("inf"))
        self.attempts = attempts
        # command id -> (future, the reply types that answer it)
        self._waiting: dict[str, tuple[asyncio.Future[Message], tuple[type[Message], ...]]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self.listening = asyncio.Event()

    @mode.Service.task
    async def _listen(self) -> None:
        """Connect the reply listener (retrying while Kafka is not there), then read replies."""
        self._consumer = await STARTUP.retry("reply listener start", self._connect)
        self.listening.set()
        await self._read(self._consumer)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        """A consumer positioned at the end of every reply partition; on failure nothing stays open."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        try:
            await consumer.start()
            known = await _partitions(self.bootstrap, [spec.name for spec in self.reply_topics])
            # Every partition is listened to: the reply may land on any of them.
            partitions = [TopicPartition(topic, p) for topic, ps in known.items() for p in ps]
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve the lazy seek now, so no reply sent after this is missed
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def send(self, command: Message) -> None:
        """Fire a message and wait until Kafka has it (no reply expected)."""
        await self.publish(command, wait=True)

    async def request(self, command: Message, *, replies: tuple[type[Message], ...]) -> Message:
        """Send command and return its acknowledgment (one of replies), resending with backoff."""
        await self.listening.wait()  # a reply sent before the listener is positioned would be missed
        key = route(command)[1]
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[command.id] = (fut, replies)
        try:
            for attempt in range(1, self.attempts + 1):
                await self.send(command)
                wait = self.backoff.delay(attempt)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    logger.warning("%s for %s unanswered after %.1fs; resending", command.type, key, wait)
            raise CommandUnanswered(f"{command.type} for {key}: no acknowledgment after {self.attempts} sends")
        finally:
            self._waiting.pop(command.id, None)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except ConsumerStoppedError:
                return  # the worker is stopping: nothing went wrong
            except Exception:  # noqa: BLE001 - keep listening; the sender resends anyway
                logger.exception("reading replies failed")
                await asyncio.sleep(1)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._dispatch(tp.topic, record.value)

    def _dispatch(self, topic: str, raw: bytes) -> None:
        """Answer the request waiting for this reply, if any; everything else on the topic is not ours."""
        msg = read(topic, raw)
        if isinstance(msg, Unread):
            return  # not ours to judge; the owning service skips or dead-letters it
        waiter = self._waiting.get(msg.correlation_id)
        # Progress events caused by the command share its correlation id; only an ack answers it.
        if waiter is not None and not waiter[0].done() and isinstance(msg, waiter[1]):
            waiter[0].set_result(msg)


async def _partitions(bootstrap: str, topics: list[str]) -> dict[str, list[int]]:
    """Every partition of each topic, as the cluster knows them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    found = {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if not t["error_code"]}
    missing = [t for t in topics if not found.get(t)]
    if missing:
        raise RuntimeError(f"topics {missing} do not exist (yet)")
    return found
