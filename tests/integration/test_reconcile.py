"""Reconciliation on real PostgreSQL and Camunda: each repair of what a crash can leave between
orders, the inbox and process instances, and retention pruning.

Isolation: the Reconciler looks at every quiet open order of its database and every running
instance of its process key, so each test has a database of its own (the running order worker's
orders are never touched) and a process key of its own (own_process.py: no other test's or
worker's instances are seen, let alone ended).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from edpo.agents.order.bridge import ProcessBridge
from edpo.agents.order.inbox import record, start_row_id
from edpo.agents.order.reconcile import Reconciler
from edpo.camunda.engine import Engine
from edpo.config import Settings
from edpo.domain.lifecycle import (
    ACCEPTED,
    CANCELLED,
    DELIVERED,
    DELIVERY_FAILED,
    PLACED,
    RESERVED,
    SHIPPED,
    rank,
)
from edpo.models import (
    DeliveryFailed,
    FinishDelivery,
    Line,
    Message,
    OrderAccepted,
    ReserveStock,
    StockPartiallyReserved,
    StockReserved,
    new_id,
)
from edpo.topics import BY_NAME, delivery_commands_topic, warehouse_commands_topic
from tests.integration.own_database import own_database
from tests.integration.own_process import OwnProcess, own_process

QUIET = timedelta(hours=1)


@pytest.fixture
async def process(engine: Engine) -> AsyncIterator[OwnProcess]:
    async with own_process(engine, "reconcile") as p:
        yield p


@pytest.fixture
async def pool(servers: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with own_database(servers, "edpo_reconcile") as dsn:
        p = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            yield p
        finally:
            await p.close()


class Calls:
    def __init__(self) -> None:
        self.counts: list[tuple[str, int]] = []
        self.wakes = 0  # the bridge woken
        self.relay_wakes = 0  # the outbox relay woken

    def count(self, name: str, n: int) -> None:
        self.counts.append((name, n))

    def wake(self) -> None:
        self.wakes += 1

    def wake_relay(self) -> None:
        self.relay_wakes += 1


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def reconciler(pool: asyncpg.Pool, process: OwnProcess, calls: Calls) -> Reconciler:
    return Reconciler(pool, process.engine, process.key, grace=5.0, retention_hours=1.0,
                      count=calls.count, wake=calls.wake, wake_relay=calls.wake_relay)


@pytest.fixture
def bridge(servers: Settings, pool: asyncpg.Pool, process: OwnProcess) -> ProcessBridge:
    return ProcessBridge(servers, pool, process.engine, process.start_variables, process.deploy,
                         process_key=process.key)


async def _order(pool: asyncpg.Pool, status: str, *, quiet: bool = True, attempt: int = 0) -> str:
    """An order in `status`, last changed an hour ago (quiet) or just now."""
    order_id = f"rec-{new_id()[:12]}"
    await pool.execute(
        "INSERT INTO orders (order_id, customer_id, delivery_address, status, status_rank, created_at, updated_at)"
        " VALUES ($1, 'c', 'Main Street 1', $2, $3, now() - $4::interval, now() - $4::interval)",
        order_id, status, rank(status, attempt), QUIET if quiet else timedelta(0),
    )
    await pool.execute("INSERT INTO order_lines (order_id, line_no, sku, quantity) VALUES ($1, 0, 'A', 1)", order_id)
    return order_id


async def _record(pool: asyncpg.Pool, msg: Message) -> None:
    async with pool.acquire() as conn, conn.transaction():
        assert await record(conn, msg)


async def _row(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM process_inbox WHERE event_id = $1", event_id)


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _correlate(bridge: ProcessBridge, pool: asyncpg.Pool, event_id: str) -> None:
    async def done() -> bool:
        await bridge.work_once()
        row = await _row(pool, event_id)
        return row is not None and row["state"] == "correlated"

    await _until(done, f"inbox row {event_id} to correlate")


async def _start(process: OwnProcess, order_id: str) -> str:
    started = await process.engine.start_process(process.key, order_id, await process.start_variables(order_id))
    return started["id"]


async def _running(process: OwnProcess, order_id: str) -> list[str]:
    return [i["id"] for i in await process.engine.process_instances(process.key, order_id)]


def _nonzero(found: Counter[str]) -> dict[str, int]:
    return {k: n for k, n in found.items() if n}


# --- an accepted order without an instance ---------------------------------------------------------------


async def test_an_accepted_order_without_an_instance_gets_its_start_row_back(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge, calls: Calls
) -> None:
    never = await _order(pool, ACCEPTED)  # the start row was never written
    lost = await _order(pool, RESERVED)  # its start row was done, but no instance exists
    await _record(pool, OrderAccepted(source="test", order_id=lost))
    await pool.execute("UPDATE process_inbox SET state = 'correlated', done_at = now(), attempts = 3"
                       " WHERE event_id = $1", start_row_id(lost))
    busy = await _order(pool, ACCEPTED, quiet=False)  # within the grace period: left alone
    placed = await _order(pool, PLACED)  # not accepted yet: nothing should run
    delivered = await _order(pool, DELIVERED)  # final: nothing should run

    found = await reconciler.run_once()

    assert _nonzero(found) == {"missing_instance": 2}, found
    assert ("reconcile_missing_instance", 2) in calls.counts, calls.counts
    assert calls.wakes >= 1, "the bridge is woken"
    for order_id in (never, lost):
        row = await _row(pool, start_row_id(order_id))
        assert row is not None, order_id
        assert (row["state"], row["attempts"], row["done_at"]) == ("pending", 0, None), dict(row)
        assert row["message_name"] == "start"
    # The revived row says why (a row inserted afresh carries no such note: see the report).
    assert (await _row(pool, start_row_id(lost)))["last_error"] == "reconciliation: no process instance"
    for order_id in (busy, placed, delivered):
        assert await _row(pool, start_row_id(order_id)) is None, order_id

    # The bridge starts the instances; the next round finds nothing to repair.
    await _correlate(bridge, pool, start_row_id(never))
    await _correlate(bridge, pool, start_row_id(lost))
    assert len(await _running(process, never)) == 1 and len(await _running(process, lost)) == 1
    calls.counts.clear()
    assert _nonzero(await reconciler.run_once()) == {}
    assert calls.counts == []
    for order_id in (busy, placed, delivered):
        assert await process.engine.history_instances(process.key, order_id) == []


async def test_an_open_order_whose_instance_ended_is_reported_not_restarted(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, calls: Calls
) -> None:
    order_id = await _order(pool, ACCEPTED)
    await process.engine.delete_instance(await _start(process, order_id))

    found = await reconciler.run_once()

    assert _nonzero(found) == {"ended_instance_open_order": 1}, found
    assert calls.counts == [("reconcile_ended_instance_open_order", 1)]
    assert await _row(pool, start_row_id(order_id)) is None
    assert await _running(process, order_id) == []


# --- an instance that still waits for a correlated message -----------------------------------------------


async def test_a_correlation_that_did_not_take_effect_is_made_pending_again(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge, calls: Calls
) -> None:
    order_id = await _order(pool, ACCEPTED)
    await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlate(bridge, pool, start_row_id(order_id))
    [instance] = await _running(process, order_id)
    await process.complete("reserve-stock", order_id)
    await _until(lambda: _waits_for(process, instance, "StockReserved"), "the instance to wait for StockReserved")

    # The inbox says StockReserved was correlated, yet the instance still waits for it.
    reserved = StockReserved(source="test", order_id=order_id)
    await _record(pool, reserved)
    await pool.execute("UPDATE process_inbox SET state = 'correlated', done_at = now(), attempts = 1"
                       " WHERE event_id = $1", reserved.id)

    found = await reconciler.run_once()

    assert _nonzero(found) == {"lost_correlation": 1}, found
    assert calls.counts == [("reconcile_lost_correlation", 1)]
    assert calls.wakes >= 1
    row = await _row(pool, reserved.id)
    assert row is not None
    assert (row["state"], row["attempts"], row["done_at"]) == ("pending", 0, None), dict(row)
    assert row["last_error"] == "reconciliation: the instance still waits for it"

    # Idempotent: a second round before the bridge ran changes and counts nothing.
    assert _nonzero(await reconciler.run_once()) == {}

    # The bridge correlates it now: the instance moves on to packing; nothing left to repair.
    await _correlate(bridge, pool, reserved.id)
    await process.complete("pack-goods", order_id)
    calls.counts.clear()
    assert _nonzero(await reconciler.run_once()) == {}
    assert calls.counts == []
    assert await _running(process, order_id) == [instance]


async def _waits_for(process: OwnProcess, instance_id: str, message: str) -> bool:
    return message in await process.engine.waiting_messages(instance_id)


async def test_a_previous_delivery_attempts_outcome_is_not_recorrelated(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge
) -> None:
    """Attempt 1 failed (correlated), attempt 2 is under way: the instance waits for
    DeliveryFailed again, but for attempt 2; attempt 1's row did take effect."""
    order_id = await _order(pool, SHIPPED, attempt=2)
    await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlate(bridge, pool, start_row_id(order_id))
    [instance] = await _running(process, order_id)
    await process.complete("reserve-stock", order_id)
    reserved = StockReserved(source="test", order_id=order_id)
    await _record(pool, reserved)
    await _correlate(bridge, pool, reserved.id)
    await process.complete("pack-goods", order_id)
    await process.complete("start-delivery", order_id, {"delivery_attempt": 1})
    failed = DeliveryFailed(source="test", order_id=order_id, attempt=1, reason="nobody home")
    await _record(pool, failed)
    await _correlate(bridge, pool, failed.id)
    await process.complete("start-delivery", order_id, {"delivery_attempt": 2})  # the retry
    await _until(lambda: _waits_for(process, instance, "DeliveryFailed"), "the wait for attempt 2's outcome")

    found = await reconciler.run_once()

    row = await _row(pool, failed.id)
    assert row is not None
    assert (found["lost_correlation"], row["state"]) == (0, "correlated"), (dict(found), dict(row))


