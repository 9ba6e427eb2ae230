"""Kafka through aiokafka: partitions and per-key ordering on the real broker."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from edpo.config import Settings


async def test_keyed_messages_keep_their_order_across_three_partitions(servers: Settings) -> None:
    topic = f"test-order-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 3, 1)])
    described = await admin.describe_topics([topic])
    await admin.close()
    assert len(described[0]["partitions"]) == 3

    producer = AIOKafkaProducer(bootstrap_servers=servers.kafka_bootstrap, acks="all")
    await producer.start()
    keys = [f"order-{i}" for i in range(6)]
    try:
        for seq in range(20):
            for key in keys:
                await producer.send(topic, key=key.encode(), value=str(seq).encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers.kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    seen: dict[str, list[int]] = {k: [] for k in keys}
    partitions_by_key: dict[str, set[int]] = {k: set() for k in keys}
    try:
        async def drain() -> None:
            while sum(map(len, seen.values())) < 20 * len(keys):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        seen[r.key.decode()].append(int(r.value))
                        partitions_by_key[r.key.decode()].add(tp.partition)

        await asyncio.wait_for(drain(), 30)
    finally:
        await consumer.stop()

    for key in keys:
        assert seen[key] == list(range(20)), key
        assert len(partitions_by_key[key]) == 1, "a key must stay on one partition"
    assert len(set().union(*partitions_by_key.values())) > 1, "six keys should spread over partitions"
