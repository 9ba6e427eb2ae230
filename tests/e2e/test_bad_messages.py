"""A service never dies on one bad message: undecodable records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .conftest import Api


async def test_undecodable_command_is_dead_lettered_and_the_warehouse_keeps_working(api: Api) -> None:
    bootstrap = api.s.kafka_bootstrap
    marker = uuid.uuid4().hex
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    partitions = [TopicPartition("dead-letters", p) for p in sorted(await producer.partitions_for("dead-letters"))]
    assert len(partitions) == api.s.partitions
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)

    try:
        bad = [
            b"this is not json " + marker.encode(),
            json.dumps({"type": "ReserveStock", "order_id": marker, "lines": "not-a-list"}).encode(),
        ]
        for value in bad:
            await producer.send_and_wait("warehouse-commands", key=marker.encode(), value=value)
        await producer.send_and_wait("warehouse-commands", key=marker.encode(), value=None)  # a tombstone
        # an unknown type is skipped (logged), not dead-lettered
        await producer.send_and_wait("warehouse-commands", key=marker.encode(),
                                     value=json.dumps({"type": "FutureCommand", "order_id": marker}).encode())
    finally:
        await producer.stop()

    letters = []
    try:
        async def collect() -> None:
            while len(letters) < 3:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    letters.extend(json.loads(r.value) for r in records if marker.encode() in r.value)

        await asyncio.wait_for(collect(), 30)
    finally:
        await consumer.stop()

    assert [letter["topic"] for letter in letters] == ["warehouse-commands"] * 3
    assert all(letter["key"] == marker for letter in letters)
    assert all(letter["reason"].startswith("undecodable") for letter in letters)
    assert marker in letters[0]["payload"]

    # ...and the warehouse still serves orders.
    order = await api.place([("CABLE", 1)])
    final = await api.wait_final(order["order_id"])
    assert final["status"] == "DELIVERED"
