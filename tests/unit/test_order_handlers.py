"""The order service's handlers over its store: what they record, and whom they wake."""

from __future__ import annotations

from typing import cast

import pytest

from edpo.agents.order import Orders
from edpo.agents.order.store import OrderStore
from edpo.domain.order import NewOrder
from edpo.models import (
    DeliveryAccepted,
    DeliveryCompleted,
    GoodsPacked,
    GoodsPicked,
    GoodsShipped,
    Line,
    LineReserved,
    Message,
    OrderAccepted,
    StockReserved,
)
from tests.unit.fakes import FakeOrderStore, external_task

ORDER = "o-1"


def orders_over(store: FakeOrderStore) -> Orders:
    return Orders(cast(OrderStore, store))


def woken(orders: Orders) -> tuple[bool, bool]:
    """(relay woken, bridge woken)"""
    return orders.relay_wake.is_set(), orders.bridge_wake.is_set()


@pytest.mark.parametrize("msg", [
    GoodsPicked(order_id=ORDER),
    GoodsShipped(order_id=ORDER),
    DeliveryAccepted(order_id=ORDER, attempt=1),
    LineReserved(order_id=ORDER, sku="A", requested=1, reserved=1),
], ids=lambda m: m.type)
async def test_events_nobody_records_make_no_store_call(msg: Message) -> None:
    store = FakeOrderStore(status="X", queued=True)
    orders = orders_over(store)
    await orders.on_event(msg)
    assert store.recorded == []
    assert woken(orders) == (False, False)


@pytest.mark.parametrize("msg", [
    GoodsPacked(order_id=ORDER),  # lifecycle only
    StockReserved(order_id=ORDER),  # lifecycle and process
    OrderAccepted(order_id=ORDER),  # acknowledgment, lifecycle and process start
    DeliveryCompleted(order_id=ORDER, attempt=1),
], ids=lambda m: m.type)
async def test_recorded_events_go_to_the_store(msg: Message) -> None:
    store = FakeOrderStore()
    await orders_over(store).on_event(msg)
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
