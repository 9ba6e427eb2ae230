"""The process bridge's crash safety on real PostgreSQL and Camunda: one start row and one process
instance per order however many OrderAccepted and bridges there are, dead-lettering of events
that can no longer correlate, and revival of a dead row when its event is replayed.

Isolation: a database of the test's own (the running order worker's bridge works off the shared
inbox) and a process key of the run's own (own_process.py), driven through the library objects.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from edpo.agents.order.bridge import MAX_PENDING, ProcessBridge, effect_mark
from edpo.agents.order.inbox import record, start_row_id
from edpo.camunda.engine import Engine
from edpo.config import Settings
from edpo.models import (
    DeadLetter,
    DeliveryCompleted,
    DeliveryFailed,
    Message,
    OrderAccepted,
    StockReserved,
    encode,
    new_id,
)
from edpo.topics import dead_letters_topic, route
from tests.integration.own_database import own_database
from tests.integration.own_process import OwnProcess, own_process


@pytest.fixture
async def process(engine: Engine) -> AsyncIterator[OwnProcess]:
    async with own_process(engine, "bridge_rel") as p:
        yield p


@pytest.fixture
async def dsn(servers: Settings) -> AsyncIterator[str]:
    async with own_database(servers, "edpo_bridge_rel") as d:
        yield d


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


def _bridge(servers: Settings, pool: asyncpg.Pool, process: OwnProcess,
            start_variables: Callable[[str], Awaitable[Any]] | None = None) -> ProcessBridge:
    return ProcessBridge(servers, pool, process.engine, start_variables or process.start_variables, process.deploy,
                         process_key=process.key)


async def _record(pool: asyncpg.Pool, msg: Message) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        return await record(conn, msg)


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _row(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM process_inbox WHERE event_id = $1", event_id)


async def _dead_letters(pool: asyncpg.Pool) -> list[DeadLetter]:
    rows = await pool.fetch("SELECT topic, key, payload FROM outbox WHERE topic = $1 ORDER BY created_at",
                            dead_letters_topic.name)
    return [msgspec.json.decode(bytes(r["payload"]), type=DeadLetter) for r in rows]


def _order_id() -> str:
    return f"rel-{new_id()[:12]}"


# --- one start row, one instance ---------------------------------------------------------------------


async def test_two_order_accepted_with_different_ids_make_one_start_row(pool: asyncpg.Pool) -> None:
    order_id = _order_id()
    first = OrderAccepted(source="test", order_id=order_id)
    second = OrderAccepted(source="test", order_id=order_id)  # a re-emitted acceptance, a new id
    assert first.id != second.id
    assert await _record(pool, first)
    assert not await _record(pool, second), "the second OrderAccepted must not add a start row"
    rows = await pool.fetch("SELECT * FROM process_inbox WHERE order_id = $1", order_id)
    assert [r["event_id"] for r in rows] == [start_row_id(order_id)] == [f"start:{order_id}"]
    [row] = rows
    assert row["message_name"] == "start" and row["state"] == "pending"
    assert json.loads(row["payload"]) == json.loads(encode(first)), "the first event's payload is kept"


async def test_every_wanted_event_keeps_its_payload(pool: asyncpg.Pool) -> None:
    order_id = _order_id()
    event = DeliveryCompleted(source="test", order_id=order_id, attempt=2)
    assert await _record(pool, event)
    row = await _row(pool, event.id)
    assert row["payload"] == encode(event).decode()
    assert json.loads(row["correlation"]) == {"delivery_attempt": 2}


async def test_two_bridges_on_one_inbox_start_one_instance_per_order(
    servers: Settings, pool: asyncpg.Pool, dsn: str, process: OwnProcess
) -> None:
    orders = [_order_id() for _ in range(4)]
    for order_id in orders:
        assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
        assert not await _record(pool, OrderAccepted(source="test", order_id=order_id))

    # Each bridge with its own pool, as two order workers would have.
    other_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        calls: list[tuple[str, str]] = []
        held = asyncio.Event()

        def vars_of(name: str) -> Callable[[str], Awaitable[dict[str, Any]]]:
            async def start_variables(order_id: str) -> dict[str, Any]:
                calls.append((name, order_id))
                if name == "a":
                    await held.wait()  # bridge a holds its rows locked until bridge b has looked
                return await process.start_variables(order_id)
            return start_variables

        a = _bridge(servers, pool, process, vars_of("a"))
        b = _bridge(servers, other_pool, process, vars_of("b"))

        # 1. Deterministic overlap: a has locked the rows and is starting; b finds nothing to do.
        first = asyncio.create_task(a.work_once())
        await _until(lambda: _true(bool(calls)), "bridge a to start working")
        assert await b.work_once() is False
        held.set()
        await first
        assert sorted(o for _, o in calls) == sorted(orders) and {n for n, _ in calls} == {"a"}, calls

        # 2. Free-running: both bridges, several rounds at once, rows made due again in between
        #    (as reconciliation would). Starting is idempotent: still one instance per order.
        await pool.execute("UPDATE process_inbox SET state = 'pending', next_try_at = now()")
        for _ in range(3):
            await asyncio.gather(a.work_once(), b.work_once(), a.work_once(), b.work_once())
            await pool.execute("UPDATE process_inbox SET state = 'pending', next_try_at = now()")
        await asyncio.gather(a.work_once(), b.work_once())
    finally:
        await other_pool.close()

    for order_id in orders:
        history = await process.engine.history_instances(process.key, order_id)
        assert len(history) == 1, (order_id, history)
        row = await _row(pool, start_row_id(order_id))
        assert row["state"] == "correlated", dict(row)
        assert row["last_error"] == "an instance existed already", dict(row)
    assert len(calls) == len(orders), f"start variables fetched for existing instances: {calls}"


async def _true(value: bool) -> bool:
    return value


async def test_a_start_row_left_pending_after_the_instance_started_is_correlated_without_a_second_start(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    """A worker killed after starting the instance but before committing the row (after_start)."""
    order_id = _order_id()
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await process.engine.start_process(process.key, order_id, await process.start_variables(order_id))
    await _bridge(servers, pool, process).work_once()
    row = await _row(pool, start_row_id(order_id))
    assert (row["state"], row["last_error"]) == ("correlated", "an instance existed already")
    assert len(await process.engine.process_instances(process.key, order_id)) == 1


# --- dead letters and replays -------------------------------------------------------------------------


async def test_an_event_for_an_ended_instance_is_dead_lettered_and_a_replay_revives_it(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await bridge.work_once()
    [instance] = await process.engine.process_instances(process.key, order_id)
    await process.engine.delete_instance(instance["id"])  # the instance has ended

    late = DeliveryCompleted(source="test", order_id=order_id, attempt=1)
    assert await _record(pool, late)
    assert await _dead_letters(pool) == []
    await bridge.work_once()

    row = await _row(pool, late.id)
    assert row["state"] == "dead", dict(row)
    assert "has ended" in row["last_error"], row["last_error"]
    assert row["done_at"] is not None
    [letter] = await _dead_letters(pool)
    out = await pool.fetchrow("SELECT key, is_command, acked_at FROM outbox WHERE topic = $1", dead_letters_topic.name)
    assert out["key"] == order_id and not out["is_command"] and out["acked_at"] is None
    assert letter.payload == encode(late).decode(), "the original event, byte for byte"
    assert letter.topic == route(late)[0].name, "replayed to the topic it came from"
    assert letter.key == order_id
    assert "process bridge" in letter.reason and "has ended" in letter.reason, letter.reason
    assert letter.source == "order" and letter.attempts == 1

    # The same event arrives again (edpo dlq replay): the row is pending again, from scratch.
    assert await _record(pool, late)
    row = await _row(pool, late.id)
    assert (row["state"], row["attempts"], row["done_at"], row["last_error"]) == ("pending", 0, None, None), dict(row)
    assert await pool.fetchval("SELECT count(*) FROM process_inbox WHERE event_id = $1", late.id) == 1
    # ... and only a dead row is revived: a pending (or correlated) one is a plain duplicate.
    assert not await _record(pool, late)

    # Worked again, it fails the same way: dead again, with a second dead letter.
    await bridge.work_once()
    assert (await _row(pool, late.id))["state"] == "dead"
    assert len(await _dead_letters(pool)) == 2


async def test_a_correlated_row_is_not_revived_by_a_duplicate(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await bridge.work_once()
    await process.complete("reserve-stock", order_id)
    reserved = StockReserved(source="test", order_id=order_id)
    assert await _record(pool, reserved)

    async def correlated() -> bool:
        await bridge.work_once()
        return (await _row(pool, reserved.id))["state"] == "correlated"

    await _until(correlated, "StockReserved to correlate")
    assert not await _record(pool, reserved)
    assert (await _row(pool, reserved.id))["state"] == "correlated"
    assert await _dead_letters(pool) == []


async def test_an_event_nobody_waited_for_within_max_pending_is_dead_lettered(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    order_id = _order_id()  # no instance, ever
    stale, fresh = StockReserved(source="test", order_id=order_id), DeliveryCompleted(
        source="test", order_id=order_id, attempt=1)
    assert await _record(pool, stale) and await _record(pool, fresh)
    await pool.execute("UPDATE process_inbox SET received_at = now() - $2::interval WHERE event_id = $1",
                       stale.id, MAX_PENDING * 2)
    await _bridge(servers, pool, process).work_once()
    assert (await _row(pool, fresh.id))["state"] == "pending", "a young event keeps waiting"
    row = await _row(pool, stale.id)
    assert row["state"] == "dead" and "no process instance waited" in row["last_error"], dict(row)
    [letter] = await _dead_letters(pool)
    assert letter.payload == encode(stale).decode() and letter.topic == route(stale)[0].name


async def test_a_start_row_of_an_unknown_order_is_dead_lettered_with_the_order_accepted(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    order_id = _order_id()
    accepted = OrderAccepted(source="test", order_id=order_id)
    assert await _record(pool, accepted)

    async def unknown(_: str) -> None:
        return None

    await _bridge(servers, pool, process, unknown).work_once()
    row = await _row(pool, start_row_id(order_id))
    assert row["state"] == "dead" and "no such order" in row["last_error"], dict(row)
    assert await process.engine.history_instances(process.key, order_id) == []
    [letter] = await _dead_letters(pool)
    assert letter.payload == encode(accepted).decode() and letter.topic == route(accepted)[0].name
    # Replayed once the order exists: the start row is pending again and the instance starts.
    assert await _record(pool, accepted)
    await _bridge(servers, pool, process).work_once()
    assert (await _row(pool, start_row_id(order_id)))["state"] == "correlated"
    assert len(await process.engine.process_instances(process.key, order_id)) == 1


# --- a correlation whose answer was lost: the instance carries its mark ------------------------------


async def _correlated(bridge: ProcessBridge, pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    async def done() -> asyncpg.Record | None:
        await bridge.work_once()
        row = await _row(pool, event_id)
        return row if row["state"] == "correlated" else None

    return await _until(done, f"inbox row {event_id} to correlate")


async def _to_delivery(bridge: ProcessBridge, pool: asyncpg.Pool, process: OwnProcess, order_id: str) -> str:
    """Through the bridge to the outcome of delivery attempt 1; the instance's id."""
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlated(bridge, pool, start_row_id(order_id))
    [instance] = await process.engine.process_instances(process.key, order_id)
    await process.complete("reserve-stock", order_id)
    reserved = StockReserved(source="test", order_id=order_id)
    assert await _record(pool, reserved)
    await _correlated(bridge, pool, reserved.id)
    await process.complete("pack-goods", order_id)
    await process.complete("start-delivery", order_id, {"delivery_attempt": 1})

    async def waits() -> bool:
        return "DeliveryCompleted" in await process.engine.waiting_messages(instance["id"])

    await _until(waits, "the wait for attempt 1's outcome")
    return instance["id"]


