"""What every service's Faust app shares: construction, raw topics, safe consumption, sending.

Agents stay thin: ``consume()`` decodes each record once with the topic's msgspec decoder,
skips unknown types, sends undecodable records to the dead-letter topic and retries a
failing handler before dead-lettering it, so one bad message never stops a service.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import faust
import msgspec

from edpo.config import Settings
from edpo.models import DeadLetter, Message, encode
from edpo.stack.workers import web_port
from edpo.topics import BY_NAME, TopicSpec, dead_letters_topic

logger = logging.getLogger(__name__)


class _TypeOnly(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_TypeOnly)

HANDLER_ATTEMPTS = 5
# Failures of a server, not of the message: retried until the server is back, never dead-lettered,
# so an outage of PostgreSQL or Camunda delays orders instead of stranding them.
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)
MAX_TRANSIENT_PAUSE = 30.0


def instance_number() -> int:
    return int(os.environ.get("EDPO_INSTANCE", "1"))


def service_app(service: str, settings: Settings | None = None) -> faust.App:
    """A Faust app for one service instance: RocksDB tables, its own web port and data dir."""
    s = settings or Settings.from_env()
    instance = instance_number()
    (s.run_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"edpo-{service}",
        broker=f"kafka://{s.kafka_bootstrap}",
        store="rocksdb://",  # rocksdict under the hood (faust-streaming[rocksdict])
        datadir=str(s.run_dir / "faust" / f"{service}-{instance}"),
        web_host=s.host,
        web_bind=s.host,
        web_port=web_port(s, service, instance),
        # How other workers of this service reach this one (table routing): not the hostname.
        canonical_url=f"http://{s.host}:{web_port(s, service, instance)}",
        topic_partitions=s.partitions,
        topic_replication_factor=1,
        # Standby copies would make local table scans (timers) see other workers' keys.
        table_standby_replicas=0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=100,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
    )
    app.edpo_settings = s  # type: ignore[attr-defined]
    # Services that open connections at start clear this until they are usable.
    app.edpo_ready = asyncio.Event()  # type: ignore[attr-defined]
    app.edpo_ready.set()  # type: ignore[attr-defined]

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ready = app.edpo_ready.is_set()  # type: ignore[attr-defined]
        body = {"service": service, "instance": instance, "status": "ok" if ready else "starting"}
        return web.json(body, status=200 if ready else 503)

    return app


async def retrying(what: str, step: Callable[[], Awaitable[Any]], *, pause: float = 1.0) -> Any:
    """Run a start-up step until it succeeds: a server that is still starting is not fatal."""
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            logger.warning("%s failed (%s: %s); retrying in %.0fs", what, type(e).__name__, e, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 15.0)


def guarded_timer(app: faust.App, interval: float) -> Callable[[Callable[[], Awaitable[None]]], Any]:
    """app.timer whose body may fail without killing the timer (faust stops a timer that raises)."""

    def register(fun: Callable[[], Awaitable[None]]) -> Any:
        async def tick() -> None:
            try:
                await fun()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - next tick tries again
                logger.exception("timer %s failed", fun.__name__)

        tick.__name__ = tick.__qualname__ = fun.__name__
        tick.__doc__ = fun.__doc__
        tick.__module__ = fun.__module__
        return app.timer(interval=interval)(tick)

    return register


class TickThrottle:
    """Remembers which ticks a timer sent recently, so it does not resend while the agent
    catches up (a cache, not state: losing it only means one duplicate tick, which the
    domain ignores)."""

    def __init__(self, resend_after: float = 5.0, forget_after: float = 60.0) -> None:
        self.resend_after, self.forget_after = resend_after, forget_after
        self._sent: dict[Any, float] = {}

    def should_send(self, key: Any, now: float) -> bool:
        if now - self._sent.get(key, 0.0) <= self.resend_after:
            return False
        self._sent[key] = now
        return True

    def prune(self, now: float) -> None:
        for key, at in list(self._sent.items()):
            if now - at > self.forget_after:
                del self._sent[key]


def error_json(web: Any, status: int, field: str, message: str) -> Any:
    """The error body every EDPO endpoint uses: {"errors": [{"field", "message"}]}."""
    return web.json({"errors": [{"field": field, "message": message}]}, status=status)


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


class Outbox:
    """Sends the messages a handler produces.

    Sends are buffered, not awaited one by one: Faust flushes its producer before it commits
    a source offset, so a record only counts as done once everything it caused is in Kafka
    (at-least-once) without paying a broker round trip per record.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._topics: dict[str, faust.TopicT] = {}

    def _topic(self, spec: TopicSpec) -> faust.TopicT:
        if spec.name not in self._topics:
            self._topics[spec.name] = raw_topic(self.app, spec)
        return self._topics[spec.name]

    async def send(self, spec: TopicSpec, key: str, msg: Message) -> Any:
        """Queue msg for its topic; returns a future for callers that must wait (e.g. an HTTP reply)."""
        return await self._topic(spec).send(key=key.encode(), value=encode(msg))


