"""One order inside the warehouse: acceptance, per-SKU reservation, packing, release, shipping."""

from __future__ import annotations

import msgspec

from edpo.domain.reservation import OrderReservation, accept
from edpo.models import (
    AcceptOrder,
    DeliveryCompleted,
    GoodsPacked,
    GoodsPicked,
    GoodsShipped,
    Line,
    LineReserved,
    Message,
    OrderAccepted,
    OrderRejected,
    PackGoods,
    PackingRejected,
    ReleaseLine,
    ReleaseStock,
    ReserveLine,
    ReserveStock,
    ShipLine,
    StockPartiallyReserved,
    StockReleased,
    StockReserved,
)

CATALOG = {"BOLT", "NUT"}
ORDER = "o1"


def types(events: list[Message]) -> list[str]:
    return [e.type for e in events]


def accept_cmd(*lines: tuple[str, int]) -> AcceptOrder:
    return AcceptOrder(order_id=ORDER, lines=[Line(sku=s, quantity=q) for s, q in lines], delivery_address="Main St 1")


def accepted(*lines: tuple[str, int]) -> OrderReservation:
    reservation, _ = accept(accept_cmd(*lines), CATALOG)
    assert reservation is not None
    return reservation


def line_reserved(sku: str, requested: int, reserved: int) -> LineReserved:
    return LineReserved(order_id=ORDER, sku=sku, requested=requested, reserved=reserved)


def reserve_cmd() -> ReserveStock:
    return ReserveStock(order_id=ORDER, lines=[])


def reserving(*lines: tuple[str, int]) -> OrderReservation:
    reservation = accepted(*lines)
    reservation.reserve(reserve_cmd())
    return reservation


def fully_reserved() -> OrderReservation:
    reservation = reserving(("BOLT", 2))
    reservation.on_line_reserved(line_reserved("BOLT", 2, 2))
    return reservation


def test_valid_order_is_accepted_with_an_acknowledgment() -> None:
    cmd = accept_cmd(("BOLT", 2), ("NUT", 1))
    reservation, events = accept(cmd, CATALOG)
    assert reservation is not None and reservation.accepted
    assert reservation.delivery_address == "Main St 1"
    assert types(events) == ["OrderAccepted"]
    assert events[0].correlation_id == cmd.id


def test_lines_of_the_same_sku_are_summed() -> None:
    assert accepted(("BOLT", 2), ("NUT", 1), ("BOLT", 3)).lines == {"BOLT": 5, "NUT": 1}


def test_order_with_unknown_sku_is_rejected_naming_the_sku() -> None:
    cmd = accept_cmd(("BOLT", 1), ("WIDGET", 1))
    reservation, events = accept(cmd, CATALOG)
    assert reservation is None
    assert isinstance(events[0], OrderRejected)
    assert "WIDGET" in events[0].reason
    assert events[0].correlation_id == cmd.id


def test_order_without_lines_or_with_non_positive_quantity_is_rejected() -> None:
    _, empty = accept(accept_cmd(), CATALOG)
    _, zero = accept(accept_cmd(("NUT", 0)), CATALOG)
    assert isinstance(empty[0], OrderRejected) and "no lines" in empty[0].reason
    assert isinstance(zero[0], OrderRejected) and "positive" in zero[0].reason


def test_resent_accept_order_is_acknowledged_again() -> None:
    reservation = accepted(("BOLT", 1))
    resent = accept_cmd(("BOLT", 1))
    events = reservation.reaccept(resent)
    assert [(type(e), e.correlation_id) for e in events] == [(OrderAccepted, resent.id)]


def test_reserve_splits_the_order_into_one_line_per_sku() -> None:
    reservation = accepted(("BOLT", 2), ("NUT", 1), ("BOLT", 1))
    events = reservation.reserve(reserve_cmd())
    assert {(e.sku, e.quantity) for e in events if isinstance(e, ReserveLine)} == {("BOLT", 3), ("NUT", 1)}
    assert len(events) == 2


def test_reservation_created_from_reserve_stock_takes_its_lines() -> None:
    reservation = OrderReservation(order_id=ORDER, lines={}, accepted=True)
    events = reservation.reserve(ReserveStock(order_id=ORDER, lines=[Line(sku="NUT", quantity=4)]))
    assert reservation.lines == {"NUT": 4}
    assert [(e.sku, e.quantity) for e in events if isinstance(e, ReserveLine)] == [("NUT", 4)]


def test_resent_reserve_stock_sends_no_second_reserve_line() -> None:
    reservation = reserving(("BOLT", 2))
    assert reservation.reserve(reserve_cmd()) == []
    reservation.on_line_reserved(line_reserved("BOLT", 2, 2))
    assert types(reservation.reserve(reserve_cmd())) == ["StockReserved"]


def test_outcome_waits_until_every_sku_has_answered() -> None:
    reservation = reserving(("BOLT", 2), ("NUT", 1))
    assert reservation.on_line_reserved(line_reserved("BOLT", 2, 2)) == []
    events = reservation.on_line_reserved(line_reserved("NUT", 1, 1))
    assert [type(e) for e in events] == [StockReserved]
    assert reservation.outcome == "full"


