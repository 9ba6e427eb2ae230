"""Finished orders leave the hot state: a reservation shipped or released, and a delivery whose
attempts all ended, are dropped from their tables after the retention, through their agent."""

from __future__ import annotations

from edpo.agents.delivery.handlers import Courier
from edpo.agents.warehouse.handlers import Warehouse
from edpo.config.catalog import Catalog, CatalogItem
from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.domain.reservation import OrderReservation
from edpo.models import (
    DeliveryCompleted,
    FinishDelivery,
    ForgetDelivery,
    ForgetReservation,
    PackGoods,
    StartDelivery,
)
from tests.unit.fakes import FakeCommands, MemoryTable, RecordingPublish

ORDER = "o-1"
RETENTION = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warehouse_rig(reservation: OrderReservation) -> tuple[Warehouse, MemoryTable[OrderReservation],
                                                            RecordingPublish, Clock]:
    clock = Clock()
    table = MemoryTable({ORDER: reservation})
    publish = RecordingPublish()
    catalog = Catalog(skus=[CatalogItem(sku="A", stock=5)])
    warehouse = Warehouse(catalog, MemoryTable(), table, publish, FakeCommands(), clock=clock, retention=RETENTION)
    return warehouse, table, publish, clock


def packed() -> OrderReservation:
    return OrderReservation(order_id=ORDER, lines={"A": 2}, reserved={"A": 2}, reported=["A"], outcome="full",
                            packed=True, accepted=True, reserve_requested=True)


async def test_a_shipped_reservation_is_dropped_after_the_retention_and_not_before() -> None:
    warehouse, table, publish, clock = warehouse_rig(packed())
    await warehouse.on_delivery_completed(DeliveryCompleted(order_id=ORDER, attempt=1))
    stored = table.get(ORDER)
    assert stored is not None and stored.shipped and stored.closed_at == 1000.0

    clock.now += RETENTION - 1
    await warehouse.forget_closed_orders()
    assert not [m for m in publish.sent if isinstance(m, ForgetReservation)]  # too early: no tick
    await warehouse.on_forget_reservation(ForgetReservation(order_id=ORDER))
    assert table.get(ORDER) is not None  # and a stray tick drops nothing

    clock.now += 1
    await warehouse.forget_closed_orders()
    ticks = [m for m in publish.sent if isinstance(m, ForgetReservation)]
    assert [t.order_id for t in ticks] == [ORDER]
    await warehouse.on_forget_reservation(ticks[0])
    assert table.get(ORDER) is None


async def test_an_open_reservation_is_never_dropped() -> None:
    warehouse, table, publish, clock = warehouse_rig(packed())
    clock.now += 10 * RETENTION
    await warehouse.forget_closed_orders()
    await warehouse.on_forget_reservation(ForgetReservation(order_id=ORDER))
    assert table.get(ORDER) is not None
    assert not [m for m in publish.sent if isinstance(m, ForgetReservation)]


async def test_closing_time_is_kept_from_the_first_close() -> None:
    warehouse, table, _, clock = warehouse_rig(packed())
    await warehouse.on_delivery_completed(DeliveryCompleted(order_id=ORDER, attempt=1))
    clock.now += 50
    await warehouse.on_pack_goods(PackGoods(order_id=ORDER))  # any later message for the order
    await warehouse.on_delivery_completed(DeliveryCompleted(order_id=ORDER, attempt=1))  # a replay
    stored = table.get(ORDER)
    assert stored is not None and stored.closed_at == 1000.0


def courier_rig() -> tuple[Courier, MemoryTable[Delivery], RecordingPublish, Clock]:
    clock = Clock()
    table: MemoryTable[Delivery] = MemoryTable()
    publish = RecordingPublish()
    policy = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.0, courier_time=3.0)
    courier = Courier(policy, table, publish, clock=clock, dice=lambda: 0.9, retention=RETENTION)
    return courier, table, publish, clock


async def test_a_finished_delivery_is_dropped_after_the_retention_and_a_running_one_never() -> None:
    courier, table, publish, clock = courier_rig()
    await courier.on_start_delivery(StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1"))
    clock.now += 10 * RETENTION
    await courier.on_forget_delivery(ForgetDelivery(order_id=ORDER))
    assert table.get(ORDER) is not None  # in transit: kept however old

    await courier.finish_due_deliveries()  # the courier time is over: FinishDelivery, no forget
    finish = [m for m in publish.sent if isinstance(m, FinishDelivery)]
    assert len(finish) == 1 and not [m for m in publish.sent if isinstance(m, ForgetDelivery)]
    await courier.on_finish_delivery(finish[0])
    finished = table.get(ORDER)
    assert finished is not None and finished.finished_at == clock.now

    clock.now += RETENTION
    await courier.finish_due_deliveries()
    forget = [m for m in publish.sent if isinstance(m, ForgetDelivery)]
    assert [f.order_id for f in forget] == [ORDER]
    await courier.on_forget_delivery(forget[0])
    assert table.get(ORDER) is None


async def test_a_replayed_finish_keeps_the_first_finishing_time() -> None:
    courier, table, _, clock = courier_rig()
    await courier.on_start_delivery(StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1"))
    clock.now += 5
    await courier.on_finish_delivery(FinishDelivery(order_id=ORDER, attempt=1))
    first = table.get(ORDER)
    clock.now += 100
    await courier.on_finish_delivery(FinishDelivery(order_id=ORDER, attempt=1))
    again = table.get(ORDER)
    assert first is not None and again is not None and again.finished_at == first.finished_at == 1005.0


async def test_a_dropped_reservation_says_its_last_words_first_with_the_first_ids() -> None:
    # The DeliveryCompleted was stored but its ShipLine never left (a crash, or a failure that
    # dead-lettered it): whatever happens to that record later, the drop re-sends the ShipLine.
    warehouse, table, publish, clock = warehouse_rig(packed())
    await warehouse.on_delivery_completed(DeliveryCompleted(order_id=ORDER, attempt=1))
    first = {(type(m).__name__, m.id) for m in publish.sent}
    publish.sent.clear()
    clock.now += RETENTION
    await warehouse.on_forget_reservation(ForgetReservation(order_id=ORDER))
    assert table.get(ORDER) is None
    last = {(type(m).__name__, m.id) for m in publish.sent}
    assert ("ShipLine", next(i for t, i in first if t == "ShipLine")) in last
    assert {t for t, _ in last} == {"ShipLine", "GoodsShipped"} and last <= first
    assert publish.calls[-1][1] is True  # waited for Kafka before the entry went


async def test_a_dropped_delivery_repeats_its_outcomes_with_the_first_ids() -> None:
    courier, table, publish, clock = courier_rig()
    await courier.on_start_delivery(StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1"))
    clock.now += 5
    await courier.on_finish_delivery(FinishDelivery(order_id=ORDER, attempt=1))
    outcome = [m for m in publish.sent if type(m).__name__ == "DeliveryCompleted"]
    clock.now += RETENTION
    publish.sent.clear()
    await courier.on_forget_delivery(ForgetDelivery(order_id=ORDER))
    assert table.get(ORDER) is None
    assert [(type(m), m.id) for m in publish.sent] == [(type(outcome[0]), outcome[0].id)]
