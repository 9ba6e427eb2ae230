"""The loop every agent runs: decode once, skip the unknown, dead-letter the unreadable, survive.

Each record is decoded once with its topic's msgspec decoder. Unknown types are logged and
skipped; undecodable records go to the dead-letter topic with the reason. A handler hit by a
server outage is retried until the server is back (never dead-lettered, so an outage of
PostgreSQL or Camunda delays orders instead of stranding them); a handler failing for another
reason is retried a few times, then its record is dead-lettered. One bad message never stops
a service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from edpo.models import DeadLetter, Message
from edpo.runtime.publish import Publish
from edpo.runtime.retry import HANDLER, HANDLER_ATTEMPTS, OUTAGE
from edpo.topics import BY_NAME

logger = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

# Failures of a server, not of the message.
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


class _TypeOnly(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_TypeOnly)


async def consume(
    events: AsyncIterable[Any], handle: Handler, *, name: str, publish: Publish, sleep: Sleep = asyncio.sleep
) -> None:
    """Decode each record of a Faust stream's `events()` and hand it to `handle`."""
    async for event in events:
        raw = event.value
        topic = event.message.topic
        spec = BY_NAME.get(topic)
        if spec is None:
            logger.warning("%s: record from undeclared topic %s skipped", name, topic)
            continue
        if not isinstance(raw, bytes):  # a tombstone (no value) or a value faust could not hand over raw
            await dead_letter(publish, event, "undecodable: record has no value")
            continue
        try:
            kind = _type_decoder.decode(raw).type
            if kind not in spec.message_types:
                logger.warning("%s: unknown message type %r on %s skipped", name, kind, topic)
                continue
            msg = spec.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            await dead_letter(publish, event, f"undecodable: {e}")
            continue
        await _handle(event, msg, handle, name, publish, sleep)


async def _handle(event: Any, msg: Message, handle: Handler, name: str, publish: Publish, sleep: Sleep) -> None:
    """Run the handler; retry transient failures until they pass, others a few times, then dead-letter."""
    outages = failures = 0
    while True:
        try:
            await handle(msg)
            return
        except asyncio.CancelledError:
            raise
        except TRANSIENT as e:
            outages += 1
            pause = OUTAGE.delay(outages)
            logger.warning("%s: %s hit a server failure (%s: %s); retry in %.1fs", name, msg.type,
                           type(e).__name__, e, pause)
            await sleep(pause)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the agent
            failures += 1
            if failures >= HANDLER_ATTEMPTS:
                logger.exception("%s: %s failed %d times; dead-lettered", name, msg.type, failures)
                await dead_letter(publish, event, f"handler failed: {type(e).__name__}: {e}")
                return
            logger.warning("%s: %s failed (%s), retry %d", name, msg.type, e, failures)
            await sleep(HANDLER.delay(failures))


async def dead_letter(publish: Publish, event: Any, reason: str) -> None:
    """Keep a record nobody could handle on the dead-letter topic, with the reason."""
    key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else event.key
    value = event.value if isinstance(event.value, bytes) else b"" if event.value is None else str(event.value).encode()
    logger.error("dead letter from %s[%d]@%d: %s", event.message.topic, event.message.partition,
                 event.message.offset, reason)
    await publish(
        DeadLetter(
            source="edpo",
            topic=event.message.topic,
            partition=event.message.partition,
            offset=event.message.offset,
            key=key,
            reason=reason[:2000],
            payload=value.decode("utf-8", errors="replace"),
        )
    )