def test_short_order_is_partially_reserved_with_the_missing_units() -> None:
    reservation = reserving(("BOLT", 5), ("NUT", 1))
    reservation.on_line_reserved(line_reserved("BOLT", 5, 2))
    events = reservation.on_line_reserved(line_reserved("NUT", 1, 1))
    assert isinstance(events[0], StockPartiallyReserved)
    assert events[0].missing == [Line(sku="BOLT", quantity=3)]


def test_backordered_order_becomes_reserved_when_the_last_units_arrive() -> None:
    reservation = reserving(("BOLT", 5))
    reservation.on_line_reserved(line_reserved("BOLT", 5, 2))
    assert reservation.on_line_reserved(line_reserved("BOLT", 5, 4)) == []  # still short: no second partial
    assert types(reservation.on_line_reserved(line_reserved("BOLT", 5, 5))) == ["StockReserved"]


def test_stale_line_update_never_lowers_the_reservation() -> None:
    reservation = reserving(("BOLT", 5))
    reservation.on_line_reserved(line_reserved("BOLT", 5, 5))
    assert reservation.on_line_reserved(line_reserved("BOLT", 5, 2)) == []
    assert reservation.reserved["BOLT"] == 5
    assert reservation.outcome == "full"


def test_duplicate_line_update_reports_the_outcome_once() -> None:
    reservation = reserving(("BOLT", 1))
    assert types(reservation.on_line_reserved(line_reserved("BOLT", 1, 1))) == ["StockReserved"]
    assert reservation.on_line_reserved(line_reserved("BOLT", 1, 1)) == []


def test_line_updates_after_release_are_ignored() -> None:
    reservation = reserving(("BOLT", 2))
    reservation.on_line_reserved(line_reserved("BOLT", 2, 0))
    reservation.release(ReleaseStock(order_id=ORDER))
    assert reservation.on_line_reserved(line_reserved("BOLT", 2, 2)) == []
    assert reservation.outcome == "partial"


def test_packing_a_reserved_order_picks_then_packs_and_acknowledges() -> None:
    reservation = fully_reserved()
    cmd = PackGoods(order_id=ORDER)
    events = reservation.pack(cmd)
    assert [type(e) for e in events] == [GoodsPicked, GoodsPacked]
    assert events[1].correlation_id == cmd.id
    assert reservation.packed


def test_resent_pack_goods_is_only_acknowledged_again() -> None:
    reservation = fully_reserved()
    reservation.pack(PackGoods(order_id=ORDER))
    resent = PackGoods(order_id=ORDER)
    assert [(type(e), e.correlation_id) for e in reservation.pack(resent)] == [(GoodsPacked, resent.id)]


def test_packing_a_partly_reserved_order_is_rejected() -> None:
    reservation = reserving(("BOLT", 2))
    reservation.on_line_reserved(line_reserved("BOLT", 2, 1))
    cmd = PackGoods(order_id=ORDER)
    events = reservation.pack(cmd)
    assert isinstance(events[0], PackingRejected) and events[0].correlation_id == cmd.id
    assert not reservation.packed


def test_release_gives_every_line_back_and_acknowledges() -> None:
    reservation = reserving(("BOLT", 2), ("NUT", 1))
    cmd = ReleaseStock(order_id=ORDER)
    events = reservation.release(cmd)
    assert {e.sku for e in events if isinstance(e, ReleaseLine)} == {"BOLT", "NUT"}
    assert isinstance(events[-1], StockReleased) and events[-1].correlation_id == cmd.id


def test_resent_release_stock_is_only_acknowledged_again() -> None:
    reservation = reserving(("BOLT", 2))
    reservation.release(ReleaseStock(order_id=ORDER))
    assert types(reservation.release(ReleaseStock(order_id=ORDER))) == ["StockReleased"]


def test_release_after_shipping_gives_nothing_back_but_acknowledges() -> None:
    reservation = fully_reserved()
    reservation.ship(DeliveryCompleted(order_id=ORDER, attempt=1))
    assert types(reservation.release(ReleaseStock(order_id=ORDER))) == ["StockReleased"]
    assert not reservation.released


def test_delivered_order_ships_every_line_once() -> None:
    reservation = reserving(("BOLT", 2), ("NUT", 1))
    delivered = DeliveryCompleted(order_id=ORDER, attempt=1, trace_id="t-9")
    events = reservation.ship(delivered)
    assert {e.sku for e in events if isinstance(e, ShipLine)} == {"BOLT", "NUT"}
    assert isinstance(events[-1], GoodsShipped)
    assert all(e.trace_id == "t-9" for e in events)
    assert reservation.ship(delivered) == []


def test_reservation_survives_a_json_round_trip_as_table_value() -> None:
    reservation = reserving(("BOLT", 2))
    restored = msgspec.json.decode(msgspec.json.encode(reservation), type=OrderReservation)
    assert restored == reservation
    assert types(restored.on_line_reserved(line_reserved("BOLT", 2, 2))) == ["StockReserved"]


def test_accept_then_reserve_answers_in_the_orders_trace() -> None:
    cmd = AcceptOrder(order_id=ORDER, lines=[Line(sku="BOLT", quantity=1)], trace_id="trace-1")
    reservation, events = accept(cmd, CATALOG)
    assert reservation is not None
    events += reservation.reserve(ReserveStock(order_id=ORDER, lines=[], trace_id="trace-1"))
    assert {e.trace_id for e in events} == {"trace-1"}
    assert isinstance(events[0], OrderAccepted) and isinstance(events[1], ReserveLine)
