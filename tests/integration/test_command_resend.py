"""Commands are resent with backoff until the real receiver answers: a delivery worker that loses the first two
sends of every command (EDPO_FAILPOINTS=delivery.before_handle=drop@1+2) handles the third, once, and its reply
answers the command.

The receiver is a real delivery worker (`edpo worker delivery`) started beside the stack's own, as the next free
instance; the command's order id is chosen so that the new worker owns its partition. The sender is the
services' CommandClient. What happened is read back from Kafka (every send of the command and every reply to it,
with their timestamps) and from the worker's log (each arrival it dropped).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from edpo.config import Settings
from edpo.dev.workers import spawn_worker, wait_ready, worker_process
from edpo.models import (
    DeliveryAccepted,
    DeliveryRejected,
    DeliveryWithdrawn,
    Message,
    StartDelivery,
    WithdrawDelivery,
    encode,
)
from edpo.runtime.commands import CommandClient
from edpo.topics import delivery_commands_topic, delivery_events_topic, route

# What services pass as EDPO_COMMAND_TIMEOUT, short here: sends at 0, T and T + 2T.
TIMEOUT = 2.0
DROPPED = 2  # the worker loses the first two arrivals of every message
SILENT = "no news, resend test"  # the courier never reports back: no DeliveryCompleted for an order nobody placed


class Sent(msgspec.Struct):
    """The envelope fields a test reads from any record."""

    id: str
    type: str
    correlation_id: str = ""


_sent = msgspec.json.Decoder(Sent)


@pytest.fixture
async def producer(servers: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=servers.kafka_bootstrap, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def _end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """The end offset of every partition of topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return await consumer.end_offsets([TopicPartition(topic, p["partition"]) for p in described["partitions"]])
    finally:
        await consumer.stop()


async def _records_since(bootstrap: str, start: dict[TopicPartition, int]) -> list[tuple[int, Sent]]:
    """(timestamp in ms, envelope) of every record written after start, up to the end as it is now."""
    end = await _end_offsets(bootstrap, next(iter(start)).topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[tuple[int, Sent]] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        behind = set(start)
        while behind:
            for records in (await consumer.getmany(*behind, timeout_ms=1000)).values():
                found += [(r.timestamp, _sent.decode(r.value)) for r in records if r.value]
            behind = {tp for tp in behind if await consumer.position(tp) < end[tp]}
    finally:
        await consumer.stop()
    return sorted(found, key=lambda found: found[0])


def _get(url: str, token: str) -> tuple[int, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def _order_owned_by(settings: Settings, url: str) -> str:
    """A fresh order id whose partition (of the deliveries table, hence of delivery-commands) the worker at url owns,
    as Faust's router (GET /router/TABLE/KEY/ of that worker) tells."""
    answers: list[int] = []
    for _ in range(200):
        order_id = f"resend-{uuid.uuid4().hex[:12]}"
        status, owner = _get(f"{url}/router/deliveries_by_order/{order_id}/", settings.api_token)
        if owner == url:
            return order_id
        answers.append(status)
        if status != 200:  # a rebalance under way: ask again in a moment
            time.sleep(0.5)
    raise AssertionError(f"no order id of 200 tried is owned by {url}; the router answered {sorted(set(answers))}")


async def test_a_command_whose_first_sends_are_lost_is_resent_with_backoff_and_handled_once(
    servers: Settings, producer: AIOKafkaProducer
) -> None:
    settings = servers
    # Instances from 7 up: other tests add workers as the next free instance, at the same time.
    instance = next(n for n in range(7, 30) if not worker_process(settings, "delivery", n).running())
    worker = worker_process(settings, "delivery", instance)
    url = f"http://{settings.host}:{settings.web_port('delivery', instance)}"
    log_from = worker.log_file.stat().st_size if worker.log_file.exists() else 0

    async def publish(*messages: Message, wait: bool = False) -> None:
        """What a service's publisher does: topic and key from the message's declaration."""
        for msg in messages:
            spec, key = route(msg)
            await producer.send_and_wait(spec.name, key=key.encode(), value=encode(msg))

    client = CommandClient(settings.kafka_bootstrap, publish, [delivery_events_topic], timeout=TIMEOUT,
                           attempts=DROPPED + 1)
    await client.start()
    # Without static membership the worker leaves the group when it stops: the stack's own delivery worker takes
    # its partitions back at once instead of after a session timeout.
    spawn_worker(settings, "delivery", instance, env={"EDPO_FAILPOINTS": f"delivery.before_handle=drop@1+{DROPPED}",
                                                      "EDPO_KAFKA_STATIC_MEMBERSHIP": "false"})
    try:
        await asyncio.to_thread(wait_ready, settings, [("delivery", instance)], timeout=settings.ready_timeout)
        order_id = await asyncio.to_thread(_order_owned_by, settings, url)
        commands_from = await _end_offsets(settings.kafka_bootstrap, delivery_commands_topic.name)
        replies_from = await _end_offsets(settings.kafka_bootstrap, delivery_events_topic.name)

        cmd = StartDelivery(order_id=order_id, attempt=1, delivery_address=SILENT, source="test")
        reply = await client.request(cmd, replies=(DeliveryAccepted, DeliveryRejected))

        # The acknowledgment answers this command.
        assert isinstance(reply, DeliveryAccepted), reply
        assert (reply.correlation_id, reply.order_id, reply.attempt) == (cmd.id, order_id, 1)

        # Sent three times, the later sends after the backoff: attempt n waited TIMEOUT * 2^(n-1).
        sends = [at for at, r in await _records_since(settings.kafka_bootstrap, commands_from) if r.id == cmd.id]
        assert len(sends) == DROPPED + 1, sends
        for n, (before, after) in enumerate(zip(sends, sends[1:]), start=1):
            waited, backoff = (after - before) / 1000, TIMEOUT * 2 ** (n - 1)
            assert backoff <= waited < 2 * backoff, f"send {n + 1} came {waited:.3f}s after send {n}, not {backoff}s"

        # The worker lost the first two arrivals and handled the third, once, after the last send.
        dropped = [int(n) for n in re.findall(rf"dropping StartDelivery {cmd.id} \(arrival (\d+)\)",
                                              worker.log_file.read_text(errors="replace")[log_from:])]
        assert dropped == [1, 2], dropped
        replies = [(at, r) for at, r in await _records_since(settings.kafka_bootstrap, replies_from)
                   if r.correlation_id == cmd.id]
        # One handling says two things, each once: the acknowledgment, and that the courier left.
        assert sorted(r.type for _, r in replies) == ["DeliveryAccepted", "DeliveryStarted"], replies
        assert all(at >= sends[-1] for at, _ in replies), (sends, replies)

        # The business effect happened once: one attempt, on its way.
        status, delivery = _get(f"{url}/deliveries/{order_id}", settings.api_token)
        assert status == 200 and isinstance(delivery, dict), (status, delivery)
        assert {n: a["status"] for n, a in delivery["attempts"].items()} == {"1": "in_transit"}

        # Call the silent courier back, so that the delivery is closed (and forgotten after the retention).
        withdrawn = await client.request(WithdrawDelivery(order_id=order_id, attempt=0, final=True, source="test"),
                                         replies=(DeliveryWithdrawn,))
        assert isinstance(withdrawn, DeliveryWithdrawn) and withdrawn.order_id == order_id
    finally:
        await client.stop()
        worker.stop()
        shutil.rmtree(settings.run_dir / "faust" / f"delivery-{instance}", ignore_errors=True)