Handler = Callable[[Message, Outbox], Awaitable[None]]


async def consume(app: faust.App, stream: faust.StreamT, handler: Handler, *, name: str) -> None:
    """Decode, dispatch and survive: the loop every agent runs."""
    out = Outbox(app)
    async for event in stream.events():
        raw: bytes = event.value
        topic = event.message.topic
        spec = BY_NAME.get(topic)
        if spec is None:
            logger.warning("%s: record from undeclared topic %s skipped", name, topic)
            continue
        if not isinstance(raw, bytes):  # a tombstone (no value) or a value faust could not hand over raw
            await dead_letter(out, event, "undecodable: record has no value")
            continue
        try:
            kind = _type_decoder.decode(raw).type
            if kind not in spec.message_types:
                logger.warning("%s: unknown message type %r on %s skipped", name, kind, topic)
                continue
            msg = spec.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            await dead_letter(out, event, f"undecodable: {e}")
            continue
        await _handle(out, event, msg, handler, name)


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _handle(out: Outbox, event: Any, msg: Message, handler: Handler, name: str) -> None:
    """Run the handler; retry transient failures until they pass, others a few times, then dead-letter."""
    outages = failures = 0
    while True:
        try:
            await handler(msg, out)
            return
        except asyncio.CancelledError:
            raise
        except TRANSIENT as e:
            outages += 1
            pause = min(0.2 * 2**outages, MAX_TRANSIENT_PAUSE)
            logger.warning("%s: %s hit a server failure (%s: %s); retry in %.1fs", name, msg.type,
                           type(e).__name__, e, pause)
            await _pause(pause)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the agent
            failures += 1
            if failures >= HANDLER_ATTEMPTS:
                logger.exception("%s: %s failed %d times; dead-lettered", name, msg.type, failures)
                await dead_letter(out, event, f"handler failed: {type(e).__name__}: {e}")
                return
            logger.warning("%s: %s failed (%s), retry %d", name, msg.type, e, failures)
            await _pause(0.2 * 2**failures)


async def dead_letter(out: Outbox, event: Any, reason: str) -> None:
    key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else event.key
    value = event.value if isinstance(event.value, bytes) else b"" if event.value is None else str(event.value).encode()
    logger.error("dead letter from %s[%d]@%d: %s", event.message.topic, event.message.partition,
                 event.message.offset, reason)
    await out.send(
        dead_letters_topic,
        key or "",
        DeadLetter(
            source="edpo",
            topic=event.message.topic,
            partition=event.message.partition,
            offset=event.message.offset,
            key=key,
            reason=reason[:2000],
            payload=value.decode("utf-8", errors="replace"),
        ),
    )


class StructTable:
    """A Faust table holding msgspec Structs as JSON bytes, keyed by str."""

    def __init__(self, app: faust.App, name: str, type_: type, *, help: str = "") -> None:
        self.table = app.Table(
            name,
            key_type=bytes,  # bytes in and out: faust picks its "raw" codec; msgspec encodes
            value_type=bytes,
            partitions=app.conf.topic_partitions,
            help=help,
        )
        self._decoder = msgspec.json.Decoder(type_)
        self._encoder = msgspec.json.Encoder()

    def get(self, key: str) -> Any:
        return self._load(self.table.get(key.encode()))

    def _load(self, stored: bytes | None) -> Any:
        return None if stored is None else self._decoder.decode(stored)

    def set(self, key: str, value: Any) -> None:
        self.table[key.encode()] = self._encoder.encode(value)

    def local_items(self) -> list[tuple[str, Any]]:
        """The entries of partitions this worker owns (no standbys are kept)."""
        return [(k.decode(), self._load(v)) for k, v in list(self.table.items())]
