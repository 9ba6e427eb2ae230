"""The process bridge on real PostgreSQL and Camunda: an event that arrives before the process
waits for it is kept until it matches, and a duplicate is stored once and correlated once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from edpo.agents.order.bridge import ProcessBridge
from edpo.agents.order.inbox import record, start_row_id
from edpo.agents.order.migrate import migrate
from edpo.camunda.engine import Engine
from edpo.config import Settings
from edpo.models import DeadLetter, OrderAccepted, StockReserved, encode
from edpo.topics import dead_letters_topic, route
from tests.integration.isolated_process import BPMN, DEPLOYMENT, KEY, QUIET_DEADLINES, TOPIC_PREFIX


@pytest.fixture
async def inbox_pool(servers: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: the running order service's bridge works off the shared inbox."""
    name = f"edpo_bridge_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host=servers.host, port=servers.pg_port, user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{name}" OWNER edpo')
    dsn = f"postgresql://edpo@{servers.host}:{servers.pg_port}/{name}"
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_early_event_waits_for_the_process_and_a_duplicate_correlates_once(
    servers: Settings, inbox_pool: asyncpg.Pool
) -> None:
    order_id = f"bridge-{uuid.uuid4().hex[:10]}"
    async with Engine.from_settings(servers) as engine:
        async def start_vars(oid: str) -> dict[str, Any]:
            return {"order_id": oid, "delivery_address": "Main Street 1", "lines": [{"sku": "A", "quantity": 1}],
                    "max_delivery_attempts": 3, "delivery_retry_backoff": "PT0S", "delivery_attempt": 0,
                    **QUIET_DEADLINES}

        async def deploy() -> None:
            await engine.deploy(DEPLOYMENT, BPMN)

        await deploy()
        bridge = ProcessBridge(servers, inbox_pool, engine, start_vars, deploy, process_key=KEY)

        async def state(event_id: str) -> str:
            return await inbox_pool.fetchval("SELECT state FROM process_inbox WHERE event_id = $1", event_id)

        async def tasks(topic: str) -> list[dict]:
            return await engine.request("GET", "/external-task",
                                        params={"topicName": TOPIC_PREFIX + topic, "businessKey": order_id})

        # 1. The warehouse's answer arrives before the process exists.
        early = StockReserved(source="test", order_id=order_id)
        async with inbox_pool.acquire() as conn:
            assert await record(conn, early)
        await bridge.work_once()
        assert await state(early.id) == "pending", "an unmatched event is kept, not failed"

        # 2. The order is accepted: the bridge starts the instance, which first reserves stock.
        accepted = OrderAccepted(source="test", order_id=order_id)
        async with inbox_pool.acquire() as conn:
            assert await record(conn, accepted)
        await _until(lambda: _work_then(bridge, state(start_row_id(order_id)), "correlated"), "process start")
        [instance] = await engine.process_instances(KEY, order_id)
        [reserve] = await _until(lambda: tasks("reserve-stock"), "reserve-stock task")
        locked = await engine.request("POST", "/external-task/fetchAndLock", json={
            "workerId": "bridge-test", "maxTasks": 1,
            "topics": [{"topicName": TOPIC_PREFIX + "reserve-stock", "lockDuration": 10000, "businessKey": order_id}]})
        assert locked[0]["id"] == reserve["id"]
        await engine.request("POST", f"/external-task/{reserve['id']}/complete", json={"workerId": "bridge-test"})

        # 3. Now the process waits; the early event, retried by the bridge, moves it on to packing.
        await _until(lambda: _work_then(bridge, state(early.id), "correlated"), "the early event to correlate")
        assert len(await _until(lambda: tasks("pack-goods"), "pack-goods task")) == 1

        # 4. The same event again is stored once; a second StockReserved (new id) finds no wait and
        #    stays pending while the instance runs: nothing fails and nothing moves twice.
        async with inbox_pool.acquire() as conn:
            assert not await record(conn, early)
            later = StockReserved(source="test", order_id=order_id)
            assert await record(conn, later)
        await bridge.work_once()
        assert await state(later.id) == "pending"
        assert await inbox_pool.fetchval("SELECT count(*) FROM process_inbox WHERE event_id = $1", early.id) == 1
        assert len(await tasks("pack-goods")) == 1
        assert await engine.process_instances(KEY, order_id) == [instance]

        # 5. Once the instance has ended, the leftover event is dead-lettered (kept for inspection):
        #    its row is 'dead' and a DeadLetter with the original event waits in the outbox.
        await engine.request("DELETE", f"/process-instance/{instance['id']}")
        await inbox_pool.execute("UPDATE process_inbox SET next_try_at = now() WHERE event_id = $1", later.id)
        await _until(lambda: _work_then(bridge, state(later.id), "dead"), "the leftover event to be dead-lettered")
        [letter] = await inbox_pool.fetch("SELECT payload FROM outbox WHERE topic = $1", dead_letters_topic.name)
        dead = msgspec.json.decode(bytes(letter["payload"]), type=DeadLetter)
        assert dead.payload == encode(later).decode() and dead.topic == route(later)[0].name, dead


async def _work_then(bridge: ProcessBridge, value: Awaitable[str], expected: str) -> bool:
    await bridge.work_once()
    return await value == expected
