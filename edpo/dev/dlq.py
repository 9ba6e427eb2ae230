"""`edpo dlq list|replay`: what lies on the dead-letter topic, and sending it back where it came from.

The topic is read whole, from the beginning up to the end offsets taken when reading starts, by
a consumer without a group: nothing is committed and any number of operators may look at once.
A replay sends a dead letter's payload, as bytes, to its original topic with its original key,
then marks it with a `DeadLetterReplayed` on the dead-letter topic (same key, so the mark
follows its dead letter in the same partition). A dead letter replayed already is skipped
unless forced; a truncated one is refused, since its payload is no longer the original.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from edpo.config import Settings
from edpo.dev.process import StackError
from edpo.models import DeadLetter, DeadLetterReplayed, encode
from edpo.topics import dead_letters_topic, route

logger = logging.getLogger(__name__)

Say = Callable[[str], None]
# Sends value with key to topic, waits for all replicas, returns where it landed: (partition, offset).
Send = Callable[[str, bytes | None, bytes], Awaitable[tuple[int, int]]]

SOURCE = "edpo-dlq"
READ_TIMEOUT = 60.0


@dataclass
class Entry:
    """A dead letter and the replays recorded for it."""

    letter: DeadLetter
    replays: list[DeadLetterReplayed] = field(default_factory=list)

    @property
    def replayed(self) -> bool:
        return bool(self.replays)


@dataclass
class Plan:
    """What a replay does with each dead letter it was asked for."""

    send: list[Entry]
    skipped: list[Entry]  # replayed already
    refused: list[Entry]  # truncated


# --- pure parts ------------------------------------------------------------------------------


def entries(values: Iterable[bytes | None]) -> tuple[list[Entry], int]:
    """The dead letters among the topic's record values, oldest first, each with its replay
    marks; and how many records could not be read."""
    letters: dict[str, Entry] = {}
    marks: list[DeadLetterReplayed] = []
    unreadable = 0
    for raw in values:
        try:
            msg = dead_letters_topic.decode(raw or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            unreadable += 1
            continue
        match msg:
            case DeadLetter():
                letters.setdefault(msg.id, Entry(msg))  # a producer retry may have written it twice
            case DeadLetterReplayed():
                marks.append(msg)
    for mark in marks:  # partitions are read one after the other: a mark may come before its letter
        if mark.dead_letter_id in letters:
            letters[mark.dead_letter_id].replays.append(mark)
    return sorted(letters.values(), key=lambda e: (e.letter.time, e.letter.id)), unreadable


def _short(text: str, width: int) -> str:
    one_line = re.sub(r"\s+", " ", text).strip()
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _where(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"


def state(entry: Entry) -> str:
    """yes: replayed; truncated: cannot be replayed; no: waiting for an operator."""
    return "yes" if entry.replayed else "truncated" if entry.letter.truncated else "no"


HEADER = f"{'ID':32}  {'TIME':20}  {'SOURCE':34}  {'KEY':32}  {'ATTEMPTS':>8}  {'REPLAYED':9}  REASON"


def line(entry: Entry) -> str:
    """One dead letter as a line of `edpo dlq list`."""
    d = entry.letter
    key = "-" if d.key is None else _short(d.key, 32)  # an order id (uuid hex) fits whole
    return (f"{d.id:32}  {_time(d.time):20}  {_short(_where(d.topic, d.partition, d.offset), 34):34}  {key:32}  "
            f"{d.attempts:8}  {state(entry):9}  {_short(d.reason, 60)}")


def as_json(entry: Entry) -> dict[str, Any]:
    """One dead letter as `edpo dlq list --json` prints it: every field, and its replays."""
    return {**msgspec.to_builtins(entry.letter), "replayed": entry.replayed,
            "replays": msgspec.to_builtins(entry.replays)}


def plan(found: Sequence[Entry], ids: Sequence[str], *, everything: bool, force: bool) -> Plan:
    """Which dead letters a replay sends: the named ones (or all), never truncated ones, and
    replayed ones only if forced. An unknown id is an error, and then nothing is sent."""
    by_id = {e.letter.id: e for e in found}
    unknown = [i for i in dict.fromkeys(ids) if i not in by_id]
    if unknown:
        raise StackError(f"no dead letter with id {', '.join(unknown)} on {dead_letters_topic.name} "
                         "(`edpo dlq list` shows them)")
    todo = Plan(send=[], skipped=[], refused=[])
    for entry in list(found) if everything else [by_id[i] for i in dict.fromkeys(ids)]:
        if entry.letter.truncated:
            todo.refused.append(entry)
        elif entry.replayed and not force:
            todo.skipped.append(entry)
        else:
            todo.send.append(entry)
    return todo


async def replay(chosen: Sequence[Entry], send: Send, say: Say) -> list[DeadLetterReplayed]:
    """Send each dead letter's payload to its topic with its key, then record the replay."""
    marks = []
    for entry in chosen:
        d = entry.letter
        partition, offset = await send(d.topic, None if d.key is None else d.key.encode(), d.payload.encode())
        mark = DeadLetterReplayed(
            source=SOURCE, correlation_id=d.id, trace_id=d.trace_id,
            dead_letter_id=d.id, key=d.key, topic=d.topic, partition=partition, offset=offset,
        )
        _, mark_key = route(mark)
        await send(dead_letters_topic.name, mark_key.encode(), encode(mark))
        marks.append(mark)
        say(f"replayed  {d.id}  -> {_where(d.topic, partition, offset)}")
    return marks


