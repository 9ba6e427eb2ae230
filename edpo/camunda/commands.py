"""Commands with acknowledgment over Kafka: send, wait for the reply that carries the
command's id as correlation id, resend with exponential backoff while unanswered.

Receivers are idempotent (a resent command has the same id and business key), so a retry
never causes a second reservation or delivery. Every worker process listens to the reply
topics on all partitions without a consumer group: the reply may land on any partition and
only the process that sent the command is waiting for it.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from edpo.models import Message, encode
from edpo.topics import BY_NAME, TopicSpec

logger = logging.getLogger(__name__)


class CommandUnanswered(Exception):
    """No acknowledgment arrived after every resend."""


class _Envelope(msgspec.Struct):
    correlation_id: str = ""


_envelope = msgspec.json.Decoder(_Envelope)


class CommandClient:
    """Producer for commands plus a group-less listener on the reply topics."""

    def __init__(self, bootstrap: str, reply_topics: list[TopicSpec], *, timeout: float, attempts: int) -> None:
        self.bootstrap = bootstrap
        self.reply_topics = reply_topics
        self.timeout = timeout
        self.attempts = attempts
        # command id -> (future, the reply types that answer it)
        self._waiting: dict[str, tuple[asyncio.Future[Message], tuple[type[Message], ...]]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect; on failure nothing is left open, so the caller may simply try again."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await self._consumer.start()
        partitions = []
        for spec in self.reply_topics:  # every partition must be listened to: the producer knows them
            known = await self._producer.partitions_for(spec.name)
            partitions += [TopicPartition(spec.name, p) for p in sorted(known)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the lazy seek now, so no reply sent after start() is missed
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read(), name="command-replies")

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
        if self._consumer:
            await self._consumer.stop()
        if self._producer:
            await self._producer.stop()
        self._reader = self._consumer = self._producer = None

    async def send(self, spec: TopicSpec, key: str, msg: Message) -> None:
        """Fire a message and wait until Kafka has it (no reply expected)."""
        assert self._producer is not None, "start() first"
        await self._producer.send_and_wait(spec.name, key=key.encode(), value=encode(msg))

    async def request(
        self,
        spec: TopicSpec,
        key: str,
        command: Message,
        *,
        replies: tuple[type[Message], ...],
    ) -> Message:
        """Send command and return its acknowledgment (one of replies), resending with backoff."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[command.id] = (fut, replies)
        try:
            for attempt in range(self.attempts):
                await self.send(spec, key, command)
                wait = self.timeout * 2**attempt
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    logger.warning("%s for %s unanswered after %.1fs; resending", command.type, key, wait)
                    continue
                return reply
            raise CommandUnanswered(f"{command.type} for {key}: no acknowledgment after {self.attempts} sends")
        finally:
            self._waiting.pop(command.id, None)

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep listening; the sender resends anyway
                logger.exception("reading replies failed")
                await asyncio.sleep(1)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._dispatch(tp.topic, record.value)

    def _dispatch(self, topic: str, raw: bytes) -> None:
        try:
            correlation = _envelope.decode(raw).correlation_id
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not ours to judge; the owning service dead-letters it
        waiter = self._waiting.get(correlation)
        if waiter is None or waiter[0].done():
            return
        try:
            msg = BY_NAME[topic].decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            logger.error("undecodable reply on %s: %s", topic, e)
            return
        # Progress events caused by the command share its correlation id; only an ack answers it.
        if isinstance(msg, waiter[1]):
            waiter[0].set_result(msg)