# --- an instance that waits for an event the inbox never got: its source is asked again ---------------------


async def _outbox(pool: asyncpg.Pool) -> list[tuple[asyncpg.Record, Message]]:
    """Every outbox row with its message, decoded as the relay's receiver would (by its topic)."""
    rows = await pool.fetch("SELECT * FROM outbox ORDER BY created_at, message_id")
    return [(r, BY_NAME[r["topic"]].decode(bytes(r["payload"]))) for r in rows]


async def _to_stock_wait(pool: asyncpg.Pool, process: OwnProcess, bridge: ProcessBridge, order_id: str) -> str:
    """Start the order's instance through the bridge and reserve: it waits for the reservation result."""
    await _record(pool, OrderAccepted(source="test", order_id=order_id))
    await _correlate(bridge, pool, start_row_id(order_id))
    [instance] = await _running(process, order_id)
    await process.complete("reserve-stock", order_id)
    await _until(lambda: _waits_for(process, instance, "StockReserved"), "the instance to wait for StockReserved")
    return instance


async def _to_delivery_wait(pool: asyncpg.Pool, process: OwnProcess, bridge: ProcessBridge, order_id: str,
                            attempt: int) -> str:
    """Walk the instance to the outcome of delivery attempt `attempt`, earlier attempts failed (correlated)."""
    instance = await _to_stock_wait(pool, process, bridge, order_id)
    reserved = StockReserved(source="test", order_id=order_id)
    await _record(pool, reserved)
    await _correlate(bridge, pool, reserved.id)
    await process.complete("pack-goods", order_id)
    for n in range(1, attempt):
        await process.complete("start-delivery", order_id, {"delivery_attempt": n})
        failed = DeliveryFailed(source="test", order_id=order_id, attempt=n, reason="nobody home")
        await _record(pool, failed)
        await _correlate(bridge, pool, failed.id)
    await process.complete("start-delivery", order_id, {"delivery_attempt": attempt})
    await _until(lambda: _waits_for(process, instance, "DeliveryCompleted"),
                 f"the wait for attempt {attempt}'s outcome")
    assert await process.engine.variable(instance, "delivery_attempt") == attempt
    return instance


