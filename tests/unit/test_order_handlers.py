"""The order service's handlers over its store: what they record, and whom they wake."""

from __future__ import annotations

import pytest

from edpo.agents.order.handlers import LIFECYCLE_TOPICS, Orders
from edpo.domain.order import NewOrder
from edpo.models import (
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryRejected,
    DeliveryStarted,
    DeliveryWithdrawn,
    GoodsPacked,
    GoodsPicked,
    GoodsShipped,
    Line,
    Message,
    OrderAccepted,
    OrderRejected,
    PackingRejected,
    ReservationAccepted,
    StockPartiallyReserved,
    StockReleased,
    StockReserved,
)
from tests.unit.fakes import FakeOrderStore, external_task

ORDER = "o-1"


def orders_over(store: FakeOrderStore) -> Orders:
    return Orders(store)


def woken(orders: Orders) -> tuple[bool, bool]:
    """(relay woken, bridge woken)"""
    return orders.relay_wake.is_set(), orders.bridge_wake.is_set()


def test_the_lifecycle_agent_has_no_handler_for_events_nobody_records() -> None:
    read = {t for spec in LIFECYCLE_TOPICS for t in spec.types}
    unhandled = read - set(orders_over(FakeOrderStore()).handlers())
    assert unhandled == {GoodsPicked, PackingRejected, StockReleased, GoodsShipped, ReservationAccepted,
                         DeliveryAccepted, DeliveryRejected, DeliveryWithdrawn}


def test_the_lifecycle_agents_map_is_every_event_that_moves_an_order_or_its_process() -> None:
    orders = orders_over(FakeOrderStore())
    handlers = orders.handlers()
    assert set(handlers) == {OrderAccepted, OrderRejected, StockPartiallyReserved, StockReserved, GoodsPacked,
                             DeliveryStarted, DeliveryFailed, DeliveryCompleted}
    assert all(handler == orders.on_event for handler in handlers.values())


@pytest.mark.parametrize("msg", [
    GoodsPacked(order_id=ORDER),  # lifecycle only
    StockReserved(order_id=ORDER),  # lifecycle and process
    OrderAccepted(order_id=ORDER),  # acknowledgment, lifecycle and process start
    DeliveryCompleted(order_id=ORDER, attempt=1),
], ids=lambda m: m.type)
async def test_recorded_events_go_to_the_store(msg: Message) -> None:
    store = FakeOrderStore()
    await orders_over(store).handlers()[type(msg)](msg)
    assert store.recorded == [msg]


@pytest.mark.parametrize(("status", "queued", "relay", "bridge"), [
    ("PACKED", False, True, False),
    (None, True, False, True),
    ("RESERVED", True, True, True),
    (None, False, False, False),  # a duplicate: nothing new for anyone
])
async def test_recorded_event_wakes_relay_on_status_change_and_bridge_when_queued(
        status: str | None, queued: bool, relay: bool, bridge: bool) -> None:
    orders = orders_over(FakeOrderStore(status=status, queued=queued))
    await orders.on_event(StockReserved(order_id=ORDER))
    assert woken(orders) == (relay, bridge)


@pytest.mark.parametrize(("created", "relay"), [(True, True), (False, False)])
async def test_placing_wakes_the_relay_only_for_a_new_order(created: bool, relay: bool) -> None:
    store = FakeOrderStore(created=created)
    orders = orders_over(store)
    new = NewOrder(customer_id="c", delivery_address="Main St 1", items=[Line(sku="A", quantity=1)])
    order, was_created = await orders.place(new, "key-1")
    assert store.placed == [(new, "key-1")]
    assert (order["order_id"], was_created) == (ORDER, created)
    assert woken(orders) == (relay, False)


async def test_cancel_order_task_cancels_in_the_store_and_completes() -> None:
    store = FakeOrderStore()
    orders = orders_over(store)
    result = await orders.cancel_order(external_task("cancel-order", ORDER))
    assert [(order_id, source) for order_id, _, source in store.cancelled] == [(ORDER, "order")]
    assert result.is_success()
    assert woken(orders) == (True, False)


@pytest.mark.parametrize(("order_id", "outcome", "bridge"),
                         [(ORDER, "accepted", True), ("o-unknown", "unknown", False)])
async def test_an_accepted_cancellation_wakes_the_bridge_only(order_id: str, outcome: str, bridge: bool) -> None:
    orders = orders_over(FakeOrderStore())
    assert (await orders.request_cancel(order_id))[0] == outcome
    assert woken(orders) == (False, bridge)
