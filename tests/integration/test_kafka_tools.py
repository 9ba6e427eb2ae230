"""`edpo kafka groups|topics|consume`: Kafka's own tools, run by the CLI against the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from edpo.config import Settings


def edpo_kafka(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `edpo kafka ARGS` as a user would (this checkout's edpo, the test's environment)."""
    return subprocess.run([sys.executable, "-m", "edpo.cli", "kafka", *args], check=False, capture_output=True, text=True,
                          timeout=120)


async def _topic_with_records(settings: Settings, records: list[tuple[str, str]], partitions: int = 2) -> str:
    topic = f"test-tools-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key.encode(), value=value.encode(), partition=0)
    finally:
        await producer.stop()
    return topic


async def test_consume_prints_a_record_produced_by_the_test_with_its_key(servers: Settings) -> None:
    marker = uuid.uuid4().hex
    topic = await _topic_with_records(servers, [("k-" + marker, '{"marker": "' + marker + '"}')])

    done = await asyncio.to_thread(edpo_kafka, "consume", topic, "--from-beginning", "--max", "1",
                                   "--", "--timeout-ms", "60000")

    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if marker in line]
    # print.timestamp and print.key: "CreateTime:<ms>\tkey\tvalue"
    created, key, value = line.split("\t")
    assert created.startswith("CreateTime:") and key == "k-" + marker and value == '{"marker": "' + marker + '"}'


async def test_groups_shows_a_consumer_groups_offsets_and_lag_per_partition(servers: Settings) -> None:
    topic = await _topic_with_records(servers, [(f"k{i}", f"v{i}") for i in range(5)])
    group = f"test-tools-group-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(bootstrap_servers=servers.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        # The group read two of partition 0's five records: lag 3 there.
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
    finally:
        await consumer.stop()

    done = await asyncio.to_thread(edpo_kafka, "groups", group)

    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    header = next(line for line in lines if "LAG" in line)
    for column in ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"):
        assert column in header, header
    rows = [dict(zip(header, line, strict=False)) for line in lines if line[:2] == [group, topic]]
    by_partition = {row["PARTITION"]: row for row in rows}
    assert by_partition["0"]["CURRENT-OFFSET"] == "2" and by_partition["0"]["LOG-END-OFFSET"] == "5"
    assert by_partition["0"]["LAG"] == "3"

    everyone = await asyncio.to_thread(edpo_kafka, "groups")
    assert everyone.returncode == 0, everyone.stderr
    assert group in everyone.stdout


async def test_topics_lists_every_topic_and_describes_one(servers: Settings) -> None:
    topic = await _topic_with_records(servers, [("k", "v")], partitions=3)

    listed = await asyncio.to_thread(edpo_kafka, "topics")
    described = await asyncio.to_thread(edpo_kafka, "topics", topic)

    assert listed.returncode == 0 and described.returncode == 0, listed.stderr + described.stderr
    assert topic in listed.stdout.split()
    assert f"Topic: {topic}" in described.stdout and "PartitionCount: 3" in described.stdout
    assert sum(1 for line in described.stdout.splitlines() if "Partition:" in line and "Leader:" in line) == 3


async def test_an_unknown_group_is_a_clear_error_not_a_stack_trace(servers: Settings) -> None:
    done = await asyncio.to_thread(edpo_kafka, "groups", f"no-such-group-{uuid.uuid4().hex[:8]}")

    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "GroupIdNotFoundException" in text and "not found" in text, text
    assert "\tat org.apache" not in text, "the tool's stack trace reached the user"