async def test_an_unheard_reservation_result_is_asked_for_again_with_the_orders_lines(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge, calls: Calls
) -> None:
    order_id = await _order(pool, ACCEPTED)
    await pool.execute("INSERT INTO order_lines (order_id, line_no, sku, quantity) VALUES ($1, 1, 'B', 3)", order_id)
    await pool.execute("UPDATE orders SET trace_id = 'trace-of-' || order_id WHERE order_id = $1", order_id)
    instance = await _to_stock_wait(pool, process, bridge, order_id)
    # The warehouse's answer never reached the inbox (lost upstream): no row for either result.
    names = {r["message_name"] for r in await pool.fetch(
        "SELECT message_name FROM process_inbox WHERE order_id = $1", order_id)}
    assert names == {"start"}, names
    assert await _outbox(pool) == []
    wakes = calls.wakes

    found = await reconciler.run_once()

    assert _nonzero(found) == {"asked_again": 1}, found
    assert calls.counts == [("reconcile_asked_again", 1)]
    assert calls.relay_wakes == 1, "the relay is woken to send the question"
    assert calls.wakes == wakes, "nothing new for the bridge"
    [(row, ask)] = await _outbox(pool)
    assert isinstance(ask, ReserveStock), ask
    assert ask.order_id == order_id and ask.source == "order-reconciler"
    assert ask.lines == [Line(sku="A", quantity=1), Line(sku="B", quantity=3)], ask.lines
    assert ask.trace_id == f"trace-of-{order_id}"
    assert (row["topic"], row["key"], row["message_id"]) == (warehouse_commands_topic.name, order_id, ask.id)
    assert not row["is_command"], "an ask-again is sent once, not resent until answered as a command"
    assert row["acked_at"] is None
    # The inbox is left as it was: nothing to re-pend, no made-up rows.
    assert await pool.fetchval("SELECT count(*) FROM process_inbox WHERE order_id = $1", order_id) == 1

    # The warehouse re-announces its result; once correlated, nothing is asked any more.
    reserved = StockReserved(source="warehouse", order_id=order_id)
    await _record(pool, reserved)
    await _correlate(bridge, pool, reserved.id)
    await process.complete("pack-goods", order_id)
    calls.counts.clear()
    assert _nonzero(await reconciler.run_once()) == {}
    assert calls.counts == [] and calls.relay_wakes == 1
    assert len(await _outbox(pool)) == 1
    assert await _running(process, order_id) == [instance]


