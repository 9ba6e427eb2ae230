"""`edpo dlq list|replay` against the real broker.

The dead letter names a throwaway topic as its source, so replaying it disturbs no service of a
running stack; everything else goes through the real dead-letter topic.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from edpo.config import Settings
from edpo.models import DeadLetter, OrderStatusChanged, encode
from edpo.topics import dead_letters_topic


@dataclass
class Result:
    code: int
    out: str
    err: str


async def _edpo(*args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edpo.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def source_topic(servers: Settings) -> AsyncIterator[str]:
    """A topic of its own for the dead letter to come from, deleted afterwards."""
    name = f"test-dlq-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, servers.partitions, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()


async def _records_after(bootstrap: str, offsets: dict[TopicPartition, int], count: int) -> list[tuple[int, int, bytes, bytes]]:
    """The first `count` records behind the given offsets: (partition, offset, key, value)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(list(offsets))
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    found: list[tuple[int, int, bytes, bytes]] = []
    try:
        async def collect() -> None:
            while len(found) < count:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    found.extend((tp.partition, r.offset, r.key, r.value) for r in records)

        await asyncio.wait_for(collect(), 30)
    finally:
        await consumer.stop()
    return found


def _line_of(listing: str, letter_id: str) -> list[str]:
    lines = [line for line in listing.splitlines() if line.startswith(letter_id)]
    assert len(lines) == 1, listing
    return lines[0].split()


async def test_dead_letter_is_listed_replayed_once_to_its_topic_and_then_listed_as_replayed(
    servers: Settings, source_topic: str
) -> None:
    bootstrap = servers.kafka_bootstrap
    marker = uuid.uuid4().hex
    payload = encode(OrderStatusChanged(order_id=marker, status="PLACED", source="test"))
    letter = DeadLetter(source="test", topic=source_topic, partition=1, offset=7, key=marker,
                        reason="handler failed: ValueError: test", payload=payload.decode(),
                        error="ValueError: test", attempts=5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(dead_letters_topic.name, key=marker.encode(), value=encode(letter))
    finally:
        await producer.stop()

    listed = await _edpo("dlq", "list")
    assert listed.code == 0, listed.err
    assert _line_of(listed.out, letter.id)[2:6] == [f"{source_topic}[1]@7", marker, "5", "no"]

    before = await _end_offsets(bootstrap, source_topic, servers.partitions)
    replayed = await _edpo("dlq", "replay", letter.id)
    assert replayed.code == 0, replayed.err
    [(partition, offset, key, value)] = await _records_after(bootstrap, before, 1)
    assert (key, value) == (marker.encode(), payload), "the original bytes under the original key"
    assert replayed.out.strip() == f"replayed  {letter.id}  -> {source_topic}[{partition}]@{offset}"

    again = await _edpo("dlq", "replay", letter.id)
    assert again.code == 0, again.err
    assert again.out.startswith(f"skipped   {letter.id}  replayed already"), again.out
    after = await _end_offsets(bootstrap, source_topic, servers.partitions)
    assert sum(after.values()) == sum(before.values()) + 1, "the second replay sent nothing"

    listed = await _edpo("dlq", "list")
    assert _line_of(listed.out, letter.id)[5] == "yes"
    as_json = await _edpo("dlq", "list", "--json")
    [mine] = [row for row in map(json.loads, as_json.out.splitlines()) if row["id"] == letter.id]
    assert mine["replayed"] is True
    assert [(r["partition"], r["offset"]) for r in mine["replays"]] == [(partition, offset)], "marked exactly once"


async def test_replay_of_an_unknown_id_fails_with_a_clear_message(servers: Settings) -> None:
    unknown = uuid.uuid4().hex
    result = await _edpo("dlq", "replay", unknown)
    assert result.code == 1
    assert f"no dead letter with id {unknown}" in result.err
