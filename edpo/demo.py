"""`edpo demo`: the main job of `make demo`."""

from __future__ import annotations

import asyncio
import sys
import uuid

from edpo.config import Settings


async def _smoke(settings: Settings) -> None:
    import asyncpg
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from edpo.camunda.engine import Engine

    token = uuid.uuid4().hex
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    meta = await producer.send_and_wait("dead-letters", key=b"smoke", value=token.encode())
    await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    from aiokafka import TopicPartition

    tp = TopicPartition(meta.topic, meta.partition)
    consumer.assign([tp])
    consumer.seek(tp, meta.offset)
    record = await consumer.getone()
    await consumer.stop()
    print(f"kafka     wrote and read back offset {meta.offset}: {record.value.decode() == token}")
    conn = await asyncpg.connect(settings.database_url)
    print(f"postgres  {await conn.fetchval('SELECT version()')}"[:80])
    await conn.close()
    async with Engine(settings.camunda_url) as engine:
        version = await engine.request("GET", "/version")
        print(f"camunda   engine {version['version']} at {settings.camunda_url}")


def run_demo(settings: Settings) -> int:
    asyncio.run(_smoke(settings))
    sys.stdout.flush()
    return 0