async def test_an_order_waiting_for_the_rest_of_its_stock_asks_again_without_recorrelating_the_partial(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge, calls: Calls
) -> None:
    """StockPartiallyReserved took effect; the instance now waits (alone) for StockReserved."""
    order_id = await _order(pool, ACCEPTED)
    instance = await _to_stock_wait(pool, process, bridge, order_id)
    partial = StockPartiallyReserved(source="test", order_id=order_id, missing=[Line(sku="A", quantity=1)])
    await _record(pool, partial)
    await _correlate(bridge, pool, partial.id)
    await process.complete("request-replenishment", order_id)

    async def waits_for_stock_only() -> bool:
        return sorted(await process.engine.waiting_messages(instance)) == ["CancelRequested", "StockReserved"]

    await _until(waits_for_stock_only, "the wait for the rest of the stock")

    found = await reconciler.run_once()

    assert _nonzero(found) == {"asked_again": 1}, found
    assert calls.relay_wakes == 1
    [(_, ask)] = await _outbox(pool)
    assert isinstance(ask, ReserveStock) and ask.order_id == order_id, ask
    assert ask.lines == [Line(sku="A", quantity=1)]
    row = await _row(pool, partial.id)
    assert row is not None and row["state"] == "correlated", dict(row)


async def test_an_unheard_delivery_outcome_is_asked_for_again_for_the_current_attempt(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge, calls: Calls
) -> None:
    """Attempt 1 failed (its row correlated), attempt 2 is under way and its outcome never arrived:
    the courier is asked to finish attempt 2, and attempt 1's row stays done."""
    order_id = await _order(pool, SHIPPED, attempt=2)
    await pool.execute("UPDATE orders SET trace_id = 'trace-of-' || order_id WHERE order_id = $1", order_id)
    instance = await _to_delivery_wait(pool, process, bridge, order_id, attempt=2)
    failed_1 = await pool.fetchrow("SELECT * FROM process_inbox WHERE order_id = $1 AND message_name = 'DeliveryFailed'",
                                   order_id)
    assert failed_1["state"] == "correlated"

    found = await reconciler.run_once()

    assert _nonzero(found) == {"asked_again": 1}, found
    assert calls.counts == [("reconcile_asked_again", 1)]
    assert calls.relay_wakes == 1
    [(row, ask)] = await _outbox(pool)
    assert isinstance(ask, FinishDelivery), ask
    assert (ask.order_id, ask.attempt, ask.source) == (order_id, 2, "order-reconciler"), ask
    assert ask.trace_id == f"trace-of-{order_id}"
    assert (row["topic"], row["key"], row["is_command"]) == (delivery_commands_topic.name, order_id, False)
    assert (await _row(pool, failed_1["event_id"]))["state"] == "correlated", "attempt 1's outcome stays done"
    assert await _running(process, order_id) == [instance]


