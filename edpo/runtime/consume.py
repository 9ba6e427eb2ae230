"""The loop every agent runs: decode once, skip the unknown, dead-letter the unreadable, survive.

Each record is decoded once with its topic's msgspec decoder. Unknown types are logged and
skipped; undecodable records go to the dead-letter topic with the reason. A handler hit by a
server outage is retried until the server is back (never dead-lettered, so an outage of
PostgreSQL or Camunda delays orders instead of stranding them); a handler failing for another
reason is retried a few times, then its record is dead-lettered. One bad message never stops
a service.

A dead letter never stops a service either: a payload too large for the broker is cut (and
marked `truncated`), a publish that meets a Kafka outage is retried until Kafka is back, and
a publish refused for another reason is logged with the record's position, then the agent goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from aiokafka.errors import KafkaError, KafkaTimeoutError

from edpo.camunda.engine import engine_away
from edpo.logs import log_context
from edpo.models import DeadLetter, Message
from edpo.models.base import type_of
from edpo.runtime.metrics import NO_AGENT_METRICS, AgentMetrics
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


def server_away(e: BaseException) -> bool:
    """The engine or the database cannot be reached or cannot serve: an outage, not a fault of what was asked."""
    return engine_away(e) or isinstance(e, TRANSIENT)


# A dead letter's payload is cut to this many bytes of JSON so that, with its envelope, the
# record stays well below the broker's default limit (message.max.bytes, about 1 MB).
PAYLOAD_LIMIT = 256 * 1024
KEY_LIMIT = 4 * 1024
REASON_LIMIT = 2000
ERROR_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Unread:
    """Why a record was not read as a message: `undeclared_topic` and `unknown_type` are skipped
    (a newer producer's type is not an error); `undecodable` is dead-lettered by the record's owner."""

    reason: str
    detail: str
    error: str = ""


def read_record(event: Any) -> Message | Unread:
    """The message a Faust event's record holds, decoded with its topic's declaration, or why not."""
    raw = event.value
    spec = BY_NAME.get(event.message.topic)
    if spec is None:
        return Unread("undeclared_topic", "record from an undeclared topic")
    if not isinstance(raw, bytes):  # a tombstone (no value) or a value faust could not hand over raw
        return Unread("undecodable", "record has no value")
    try:
        kind = type_of(raw)
        if kind not in spec.message_types:
            return Unread("unknown_type", f"unknown message type {kind!r}")
        return spec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return Unread("undecodable", str(e), f"{type(e).__name__}: {e}")


async def consume(
    events: AsyncIterable[Any], handle: Handler, *, name: str, publish: Publish, sleep: Sleep = asyncio.sleep,
    metrics: AgentMetrics = NO_AGENT_METRICS,
) -> None:
    """Decode each record of a Faust stream's `events()` and hand it to `handle`."""
    async for event in events:
        try:
            await _one(event, handle, name, publish, sleep, metrics)
        except asyncio.CancelledError:
            _leave_uncommitted(event)
            raise


def _leave_uncommitted(event: Any) -> None:
    """The worker stops while this record is still being handled (e.g. retried through an outage).

    Faust acknowledges the stream's current event when its iteration is cancelled, so the
    record's offset would be committed on shutdown and the record never handled. Marking the
    message acknowledged already makes Faust's acknowledgment a no-op: its offset is not
    committed, and the record is handled again after the restart.
    """
    message = getattr(event, "message", None)
    if message is not None and not message.acked:
        message.acked = True
        logger.warning("stopping while %s[%d]@%d is in progress: left uncommitted, handled again after restart",
                       message.topic, message.partition, message.offset)


async def _one(event: Any, handle: Handler, name: str, publish: Publish, sleep: Sleep,
               metrics: AgentMetrics = NO_AGENT_METRICS) -> None:
    """Decode one record and hand it to the handler (or skip or dead-letter it)."""
    topic = event.message.topic
    msg = read_record(event)
    if isinstance(msg, Unread):
        if msg.reason == "undecodable":
            await dead_letter(publish, event, f"undecodable: {msg.detail}", error=msg.error, sleep=sleep)
        else:
            logger.warning("%s: %s on %s[%d]@%d skipped", name, msg.detail, topic, event.message.partition,
                           event.message.offset)
            metrics.skipped(topic, msg.reason)
        return
    kind = msg.type
    metrics.consumed(topic, kind)
    started = time.perf_counter()
    # Whatever is logged while the message is handled names its order and trace.
    with log_context(order_id=getattr(msg, "order_id", None), trace_id=msg.trace_id):
        await _handle(event, msg, handle, name, publish, sleep, metrics)  # raises only when cancelled: not timed
    metrics.handled(time.perf_counter() - started)


async def _handle(event: Any, msg: Message, handle: Handler, name: str, publish: Publish, sleep: Sleep,
                  metrics: AgentMetrics = NO_AGENT_METRICS) -> None:
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
            metrics.retried("outage")
            await sleep(pause)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the agent
            failures += 1
            if failures >= HANDLER_ATTEMPTS:
                logger.exception("%s: %s failed %d times; dead-lettered", name, msg.type, failures)
                text = f"{type(e).__name__}: {e}"
                await dead_letter(publish, event, f"handler failed: {text}", error=text,
                                  attempts=outages + failures, sleep=sleep)
                return
            logger.warning("%s: %s failed (%s), retry %d", name, msg.type, e, failures)
            metrics.retried("failure")
            await sleep(HANDLER.delay(failures))


async def dead_letter(
    publish: Publish,
    event: Any,
    reason: str,
    *,
    error: str = "",
    attempts: int = 0,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Keep a record nobody could handle on the dead-letter topic, with the reason; never raises
    (but for cancellation): a dead letter that cannot be kept is logged instead."""
    where = f"{event.message.topic}[{event.message.partition}]@{event.message.offset}"
    logger.error("dead letter from %s: %s", where, reason)
    letter = _letter(event, reason, error, attempts)
    if letter.truncated:
        logger.warning("dead letter from %s truncated to fit the broker's size limit", where)
    outages = 0
    while True:
        try:
            # Awaited: a buffered send that fails is only logged by Faust, and lost.
            await publish(letter, wait=True)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a dead letter must not stop the agent
            if _kafka_outage(e):
                outages += 1
                pause = OUTAGE.delay(outages)
                logger.warning("dead letter from %s not published (%s: %s); retry in %.1fs", where,
                               type(e).__name__, e, pause)
                await sleep(pause)
                continue
            logger.error("dead letter from %s LOST, publishing it failed (%s: %s); reason was: %s; "
                         "payload (%d bytes, first 200): %r", where, type(e).__name__, e, reason,
                         len(letter.payload), letter.payload[:200])
            return


def _letter(event: Any, reason: str, error: str, attempts: int) -> DeadLetter:
    """The dead letter of a record, its payload and key cut to fit the broker's size limit."""
    key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else event.key
    value = event.value if isinstance(event.value, bytes) else b"" if event.value is None else str(event.value).encode()
    payload, cut_payload = _fit(value, PAYLOAD_LIMIT)
    cut_key = key is not None and len(key) > KEY_LIMIT
    return DeadLetter(
        source="edpo",
        topic=event.message.topic,
        partition=event.message.partition,
        offset=event.message.offset,
        key=key[:KEY_LIMIT] if cut_key else key,
        reason=reason[:REASON_LIMIT],
        payload=payload,
        error=error[:ERROR_LIMIT],
        attempts=attempts,
        truncated=cut_payload or cut_key,
    )


def _fit(value: bytes, limit: int) -> tuple[str, bool]:
    """value as text whose JSON encoding takes at most limit bytes; True if it had to be cut."""
    text = value.decode("utf-8", errors="replace")
    size = len(msgspec.json.encode(text))
    if size <= limit:
        return text, False
    cut = len(value)
    while size > limit:
        # JSON escapes make text longer than its bytes; shrink in proportion until it fits.
        cut = max(min(cut - 1, cut * limit // size), 0)
        text = value[:cut].decode("utf-8", errors="replace")
        size = len(msgspec.json.encode(text))
    return text, True


def _kafka_outage(e: BaseException) -> bool:
    """Whether a failed publish (or its cause: Faust wraps the producer's errors) is a server outage."""
    cause: BaseException | None = e
    for _ in range(5):
        if cause is None:
            break
        if isinstance(cause, TRANSIENT + (KafkaTimeoutError,)) or (isinstance(cause, KafkaError) and cause.retriable):
            return True
        cause = cause.__cause__
    return False
