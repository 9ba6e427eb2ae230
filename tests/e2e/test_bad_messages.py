"""A service never dies on one bad message: undecodable records go to the dead-letter topic,
records of an unknown type are logged and skipped."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .conftest import Api, eventually

TOPIC = "warehouse-commands"


async def test_undecodable_command_is_dead_lettered_unknown_type_skipped_and_the_warehouse_keeps_working(
    api: Api,
) -> None:
    bootstrap = api.s.kafka_bootstrap
    marker = uuid.uuid4().hex
    unknown_type = f"FutureCommand{marker[:8]}"  # a name of its own: the log line skipping it is this record's
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

    records = {
        "not json": b"this is not json " + marker.encode(),
        "wrong field type": json.dumps({"type": "ReserveStock", "order_id": marker, "lines": "not-a-list"}).encode(),
        "tombstone": None,
        "unknown type": json.dumps({"type": unknown_type, "order_id": marker}).encode(),
        # Same key, so same partition, read after the unknown type: once its dead letter is
        # there, the warehouse has dealt with the unknown type too.
        "sentinel": b"sentinel, not json " + marker.encode(),
    }
    at: dict[str, tuple[int, int]] = {}  # record -> (partition, offset) on warehouse-commands
    try:
        for name, value in records.items():
            sent = await producer.send_and_wait(TOPIC, key=marker.encode(), value=value)
            at[name] = (sent.partition, sent.offset)
    finally:
        await producer.stop()
    assert len({p for p, _ in at.values()}) == 1
    assert [o for _, o in at.values()] == sorted(o for _, o in at.values())

    # Dead letters are keyed by the original key, so they share one dead-letters partition and
    # arrive in the order the warehouse wrote them: a letter for the unknown type would come
    # before the sentinel's.
    letters: dict[str, list[dict]] = {}
    by_position = {position: name for name, position in at.items()}
    try:
        async def collect() -> None:
            while "sentinel" not in letters:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for r in batch:
                        letter = json.loads(r.value)
                        name = by_position.get((letter.get("partition"), letter.get("offset")))
                        if letter.get("topic") == TOPIC and name:
                            letters.setdefault(name, []).append(letter)

        await asyncio.wait_for(collect(), 30)
    finally:
        await consumer.stop()

    assert "unknown type" not in letters, f"an unknown type was dead-lettered: {letters['unknown type']}"
    assert sorted(letters) == sorted(["not json", "wrong field type", "tombstone", "sentinel"])
    for name, [letter, *_] in letters.items():
        assert letter["key"] == marker, letter
        assert letter["reason"].startswith("undecodable"), letter
    assert letters["not json"][0]["payload"] == records["not json"].decode()  # type: ignore[union-attr]
    assert "lines" in letters["wrong field type"][0]["reason"]

    # ...it was logged and skipped, by the warehouse worker that read it.
    logs = sorted(api.s.log_dir.glob("worker-warehouse-*.log"))

    async def skip_logged() -> list[str]:
        return [line for log in logs for line in log.read_text(errors="replace").splitlines()
                if repr(unknown_type) in line]

    skipped = await eventually(skip_logged, bool, 10, f"the warehouse to log that it skipped {unknown_type}")
    assert len(skipped) == 1 and "skipped" in skipped[0] and TOPIC in skipped[0], skipped

    # ...and the warehouse still serves orders.
    await api.receive("CABLE", 1)
    order = await api.place([("CABLE", 1)])
    final = await api.wait_final(order["order_id"])
    assert final["status"] == "DELIVERED"