async def _lose_the_answer(pool: asyncpg.Pool, event_id: str) -> None:
    """As if the worker died after the engine correlated but before the row was committed."""
    await pool.execute("UPDATE process_inbox SET state = 'pending', next_try_at = now(), done_at = NULL,"
                       " last_error = NULL WHERE event_id = $1", event_id)


async def test_a_correlation_that_ended_the_instance_is_not_dead_lettered_when_its_answer_was_lost(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    instance = await _to_delivery(bridge, pool, process, order_id)
    completed = DeliveryCompleted(source="test", order_id=order_id, attempt=1)
    assert await _record(pool, completed)
    row = await _correlated(bridge, pool, completed.id)
    assert effect_mark(row) == "edpo_event_DeliveryCompleted_1"
    # The correlation ended the instance and left its mark in the history.
    [ended] = await process.engine.history_instances(process.key, order_id)
    assert (ended["id"], ended["state"]) == (instance, "COMPLETED"), ended
    assert await process.engine.history_values([instance], "edpo_event_DeliveryCompleted_1") == [completed.id]
    attempts = row["attempts"]

    await _lose_the_answer(pool, completed.id)
    await bridge.work_once()

    row = await _row(pool, completed.id)
    assert (row["state"], row["last_error"]) == (
        "correlated", "took effect before (the instance carries its mark)"), dict(row)
    assert row["done_at"] is not None and row["attempts"] == attempts + 1
    assert await _dead_letters(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0

    # The converse: events that never took effect on the ended instance are still dead-lettered,
    # be it another attempt's outcome (another mark) or another event of the same message and
    # attempt (the mark names a different event).
    other_attempt = DeliveryFailed(source="test", order_id=order_id, attempt=2, reason="nobody home")
    stray = DeliveryCompleted(source="test", order_id=order_id, attempt=1)  # another id, same mark name
    assert stray.id != completed.id
    assert await _record(pool, other_attempt) and await _record(pool, stray)
    await bridge.work_once()
    for event in (other_attempt, stray):
        row = await _row(pool, event.id)
        assert row["state"] == "dead" and "has ended" in row["last_error"], dict(row)
    assert sorted(letter.payload for letter in await _dead_letters(pool)) == sorted(
        encode(e).decode() for e in (other_attempt, stray))
    assert (await _row(pool, completed.id))["state"] == "correlated"


async def test_a_correlation_whose_instance_moved_on_is_not_left_pending_when_its_answer_was_lost(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    """Without the mark the row would wait (the instance runs) until MAX_PENDING, then be
    dead-lettered; with it, the row is done at once."""
    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlated(bridge, pool, start_row_id(order_id))
    [instance] = await process.engine.process_instances(process.key, order_id)
    await process.complete("reserve-stock", order_id)
    reserved = StockReserved(source="test", order_id=order_id)
    assert await _record(pool, reserved)
    row = await _correlated(bridge, pool, reserved.id)
    assert effect_mark(row) == "edpo_event_StockReserved"
    assert await process.engine.variable(instance["id"], "edpo_event_StockReserved") == reserved.id
    # Moved on to packing: it only listens for a customer's cancellation, as every running instance does.
    assert await process.engine.waiting_messages(instance["id"]) == ["CancelRequested"], "moved on to packing"

    await _lose_the_answer(pool, reserved.id)
    await bridge.work_once()

    row = await _row(pool, reserved.id)
    assert (row["state"], row["last_error"]) == (
        "correlated", "took effect before (the instance carries its mark)"), dict(row)
    assert await _dead_letters(pool) == []
    [running] = await process.engine.process_instances(process.key, order_id)
    assert running["id"] == instance["id"]


async def test_news_for_a_final_order_whose_instance_ended_is_done_not_dead_lettered(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    """A courier's outcome racing a cancellation, or a cancellation of an order the warehouse
    rejected: nothing waits for it any more and nothing is lost, so no dead letter."""
    from edpo.agents.order.inbox import cancel_row_id, record_cancel

    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await bridge.work_once()
    [instance] = await process.engine.process_instances(process.key, order_id)
    await process.engine.delete_instance(instance["id"])
    await pool.execute("INSERT INTO orders (order_id, customer_id, delivery_address, status, status_rank)"
                       " VALUES ($1, 'c', 'a', 'CANCELLED', 9500)", order_id)
    late = DeliveryCompleted(source="test", order_id=order_id, attempt=1)
    assert await _record(pool, late)
    await bridge.work_once()
    row = await _row(pool, late.id)
    assert row["state"] == "correlated" and "CANCELLED" in row["last_error"], dict(row)

    rejected = _order_id()  # never had an instance
    await pool.execute("INSERT INTO orders (order_id, customer_id, delivery_address, status, status_rank)"
                       " VALUES ($1, 'c', 'a', 'REJECTED', 9500)", rejected)
    async with pool.acquire() as conn:
        await record_cancel(conn, rejected, "the customer cancelled it", "")
    await bridge.work_once()
    row = await _row(pool, cancel_row_id(rejected))
    assert row["state"] == "correlated" and "REJECTED" in row["last_error"], dict(row)
    assert await _dead_letters(pool) == []


async def test_an_event_never_overtakes_an_older_one_of_its_order_that_failed_for_a_technical_reason(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    """Found by kill -9 postgres: StockPartiallyReserved failed against an engine whose database
    had just restarted; StockReserved, which came later, went through first; the process skipped
    "Request replenishment" and the units it took from the queue were never made again, so the
    last order waiting for that SKU waited forever. Now the partial is held and goes first."""
    from edpo.models import Line, StockPartiallyReserved

    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlated(bridge, pool, start_row_id(order_id))
    await process.complete("reserve-stock", order_id)  # the instance waits: partial or full?

    partial = StockPartiallyReserved(source="test", order_id=order_id, missing=[Line(sku="A", quantity=2)])
    assert await _record(pool, partial)
    async with Engine.from_settings(servers, f"http://{servers.host}:9") as away:  # nothing listens: the engine is away
        broken = ProcessBridge(servers, pool, away, process.start_variables, process.deploy,
                               process_key=process.key)
        await broken.work_once()
    row = await _row(pool, partial.id)
    assert (row["state"], row["held"]) == ("pending", True), dict(row)

    full = StockReserved(source="test", order_id=order_id)  # came later; due now, the partial is not
    assert await _record(pool, full)
    await pool.execute("UPDATE process_inbox SET next_try_at = now() + interval '1 hour' WHERE event_id = $1",
                       partial.id)
    await bridge.work_once()
    row = await _row(pool, full.id)
    assert (row["state"], row["attempts"]) == ("pending", 0), "it waits behind the held partial"

    await pool.execute("UPDATE process_inbox SET next_try_at = now() WHERE event_id = $1", partial.id)
    row = await _correlated(bridge, pool, partial.id)
    assert not row["held"]
    await process.complete("request-replenishment", order_id)  # the process asked the factory
    await _correlated(bridge, pool, full.id)  # then the rest of the stock arrived
    await process.complete("pack-goods", order_id)
    [instance] = await process.engine.process_instances(process.key, order_id)
    passed = [a["activityId"] for a in await process.engine.activity_history(instance["id"])]
    assert "Task_RequestReplenishment" in passed and "Catch_WaitForStock" in passed, passed
    assert "Catch_StockReserved" not in passed, passed


async def test_stock_reserved_heard_without_its_partial_still_has_the_units_it_took_made_again(
    servers: Settings, pool: asyncpg.Pool, process: OwnProcess
) -> None:
    """Found by kill -9 postgres, a second way: the reserve-stock task's completion was lost, so
    its instance reached the reservation's wait only after both outcomes had arrived, and the
    later one (StockReserved) happened to go first. StockReserved names what the order lacked;
    the process asks the factory for it before packing."""
    from edpo.models import Line

    order_id = _order_id()
    bridge = _bridge(servers, pool, process)
    assert await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlated(bridge, pool, start_row_id(order_id))
    await process.complete("reserve-stock", order_id)
    full = StockReserved(source="test", order_id=order_id, short=[Line(sku="A", quantity=2)])
    assert await _record(pool, full)
    await _correlated(bridge, pool, full.id)
    [instance] = await process.engine.process_instances(process.key, order_id)
    assert json.loads(await process.engine.variable(instance["id"], "missing")) == [{"sku": "A", "quantity": 2}]
    await process.complete("request-replenishment", order_id)
    await process.complete("pack-goods", order_id)
    passed = [a["activityId"] for a in await process.engine.activity_history(instance["id"])]
    assert "Task_ReplaceTakenUnits" in passed and "Task_RequestReplenishment" not in passed, passed

    direct = _order_id()  # never short: straight to packing
    assert await _record(pool, OrderAccepted(source="test", order_id=direct))
    await _correlated(bridge, pool, start_row_id(direct))
    await process.complete("reserve-stock", direct)
    reserved = StockReserved(source="test", order_id=direct)
    assert await _record(pool, reserved)
    await _correlated(bridge, pool, reserved.id)
    await process.complete("pack-goods", direct)