@pytest.mark.parametrize("stage", ["stock", "delivery"])
async def test_a_correlated_row_the_instance_still_waits_for_is_recorrelated_and_nothing_is_asked(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, bridge: ProcessBridge, calls: Calls,
    stage: str
) -> None:
    """The inbox got the event (marked correlated, yet the instance still waits at its event-based
    gateway): the row is made pending again; its source need not be asked, not even for the
    gateway's other message."""
    if stage == "stock":
        order_id = await _order(pool, ACCEPTED)
        await _to_stock_wait(pool, process, bridge, order_id)
        event: Message = StockReserved(source="test", order_id=order_id)
    else:
        order_id = await _order(pool, SHIPPED, attempt=1)
        await _to_delivery_wait(pool, process, bridge, order_id, attempt=1)
        event = DeliveryFailed(source="test", order_id=order_id, attempt=1, reason="nobody home")
    await _record(pool, event)
    await pool.execute("UPDATE process_inbox SET state = 'correlated', done_at = now(), attempts = 1"
                       " WHERE event_id = $1", event.id)

    found = await reconciler.run_once()

    row = await _row(pool, event.id)
    assert row is not None and row["state"] == "pending", dict(row)
    asked = [m for _, m in await _outbox(pool)]
    assert (_nonzero(found), asked, calls.relay_wakes) == ({"lost_correlation": 1}, [], 0), (found, asked)
    assert calls.counts == [("reconcile_lost_correlation", 1)]


# --- instances that should not run -------------------------------------------------------------------------


async def test_an_instance_of_a_final_order_is_ended(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, calls: Calls
) -> None:
    delivered = await _order(pool, DELIVERED)
    cancelled = await _order(pool, CANCELLED)
    just_delivered = await _order(pool, DELIVERED, quiet=False)  # its instance may be ending by itself
    running = await _order(pool, DELIVERY_FAILED, attempt=1)  # open: its instance must stay
    ids = {o: await _start(process, o) for o in (delivered, cancelled, just_delivered, running)}

    found = await reconciler.run_once()

    assert found["instance_of_final_order"] == 2, found
    assert ("reconcile_instance_of_final_order", 2) in calls.counts, calls.counts
    assert await _running(process, delivered) == []
    assert await _running(process, cancelled) == []
    assert await _running(process, just_delivered) == [ids[just_delivered]]
    assert await _running(process, running) == [ids[running]]
    [ended] = await process.engine.history_instances(process.key, delivered)
    assert ended["state"] == "EXTERNALLY_TERMINATED", ended


async def test_of_two_instances_for_one_order_the_later_is_ended(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, calls: Calls
) -> None:
    order_id = await _order(pool, ACCEPTED)
    first = await _start(process, order_id)
    second = await _start(process, order_id)
    single = await _order(pool, ACCEPTED)
    alone = await _start(process, single)
    started = {h["id"]: h["startTime"] for h in await process.engine.history_instances(process.key, order_id)}
    assert started[first] < started[second], started  # the precondition of "the later one"

    found = await reconciler.run_once()

    assert _nonzero(found) == {"duplicate_instance": 1}, found
    assert calls.counts == [("reconcile_duplicate_instance", 1)]
    assert await _running(process, order_id) == [first]
    assert await _running(process, single) == [alone]
    # The survivor is not mistaken for a missing instance in the same round, nor in the next.
    assert await _row(pool, start_row_id(order_id)) is None
    assert _nonzero(await reconciler.run_once()) == {}


