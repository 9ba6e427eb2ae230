"""The one way a service sends a message: topic and key come from the message's type.

Sends are buffered in Faust's producer, not awaited one by one: Faust flushes its producer
before it commits a source offset, so a record counts as done only once everything it caused
is in Kafka (at-least-once) without a broker round trip per record. Callers that must know the
message is in Kafka (an HTTP reply, a command) pass ``wait=True``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import faust

from edpo.models import DeadLetter, Message, encode
from edpo.runtime.failpoints import NONE, Failpoints
from edpo.runtime.metrics import Metrics, message_type
from edpo.topics import TopicSpec, dead_letters_topic, route

DEAD_LETTERS = dead_letters_topic.name


class Publish(Protocol):
    """What handlers are given to send messages (a Publisher's `publish`, or a fake in unit tests)."""

    async def __call__(self, *messages: Message, wait: bool = False) -> None: ...


def raw_topic(app: faust.App, *specs: TopicSpec) -> faust.TopicT:
    """A Faust channel over one or more topics, bytes in and out (msgspec does the decoding)."""
    return app.topic(
        *[s.name for s in specs],
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.conf.topic_partitions,
        internal=False,
    )


class Publisher:
    """Routes, encodes and sends messages through the app's producer."""

    def __init__(self, app: faust.App, failpoints: Failpoints = NONE, metrics: Metrics | None = None) -> None:
        self._app = app
        self._channels: dict[str, faust.TopicT] = {}
        self.failpoints = failpoints
        self.metrics = metrics

    async def publish(self, *messages: Message, wait: bool = False) -> None:
        """Send each message to its declared topic, keyed by its declared key field."""
        pending = []
        for msg in messages:
            spec, key = route(msg)
            pending.append(await self.send_encoded(spec, key, encode(msg), msg))
        if pending and (wait or self.failpoints.armed_at("after_publish")):
            await asyncio.gather(*pending)
            self.failpoints.hit("after_publish")

    async def send_encoded(self, spec: TopicSpec, key: str, payload: bytes, msg: Message | None = None) -> Any:
        """Send a message already routed and encoded (the order service's outbox stores them so);
        returns the future of the broker's acknowledgment. msg, when the caller has it, spares
        the metrics reading the type from the payload."""
        if spec.name != DEAD_LETTERS:
            self.failpoints.hit("before_publish")
        channel = self._channels.get(spec.name)
        if channel is None:
            channel = self._channels[spec.name] = raw_topic(self._app, spec)
        sent = await channel.send(key=key.encode(), value=payload)
        if self.metrics is not None:
            self.metrics.sent(spec.name, msg.type if msg is not None else message_type(payload))
            if spec.name == DEAD_LETTERS:
                if isinstance(msg, DeadLetter):
                    self.metrics.dead_letter(msg.topic, msg.reason)
                else:
                    self.metrics.dead_letter_payload(payload)
        return sent
