"""The order's status fold on real PostgreSQL: events late, twice and at once never move an
order backwards, write one history row per change and one OrderStatusChanged per change.

The order store runs against a database of its own on the project's PostgreSQL server, migrated
by the project's migrations (see own_database: in the shared database, the running order
service's relay would send the test orders' AcceptOrder to the real warehouse, and its bridge
and reconciler would act on the invented events).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from edpo.agents.order.store import OrderStore
from edpo.config import Settings
from edpo.domain.lifecycle import rank
from edpo.domain.order import NewOrder
from edpo.models import (
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryStarted,
    GoodsPacked,
    Line,
    Message,
    OrderAccepted,
    OrderCancelled,
    StockPartiallyReserved,
    StockReserved,
)
from tests.integration.own_database import own_database


@pytest.fixture
async def store(servers: Settings) -> AsyncIterator[OrderStore]:
    async with own_database(servers, "edpo_status") as dsn:
        store = OrderStore(dsn)
        try:
            await store.open()  # migrates (a no-op here) and opens the pool, as the order service does
            yield store
        finally:
            await store.close()


async def _new_order(store: OrderStore) -> str:
    order, created = await store.create(
        NewOrder(customer_id=f"it-{uuid.uuid4().hex[:6]}", delivery_address="Main Street 1",
                 items=[Line(sku="CABLE", quantity=1)]),
        None,
    )
    assert created and order["status"] == "PLACED"
    return order["order_id"]


async def _status(store: OrderStore, order_id: str) -> str:
    return (await store.get(order_id))["status"]  # type: ignore[index]


async def _history(store: OrderStore, order_id: str) -> list[tuple[str, str | None]]:
    """(status, event id) per history row, in the order they were written."""
    rows = await (await store.pool()).fetch(
        "SELECT status, event_id FROM order_history WHERE order_id = $1 ORDER BY id", order_id)
    return [(r["status"], r["event_id"]) for r in rows]


async def _status_changes(store: OrderStore, order_id: str) -> list[str]:
    """The statuses of the OrderStatusChanged events in the outbox for this order."""
    rows = await (await store.pool()).fetch("SELECT payload FROM outbox WHERE key = $1", order_id)
    messages = [json.loads(bytes(r["payload"])) for r in rows]
    return [m["status"] for m in messages if m["type"] == "OrderStatusChanged" and m["order_id"] == order_id]


async def _inbox(store: OrderStore, order_id: str) -> list[str]:
    """The ids of the events queued for the order's waiting process (not the row that starts it)."""
    rows = await (await store.pool()).fetch(
        "SELECT event_id FROM process_inbox WHERE order_id = $1 AND message_name <> 'start'", order_id)
    return [r["event_id"] for r in rows]