# --- retention -----------------------------------------------------------------------------------------------


async def test_old_finished_rows_are_pruned_recent_and_open_ones_kept(
    pool: asyncpg.Pool, reconciler: Reconciler, calls: Calls
) -> None:
    old, recent = timedelta(hours=2), timedelta(minutes=10)  # retention: 1 hour
    inbox = {  # event id: (state, done_at age or None, pruned?)
        "old-correlated": ("correlated", old, True),
        "old-discarded": ("discarded", old, True),
        "recent-correlated": ("correlated", recent, False),
        "old-dead": ("dead", old, False),  # dead letters stay for inspection and replay
        "old-pending": ("pending", None, False),
    }
    for event_id, (state, age, _) in inbox.items():
        await pool.execute(
            "INSERT INTO process_inbox (event_id, order_id, message_name, state, received_at, done_at)"
            " VALUES ($1, 'o', 'StockReserved', $2, now() - interval '3 hours', now() - $3::interval)",
            event_id, state, age,
        )
    await pool.execute("UPDATE process_inbox SET done_at = NULL WHERE event_id = 'old-pending'")
    outbox = {  # message id: (acked_at age or None, pruned?)
        "old-acked": (old, True),
        "recent-acked": (recent, False),
        "old-unacked-command": (None, False),
    }
    for message_id, (age, _) in outbox.items():
        await pool.execute(
            "INSERT INTO outbox (message_id, topic, key, payload, is_command, created_at, acked_at)"
            " VALUES ($1, 'order-events', 'o', '\\x7b7d'::bytea, $2, now() - interval '3 hours',"
            " now() - $3::interval)",
            message_id, age is None, age,
        )
    await pool.execute("UPDATE outbox SET acked_at = NULL WHERE message_id = 'old-unacked-command'")

    found = await reconciler.run_once()

    assert found["pruned_rows"] == 3, found
    assert {r["event_id"] for r in await pool.fetch("SELECT event_id FROM process_inbox")} == {
        e for e, (_, _, pruned) in inbox.items() if not pruned}
    assert {r["message_id"] for r in await pool.fetch("SELECT message_id FROM outbox")} == {
        m for m, (_, pruned) in outbox.items() if not pruned}
    assert calls.counts == [], "pruning is routine, not a finding"
    assert (await reconciler.run_once())["pruned_rows"] == 0


async def test_healthy_long_waiting_orders_do_not_starve_the_repair_of_newer_ones(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edpo.agents.order import reconcile

    monkeypatch.setattr(reconcile, "BATCH", 2)
    for _ in range(2):  # the oldest open orders: instances running, nothing to repair
        healthy = await _order(pool, ACCEPTED)
        await pool.execute("UPDATE orders SET updated_at = now() - interval '1 day' WHERE order_id = $1", healthy)
        await _start(process, healthy)
    broken = await _order(pool, ACCEPTED)  # quiet for an hour, no instance

    found: Counter[str] = Counter()
    for _ in range(3):
        found += await reconciler.run_once()
    assert found["missing_instance"] >= 1, found
    assert await _row(pool, start_row_id(broken)) is not None


async def test_an_instance_listed_twice_by_overlapping_pages_is_not_ended(
    pool: asyncpg.Pool, process: OwnProcess, reconciler: Reconciler, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With more instances running than one page holds, instances starting and ending between
    # pages shift them: the same instance can come twice. It was taken for a duplicate and
    # ended (keeping itself), which left busy orders without their process (seen in a burst of 600).
    order_id = await _order(pool, ACCEPTED)
    only = await _start(process, order_id)
    listed = process.engine.active_instances

    async def overlapping(key: str, page: int = 500) -> list[dict[str, Any]]:
        found = await listed(key, page)
        return found + [i for i in found if i["id"] == only]

    monkeypatch.setattr(process.engine, "active_instances", overlapping)
    found = await reconciler.run_once()
    assert _nonzero(found) == {}, found
    assert await _running(process, order_id) == [only]
