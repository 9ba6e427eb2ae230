"""The loop every agent runs: decode once, skip the unknown, dead-letter the unreadable, survive.

Each record is decoded once with its topic's msgspec decoder (`read`: the one reader of a
record, for the agents and for the command client's replies) and handed to the handler its
agent declared for the message's type (`{MessageType: handler}`). Unknown types, and types the
agent has no handler for, are logged and skipped; undecodable records go to the dead-letter
topic with the reason. A handler hit by a
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
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
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

# A handler takes the message type it is declared for (hence Any: a Callable[[Message], ...] would
# refuse a handler of one type).
Handler = Callable[[Any], Awaitable[None]]
Handlers = Mapping[type[Message], Handler]
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
    return read(event.message.topic, event.value)


def read(topic: str, raw: Any) -> Message | Unread:
    """The message a record of topic holds (its value: bytes, or None for a tombstone), or why not."""
    spec = BY_NAME.get(topic)
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


@dataclass(frozen=True)
class Agent:
    """Who consumes: the agent's name, its handlers, how it dead-letters and waits.

    A read model (`read_model`, the monitor) is not the owner of the records it reads: what it
    cannot decode, or a handler gives up on, is logged and skipped (counted in
    edpo_events_skipped_total), never dead-lettered: the record's owner does that."""

    name: str
    handlers: Handlers
    publish: Publish
    sleep: Sleep = asyncio.sleep
    metrics: AgentMetrics = NO_AGENT_METRICS
    read_model: bool = False


async def consume(
    events: AsyncIterable[Any], handlers: Handlers, *, name: str, publish: Publish, sleep: Sleep = asyncio.sleep,
    metrics: AgentMetrics = NO_AGENT_METRICS, read_model: bool = False,
) -> None:
    """Decode each record of a Faust stream's `events()` and hand it to the handler of its type."""
    agent = Agent(name, handlers, publish, sleep, metrics, read_model)
    async for event in events:
        try:
            await _one(event, agent)
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


async def _one(event: Any, agent: Agent) -> None:
    """Decode one record and hand it to its handler (or skip or dead-letter it)."""
    topic, where = event.message.topic, f"{event.message.topic}[{event.message.partition}]@{event.message.offset}"
    msg = read_record(event)
    if isinstance(msg, Unread):
        if msg.reason == "undecodable" and not agent.read_model:
            await dead_letter(agent.publish, event, f"undecodable: {msg.detail}", error=msg.error, sleep=agent.sleep)
            return
        # A newer producer's type is no fault of a read model's: its owner says so already.
        level = logging.INFO if agent.read_model and msg.reason == "unknown_type" else logging.WARNING
        logger.log(level, "%s: %s on %s skipped", agent.name, msg.detail, where)
        agent.metrics.skipped(topic, msg.reason)
        return
    handle = agent.handlers.get(type(msg))
    if handle is None:  # declared on the topic, but nothing for this agent to do
        logger.debug("%s: no handler for %s on %s; skipped", agent.name, msg.type, where)
        agent.metrics.skipped(topic, "not_handled")
        return
    agent.metrics.consumed(topic, msg.type)
    started = time.perf_counter()
    # Whatever is logged while the message is handled names its order and trace.
    with log_context(order_id=getattr(msg, "order_id", None), trace_id=msg.trace_id):
        await _handle(event, msg, handle, agent)  # raises only when cancelled: not timed
    agent.metrics.handled(time.perf_counter() - started)


async def _handle(event: Any, msg: Message, handle: Handler, agent: Agent) -> None:
    """Run the handler; retry transient failures until they pass, others a few times, then dead-letter
    (a read model skips the record instead)."""
    name, metrics = agent.name, agent.metrics
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
            await agent.sleep(pause)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the agent
            failures += 1
            if failures >= HANDLER_ATTEMPTS:
                text = f"{type(e).__name__}: {e}"
                if agent.read_model:
                    logger.exception("%s: %s %s failed %d times; skipped", name, msg.type, msg.id, failures)
                    metrics.skipped(event.message.topic, "handler_failed")
                    return
                logger.exception("%s: %s failed %d times; dead-lettered", name, msg.type, failures)
                await dead_letter(agent.publish, event, f"handler failed: {text}", error=text,
                                  attempts=outages + failures, sleep=agent.sleep)
                return
            logger.warning("%s: %s failed (%s), retry %d", name, msg.type, e, failures)
            metrics.retried("failure")
            await agent.sleep(HANDLER.delay(failures))


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