async def test_late_and_duplicate_events_never_move_the_stored_status_backwards(store: OrderStore) -> None:
    order_id = await _new_order(store)
    reserved = StockReserved(order_id=order_id)
    completed = DeliveryCompleted(order_id=order_id, attempt=1)
    # (event, the status it must leave the order in, whether it is a change)
    steps: list[tuple[Message, str, bool]] = [
        (OrderAccepted(order_id=order_id), "ACCEPTED", True),
        (reserved, "RESERVED", True),
        (reserved, "RESERVED", False),  # the same record read again (redelivery)
        (StockReserved(order_id=order_id), "RESERVED", False),  # the same fact from a retried producer
        (StockPartiallyReserved(order_id=order_id, missing=[Line(sku="CABLE", quantity=1)]), "RESERVED", False),
        (DeliveryStarted(order_id=order_id, attempt=1), "SHIPPED", True),
        (completed, "DELIVERED", True),  # overtakes GoodsPacked, read from another topic
        (GoodsPacked(order_id=order_id), "DELIVERED", False),
        (DeliveryFailed(order_id=order_id, attempt=1, reason="late"), "DELIVERED", False),
        (completed, "DELIVERED", False),
        (OrderCancelled(order_id=order_id, reason="too late"), "DELIVERED", False),  # DELIVERED is terminal
        (OrderAccepted(order_id=order_id), "DELIVERED", False),
    ]
    seen = [await _status(store, order_id)]
    for event, expected, changes in steps:
        status, _ = await store.record_event(event)
        assert status == (expected if changes else None), f"{event.type} returned {status}"
        seen.append(await _status(store, order_id))
        assert seen[-1] == expected, f"after {event.type}: {seen}"
    ranks = [rank(s, 1 if s == "SHIPPED" else 0) for s in seen]
    assert ranks == sorted(ranks), f"the status went backwards: {seen}"

    changes = ["ACCEPTED", "RESERVED", "SHIPPED", "DELIVERED"]
    history = await _history(store, order_id)
    assert [s for s, _ in history] == ["PLACED", *changes]
    assert [e for _, e in history[1:]] == [steps[0][0].id, reserved.id, steps[5][0].id, completed.id]
    assert sorted(await _status_changes(store, order_id)) == sorted(changes)
    # The process hears of each event it waits for (by id) once, however often it came.
    wanted = (StockReserved, StockPartiallyReserved, DeliveryCompleted, DeliveryFailed)
    assert sorted(await _inbox(store, order_id)) == sorted({e.id for e, _, _ in steps if isinstance(e, wanted)})


async def test_a_failed_attempt_read_before_its_start_is_not_undone_by_it(store: OrderStore) -> None:
    """Ranks by attempt: DELIVERY_FAILED 1 > SHIPPED 1, so the late start of attempt 1 is ignored."""
    order_id = await _new_order(store)
    for event in (OrderAccepted(order_id=order_id), StockReserved(order_id=order_id), GoodsPacked(order_id=order_id)):
        await store.record_event(event)
    failed = DeliveryFailed(order_id=order_id, attempt=1, reason="nobody home")
    assert (await store.record_event(failed))[0] == "DELIVERY_FAILED"
    assert (await store.record_event(DeliveryStarted(order_id=order_id, attempt=1)))[0] is None
    assert await _status(store, order_id) == "DELIVERY_FAILED"
    assert (await store.record_event(DeliveryStarted(order_id=order_id, attempt=2)))[0] == "SHIPPED"
    assert (await store.record_event(failed))[0] is None
    assert await _status(store, order_id) == "SHIPPED"

    history = await _history(store, order_id)
    statuses = ["PLACED", "ACCEPTED", "RESERVED", "PACKED", "DELIVERY_FAILED", "SHIPPED"]
    assert [s for s, _ in history] == statuses
    assert sorted(await _status_changes(store, order_id)) == sorted(statuses[1:])
    detail = await (await store.pool()).fetchval(
        "SELECT detail FROM order_history WHERE order_id = $1 AND status = 'DELIVERY_FAILED'", order_id)
    assert detail == "nobody home"