# --- Kafka ------------------------------------------------------------------------------------


async def read_values(bootstrap: str, *, timeout: float = READ_TIMEOUT) -> list[bytes | None]:
    """Every record value on the dead-letter topic, up to its end when reading starts."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    topic = dead_letters_topic.name
    unreachable = f"cannot reach Kafka at {bootstrap}; is it up (`edpo infra up`)?"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    except KafkaError as e:
        raise StackError(f"{unreachable} ({e})") from None
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise StackError(f"topic {topic} does not exist on {bootstrap} (`edpo infra up` creates it)")
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    # "earliest" also for the reset assign() starts: with "latest" it may finish after
    # seek_to_beginning and leave the consumer at the end.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    try:
        await consumer.start()
    except KafkaError as e:
        await consumer.stop()
        raise StackError(f"{unreachable} ({e})") from None
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        values: list[bytes | None] = []

        async def drain() -> None:
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for tp, records in (await consumer.getmany(*partitions, timeout_ms=500)).items():
                    values.extend(r.value for r in records if r.offset < ends[tp])

        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            raise StackError(f"reading {topic} took longer than {timeout:.0f}s") from None
        return values
    finally:
        await consumer.stop()


def page_of(found: list[Entry], limit: int, after: str | None) -> tuple[list[Entry], str | None]:
    """The dead letters after the one with id `after` (in the topic's order), at most limit, and
    the id to continue after (None on the last page)."""
    start = 0
    if after is not None:
        ids = [e.letter.id for e in found]
        if after not in ids:
            raise StackError(f"no dead letter {after!r} to continue after (see `edpo dlq list`)")
        start = ids.index(after) + 1
    shown = found[start:start + limit]
    return shown, (shown[-1].letter.id if start + limit < len(found) and shown else None)


async def _list(settings: Settings, as_json_lines: bool, say: Say, limit: int = 100, after: str | None = None) -> int:
    found, unreadable = entries(await read_values(settings.kafka_bootstrap))
    if unreadable:
        logger.warning("%d records on %s are not dead letters and were left out", unreadable, dead_letters_topic.name)
    shown, more = page_of(found, limit, after)
    if as_json_lines:
        for entry in shown:
            say(json.dumps(as_json(entry), ensure_ascii=False))
        return 0
    say(HEADER)
    for entry in shown:
        say(line(entry))
    replayed = sum(e.replayed for e in found)
    say(f"{len(found)} dead letters, {replayed} replayed, {sum(state(e) == 'no' for e in found)} waiting")
    if more:
        say(f"{len(shown)} shown; the next ones: edpo dlq list --after {more}")
    return 0


async def _replay(settings: Settings, ids: Sequence[str], everything: bool, force: bool, say: Say) -> int:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    found, _ = entries(await read_values(settings.kafka_bootstrap))
    todo = plan(found, ids, everything=everything, force=force)
    for e in todo.skipped:
        r = e.replays[-1]
        say(f"skipped   {e.letter.id}  replayed already at {_time(r.time)} -> {_where(r.topic, r.partition, r.offset)}"
            " (--force replays it again)")
    for e in todo.refused:
        say(f"refused   {e.letter.id}  its payload was truncated, it cannot be replayed faithfully")
    if todo.send:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", request_timeout_ms=15000)

        async def send(topic: str, key: bytes | None, value: bytes) -> tuple[int, int]:
            meta = await producer.send_and_wait(topic, value=value, key=key)
            return meta.partition, meta.offset

        try:
            await producer.start()
            await replay(todo.send, send, say)
        except KafkaError as e:
            raise StackError(f"replay stopped: {type(e).__name__}: {e}") from None
        finally:
            await producer.stop()
    elif not (todo.skipped or todo.refused):
        say("nothing to replay")
    # Named explicitly, a truncated dead letter is an error; --all means "all that can be replayed".
    return 1 if todo.refused and not everything else 0


def list_command(settings: Settings, *, as_json_lines: bool, say: Say, limit: int = 100,
                 after: str | None = None) -> int:
    """`edpo dlq list [--json] [--limit N] [--after ID]`: one line per dead letter (JSON lines
    with --json), at most N, starting after the dead letter ID."""
    return asyncio.run(_list(settings, as_json_lines, say, limit, after))


def replay_command(settings: Settings, ids: Sequence[str], *, everything: bool, force: bool, say: Say) -> int:
    """`edpo dlq replay ID... | --all [--force]`: send dead letters back to their topics."""
    if bool(ids) == everything:
        raise StackError("dlq replay takes dead letter ids or --all (not both)")
    return asyncio.run(_replay(settings, ids, everything, force, say))
