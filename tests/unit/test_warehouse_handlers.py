"""The warehouse's handlers over its tables, publisher and command client (domain rules: test_stock,
test_reservation)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edpo.agents.warehouse.handlers import Warehouse
from edpo.config.catalog import Catalog, CatalogItem
from edpo.domain.reservation import OrderReservation
from edpo.domain.stock import InvariantViolation, SkuStock
from edpo.models import (
    AcceptOrder,
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryRejected,
    DeliveryWithdrawn,
    GoodsPacked,
    ItemsManufactured,
    Line,
    LineReserved,
    Message,
    OrderAccepted,
    OrderRejected,
    PackGoods,
    PackingRejected,
    ProductionRequested,
    ProductionStarted,
    ReceiveStock,
    ReleaseStock,
    ReservationAccepted,
    ReserveLine,
    ReserveStock,
    SeedStock,
    StartDelivery,
    StockLevelChanged,
    StockReleased,
    StockReserved,
    WithdrawDelivery,
    caused_by,
)
from edpo.runtime.commands import CommandUnanswered
from tests.unit.fakes import FakeCommands, MemoryTable, RecordingPublish, external_task

CATALOG = Catalog(skus=[CatalogItem(sku="A", stock=5), CatalogItem(sku="B", stock=3)])
ORDER = "o-1"


class Rig:
    """A warehouse over in-memory tables, recording what it publishes and sends."""

    def __init__(self, *, stock: dict[str, SkuStock] | None = None,
                 reservations: dict[str, OrderReservation] | None = None,
                 answer: Callable[[Message], Message] | None = None,
                 clock: Callable[[], float] = lambda: 1000.0) -> None:
        self.stock = MemoryTable(stock)
        self.reservations = MemoryTable(reservations)
        self.publish = RecordingPublish()
        self.commands = FakeCommands(answer)
        self.warehouse = Warehouse(CATALOG, self.stock, self.reservations, self.publish, self.commands, clock=clock)


def awaiting_lines() -> OrderReservation:
    """An accepted order of 2 A whose ReserveLine went out."""
    return OrderReservation(order_id=ORDER, lines={"A": 2}, accepted=True, reserve_requested=True)


# --- order desk -----------------------------------------------------------------------------------


async def test_new_order_is_stored_as_accepted_and_acknowledged() -> None:
    rig = Rig()
    cmd = AcceptOrder(order_id=ORDER, lines=[Line(sku="A", quantity=2)], delivery_address="Main St 1")
    await rig.warehouse.on_accept_order(cmd)
    stored = rig.reservations.get(ORDER)
    assert stored is not None and stored.accepted and stored.lines == {"A": 2}
    assert [(type(m), m.correlation_id) for m in rig.publish.sent] == [(OrderAccepted, cmd.id)]


async def test_rejected_order_is_not_stored() -> None:
    rig = Rig()
    await rig.warehouse.on_accept_order(AcceptOrder(order_id=ORDER, lines=[Line(sku="NOPE", quantity=1)]))
    assert rig.reservations.rows == {}
    assert rig.publish.types() == [OrderRejected]


async def test_reserve_stock_for_an_order_missing_from_the_table_is_rebuilt_from_the_command() -> None:
    rig = Rig()
    lines = [Line(sku="A", quantity=2), Line(sku="B", quantity=1)]
    cmd = ReserveStock(order_id=ORDER, lines=lines)
    await rig.warehouse.on_reserve_stock(cmd)
    stored = rig.reservations.get(ORDER)
    assert stored is not None and stored.lines == {"A": 2, "B": 1} and stored.reserve_requested
    assert {(m.sku, m.quantity) for m in rig.publish.sent if isinstance(m, ReserveLine)} == {("A", 2), ("B", 1)}
    assert rig.publish.types() == [ReservationAccepted, ReserveLine, ReserveLine]
    assert rig.publish.sent[0].correlation_id == cmd.id


async def test_line_reserved_is_stored_and_the_outcome_published() -> None:
    rig = Rig(reservations={ORDER: awaiting_lines()})
    await rig.warehouse.on_line_reserved(LineReserved(order_id=ORDER, sku="A", requested=2, reserved=2))
    stored = rig.reservations.get(ORDER)
    assert stored is not None and stored.reserved == {"A": 2} and stored.outcome == "full"
    assert rig.publish.types() == [StockReserved]


async def test_release_of_an_order_never_seen_is_acknowledged_and_kept_as_a_tombstone() -> None:
    rig = Rig(clock=lambda: 50.0)
    cmd = ReleaseStock(order_id=ORDER)
    await rig.warehouse.on_release_stock(cmd)
    assert rig.reservations.rows == {ORDER: OrderReservation(order_id=ORDER, released=True, closed_at=50.0)}
    assert [(type(m), m.order_id, m.correlation_id) for m in rig.publish.sent] == [(StockReleased, ORDER, cmd.id)]


async def test_reserve_stock_overtaken_by_its_release_reserves_nothing() -> None:
    rig = Rig()
    await rig.warehouse.on_release_stock(ReleaseStock(order_id=ORDER))
    reserve = ReserveStock(order_id=ORDER, lines=[Line(sku="A", quantity=2)])
    await rig.warehouse.on_reserve_stock(reserve)
    assert [(type(m), m.correlation_id) for m in rig.publish.sent[1:]] == [(ReservationAccepted, reserve.id)]
    stored = rig.reservations.get(ORDER)
    assert stored is not None and stored.released and stored.lines == {} and not stored.reserve_requested


async def test_a_tombstone_still_answers_a_resent_accept_order() -> None:
    rig = Rig()
    await rig.warehouse.on_release_stock(ReleaseStock(order_id=ORDER))
    cmd = AcceptOrder(order_id=ORDER, lines=[Line(sku="A", quantity=2)])
    await rig.warehouse.on_accept_order(cmd)
    assert [(type(m), m.correlation_id) for m in rig.publish.sent[1:]] == [(OrderAccepted, cmd.id)]


@pytest.mark.parametrize("msg", [
    LineReserved(order_id=ORDER, sku="A", requested=2, reserved=2),
    PackGoods(order_id=ORDER),
    DeliveryCompleted(order_id=ORDER, attempt=1),
], ids=lambda m: m.type)
async def test_news_about_an_order_never_seen_is_dropped(msg: Message) -> None:
    rig = Rig()
    await rig.warehouse.order_desk_handlers()[type(msg)](msg)
    assert rig.reservations.rows == {}
    assert rig.publish.sent == []


@pytest.mark.parametrize("msg", [
    DeliveryAccepted(order_id=ORDER, attempt=1),
    DeliveryFailed(order_id=ORDER, attempt=1, reason="x"),
    DeliveryWithdrawn(order_id=ORDER, attempt=0, outcome="withdrawn"),
    StockReserved(order_id=ORDER),
], ids=lambda m: m.type)
async def test_order_desk_declares_no_handler_for_messages_it_does_not_handle(msg: Message) -> None:
    assert type(msg) not in Rig().warehouse.order_desk_handlers(), "the agent loop skips what has no handler"


# --- stock keeper ---------------------------------------------------------------------------------


async def test_reserve_line_is_stored_and_its_result_published() -> None:
    rig = Rig(stock={"A": SkuStock(sku="A", on_hand=5, seeded=True)})
    await rig.warehouse.on_reserve_line(ReserveLine(order_id=ORDER, sku="A", quantity=2))
    stored = rig.stock.get("A")
    assert stored is not None and (stored.on_hand, stored.reserved, stored.allocated) == (5, 2, {ORDER: 2})
    assert [(type(m), getattr(m, "reserved", None)) for m in rig.publish.sent] == [
        (LineReserved, 2), (StockLevelChanged, 2),
    ]


async def test_manufactured_items_are_booked_as_a_receipt_on_a_sku_not_yet_stored() -> None:
    rig = Rig()
    await rig.warehouse.on_goods_arrived(ItemsManufactured(sku="A", production_id="p1", quantity=4))
    stored = rig.stock.get("A")
    assert stored is not None and (stored.on_hand, stored.applied) == (4, ["p1"])
    assert [(type(m), getattr(m, "reason", "")) for m in rig.publish.sent] == [(StockLevelChanged, "received")]


async def test_stock_breaking_invariants_is_neither_stored_nor_published() -> None:
    broken = SkuStock(sku="A", on_hand=1, reserved=3)  # reserved beyond on hand, allocated to nobody
    rig = Rig(stock={"A": broken})
    with pytest.raises(InvariantViolation):
        await rig.warehouse.on_goods_arrived(ReceiveStock(sku="A", quantity=1, receipt_id="r1"))
    assert rig.stock.rows == {"A": broken}
    assert rig.publish.sent == []


async def test_stock_keeper_declares_no_handler_for_production_progress() -> None:
    handlers = Rig().warehouse.stock_keeper_handlers()
    assert ProductionStarted not in handlers and ProductionRequested not in handlers
    assert handlers[ItemsManufactured] == handlers[ReceiveStock], "made goods are booked as received ones"


async def test_seeding_offers_each_catalog_sku_its_starting_stock() -> None:
    rig = Rig()
    await rig.warehouse.seed_stock()
    assert [(m.sku, m.quantity) for m in rig.publish.sent if isinstance(m, SeedStock)] == [("A", 5), ("B", 3)]
    assert len(rig.publish.sent) == 2


async def test_a_receipt_is_published_and_waited_for() -> None:
    rig = Rig()
    await rig.warehouse.receive("A", 7, "r-9")
    [(messages, wait)] = rig.publish.calls
    assert wait is True
    assert [(type(m), m.sku, m.quantity, m.receipt_id) for m in messages] == [(ReceiveStock, "A", 7, "r-9")]


# --- external tasks -------------------------------------------------------------------------------


async def test_reserve_stock_task_completes_once_the_warehouse_has_the_request() -> None:
    rig = Rig(answer=lambda cmd: caused_by(cmd, ReservationAccepted, source="warehouse", reply=True, order_id=ORDER))
    task = external_task("reserve-stock", ORDER, lines=[{"sku": "A", "quantity": 2}], trace_id="tr")
    result = await rig.warehouse.reserve_stock(task)
    [(cmd, replies)] = rig.commands.requested
    assert isinstance(cmd, ReserveStock) and replies == (ReservationAccepted,)
    assert (cmd.order_id, cmd.lines, cmd.trace_id) == (ORDER, [Line(sku="A", quantity=2)], "tr")
    assert rig.commands.sent == []
    assert result.is_success()


async def test_unacknowledged_reserve_stock_fails_the_task_call() -> None:
    def unanswered(cmd: Message) -> Message:
        raise CommandUnanswered(f"{cmd.type}: no acknowledgment")

    rig = Rig(answer=unanswered)
    with pytest.raises(CommandUnanswered):
        await rig.warehouse.reserve_stock(external_task("reserve-stock", ORDER, lines=[{"sku": "A", "quantity": 2}]))


async def test_pack_goods_task_completes_once_packed() -> None:
    rig = Rig(answer=lambda cmd: caused_by(cmd, GoodsPacked, source="warehouse", reply=True, order_id=ORDER))
    result = await rig.warehouse.pack_goods(external_task("pack-goods", ORDER, trace_id="tr"))
    [(cmd, _)] = rig.commands.requested
    assert isinstance(cmd, PackGoods) and (cmd.order_id, cmd.trace_id) == (ORDER, "tr")
    assert result.is_success()


async def test_rejected_packing_fails_the_task() -> None:
    rig = Rig(answer=lambda cmd: PackingRejected(order_id=ORDER, reason="stock was released"))
    with pytest.raises(RuntimeError, match="stock was released"):
        await rig.warehouse.pack_goods(external_task("pack-goods", ORDER))


@pytest.mark.parametrize(("previous", "attempt"), [(None, 1), (1, 2)])
async def test_start_delivery_sends_the_next_attempt_and_completes_when_accepted(previous: int | None,
                                                                               attempt: int) -> None:
    rig = Rig(answer=lambda cmd: DeliveryAccepted(order_id=ORDER, attempt=attempt))
    variables = {"lines": [{"sku": "A", "quantity": 2}], "delivery_address": "Main St 1", "trace_id": "tr"}
    if previous is not None:
        variables["delivery_attempt"] = previous
    result = await rig.warehouse.start_delivery(external_task("start-delivery", ORDER, **variables))
    [(cmd, _)] = rig.commands.requested
    assert isinstance(cmd, StartDelivery)
    assert (cmd.order_id, cmd.attempt, cmd.delivery_address, cmd.lines, cmd.trace_id) == (
        ORDER, attempt, "Main St 1", [Line(sku="A", quantity=2)], "tr")
    assert result.is_success() and result.global_variables == {"delivery_attempt": attempt}


async def test_rejected_delivery_is_the_bpmn_error_delivery_rejected_with_its_attempt() -> None:
    rig = Rig(answer=lambda cmd: DeliveryRejected(order_id=ORDER, attempt=3, reason="no delivery address"))
    result = await rig.warehouse.start_delivery(external_task("start-delivery", ORDER, delivery_attempt=2))
    assert result.is_bpmn_error()
    assert (result.bpmn_error_code, result.error_message) == ("DELIVERY_REJECTED", "no delivery address")
    assert result.global_variables == {"delivery_attempt": 3}


@pytest.mark.parametrize(("scope", "attempt", "final"), [("order", 0, True), ("attempt", 2, False)])
async def test_withdraw_delivery_calls_the_courier_back_in_the_tasks_scope(scope: str, attempt: int,
                                                                          final: bool) -> None:
    rig = Rig(answer=lambda cmd: caused_by(cmd, DeliveryWithdrawn, source="delivery", reply=True, order_id=ORDER,
                                           attempt=attempt, outcome="withdrawn"))
    task = external_task("withdraw-delivery", ORDER, withdraw_scope=scope, delivery_attempt=2, trace_id="tr")
    result = await rig.warehouse.withdraw_delivery(task)
    [(cmd, replies)] = rig.commands.requested
    assert isinstance(cmd, WithdrawDelivery) and replies == (DeliveryWithdrawn,)
    assert (cmd.order_id, cmd.attempt, cmd.final, cmd.trace_id) == (ORDER, attempt, final, "tr")
    assert result.is_success() and result.global_variables == {"withdrawn": "withdrawn"}


async def test_withdraw_delivery_with_nothing_on_the_road_completes() -> None:
    rig = Rig(answer=lambda cmd: DeliveryWithdrawn(order_id=ORDER, attempt=0, outcome="none"))
    result = await rig.warehouse.withdraw_delivery(external_task("withdraw-delivery", ORDER, withdraw_scope="order"))
    assert result.is_success() and result.global_variables == {"withdrawn": "none"}


async def test_withdrawing_a_delivered_order_is_the_bpmn_error_already_delivered() -> None:
    rig = Rig(answer=lambda cmd: DeliveryWithdrawn(order_id=ORDER, attempt=0, outcome="delivered"))
    result = await rig.warehouse.withdraw_delivery(external_task("withdraw-delivery", ORDER, withdraw_scope="order"))
    assert result.is_bpmn_error()
    assert result.bpmn_error_code == "ALREADY_DELIVERED"


async def test_release_stock_task_completes_once_released() -> None:
    rig = Rig(answer=lambda cmd: StockReleased(order_id=ORDER))
    result = await rig.warehouse.release_stock(external_task("release-stock", ORDER, trace_id="tr"))
    [(cmd, _)] = rig.commands.requested
    assert isinstance(cmd, ReleaseStock) and (cmd.order_id, cmd.trace_id) == (ORDER, "tr")
    assert result.is_success()