async def test_every_event_of_an_order_applied_at_once_and_twice_still_folds_to_one_change_each(
    store: OrderStore,
) -> None:
    """All events of each order, each twice (same id) and once more (new id), in random order,
    concurrently: the row lock must serialise them, else two see the same rank and both write."""
    rng = random.Random(7)
    orders = [await _new_order(store) for _ in range(8)]

    def events(order_id: str) -> list[Message]:
        once = [OrderAccepted(order_id=order_id),
                StockPartiallyReserved(order_id=order_id, missing=[Line(sku="CABLE", quantity=1)]),
                StockReserved(order_id=order_id), GoodsPacked(order_id=order_id),
                DeliveryStarted(order_id=order_id, attempt=1), DeliveryCompleted(order_id=order_id, attempt=1)]
        again = [type(e)(**{f: getattr(e, f) for f in e.__struct_fields__ if f not in ("id", "time")}) for e in once]
        all_ = once + once + again
        rng.shuffle(all_)
        return all_

    batches = {order_id: events(order_id) for order_id in orders}
    results = await asyncio.gather(*(store.record_event(e) for batch in batches.values() for e in batch))
    changed = [status for status, _ in results if status]

    order_of = ["PLACED", "ACCEPTED", "AWAITING_STOCK", "RESERVED", "PACKED", "SHIPPED", "DELIVERED"]
    for order_id in orders:
        assert await _status(store, order_id) == "DELIVERED", order_id
        history = [s for s, _ in await _history(store, order_id)]
        assert history[0] == "PLACED" and history[-1] == "DELIVERED", history
        assert len(history) == len(set(history)), f"a status was written twice: {history}"
        assert [order_of.index(s) for s in history] == sorted(order_of.index(s) for s in history), \
            f"the history goes backwards: {history}"
        assert Counter(await _status_changes(store, order_id)) == Counter(history[1:]), order_id
    stored = [len(await _history(store, order_id)) - 1 for order_id in orders]
    assert len(changed) == sum(stored), \
        "record_event reported a change that was not stored, or stored one it did not report"


async def test_cancellation_is_accepted_until_shipped_once_however_often_asked(store: OrderStore) -> None:
    """POST /orders/{id}/cancel's decision on real PostgreSQL: accepted while nothing shipped,
    one inbox row for the process however many concurrent requests, refused with the reason
    once the courier has the goods or the order is final."""
    assert await store.request_cancel("no-such-order", "the customer cancelled it") == ("unknown", None)

    waiting = await _new_order(store)
    await store.record_event(OrderAccepted(source="test", order_id=waiting))
    await store.record_event(StockPartiallyReserved(source="test", order_id=waiting,
                                                    missing=[Line(sku="CABLE", quantity=1)]))
    answers = await asyncio.gather(*(store.request_cancel(waiting, "the customer cancelled it") for _ in range(8)))
    assert {outcome for outcome, _ in answers} == {"accepted"}
    assert len({order["cancel_requested_at"] for _, order in answers}) == 1  # type: ignore[index]
    rows = await (await store.pool()).fetch(
        "SELECT message_name, variables FROM process_inbox WHERE event_id = $1", f"cancel:{waiting}")
    assert [r["message_name"] for r in rows] == ["CancelRequested"]
    sent = json.loads(rows[0]["variables"])
    assert sent["cancel_reason"] == "the customer cancelled it" and "AWAITING_STOCK" in sent["order_history"]
    assert await _status(store, waiting) == "AWAITING_STOCK"  # CANCELLED only once the process compensated
    await store.cancel(waiting, "the customer cancelled it", "order")
    outcome, found = await store.request_cancel(waiting, "the customer cancelled it")
    assert outcome == "conflict" and found == {"reason": "the order is cancelled already", "status": "CANCELLED"}

    shipped = await _new_order(store)
    for event in (OrderAccepted(source="test", order_id=shipped), StockReserved(source="test", order_id=shipped),
                  GoodsPacked(source="test", order_id=shipped), DeliveryStarted(source="test", order_id=shipped,
                                                                                attempt=1)):
        await store.record_event(event)
    outcome, found = await store.request_cancel(shipped, "the customer cancelled it")
    assert outcome == "conflict" and found["status"] == "SHIPPED" and "courier" in found["reason"]  # type: ignore[index]
    # Between attempts (the courier came back) the goods are in the warehouse again: cancellable.
    await store.record_event(DeliveryFailed(source="test", order_id=shipped, attempt=1, reason="nobody home"))
    assert (await store.request_cancel(shipped, "the customer cancelled it"))[0] == "accepted"
    assert await (await store.pool()).fetchval(
        "SELECT count(*) FROM process_inbox WHERE order_id = ANY($1) AND message_name = 'CancelRequested'",
        [waiting, shipped]) == 2
