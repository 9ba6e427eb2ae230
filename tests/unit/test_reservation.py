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
    ReservationAccepted,
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


def ids(events: list[Message]) -> list[tuple[str, str]]:
    """(type, id) of each event: what a receiver deduplicates by."""
    return [(e.type, e.id) for e in events]


def snapshot(reservation: OrderReservation) -> OrderReservation:
    """A copy of the state as the table stores it."""
    return msgspec.json.decode(msgspec.json.encode(reservation), type=OrderReservation)


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
    first_cmd = accept_cmd(("BOLT", 1))
    reservation, first = accept(first_cmd, CATALOG)
    assert reservation is not None
    resent = accept_cmd(("BOLT", 1))
    events = reservation.reaccept(resent)
    assert [(type(e), e.correlation_id) for e in events] == [(OrderAccepted, resent.id)]
    # One OrderAccepted per order: the resend's answer is the same fact, by id.
    assert events[0].id == first[0].id


def test_rejection_is_one_fact_per_order() -> None:
    _, first = accept(accept_cmd(("WIDGET", 1)), CATALOG)
    _, again = accept(accept_cmd(("WIDGET", 1)), CATALOG)
    _, other = accept(AcceptOrder(order_id="o2", lines=[Line(sku="WIDGET", quantity=1)]), CATALOG)
    assert types(first) == types(again) == ["OrderRejected"]
    assert first[0].id == again[0].id != other[0].id


def test_reserve_acknowledges_and_splits_the_order_into_one_line_per_sku() -> None:
    reservation = accepted(("BOLT", 2), ("NUT", 1), ("BOLT", 1))
    cmd = reserve_cmd()
    events = reservation.reserve(cmd)
    assert types(events) == ["ReservationAccepted", "ReserveLine", "ReserveLine"]
    assert isinstance(events[0], ReservationAccepted) and events[0].correlation_id == cmd.id
    assert {(e.sku, e.quantity) for e in events if isinstance(e, ReserveLine)} == {("BOLT", 3), ("NUT", 1)}
    assert reservation.reserve_requested


def test_reservation_created_from_reserve_stock_takes_its_lines() -> None:
    reservation = OrderReservation(order_id=ORDER, lines={}, accepted=True)
    events = reservation.reserve(ReserveStock(order_id=ORDER, lines=[Line(sku="NUT", quantity=4)]))
    assert reservation.lines == {"NUT": 4}
    assert [(e.sku, e.quantity) for e in events if isinstance(e, ReserveLine)] == [("NUT", 4)]


def test_resent_reserve_stock_sends_no_new_reserve_line() -> None:
    """A resend asks the SKUs that have not answered again, with the first ReserveLine's id (so the
    stock keeper drops it if it has it), and re-announces the outcome once there is one."""
    reservation = accepted(("BOLT", 2), ("NUT", 1))
    first = reservation.reserve(reserve_cmd())
    first_asks = {e.sku: e.id for e in first if isinstance(e, ReserveLine)}
    reservation.on_line_reserved(line_reserved("BOLT", 2, 2))

    resent = reserve_cmd()
    events = reservation.reserve(resent)
    assert types(events) == ["ReservationAccepted", "ReserveLine"]
    assert events[0].correlation_id == resent.id
    assert (events[1].sku, events[1].id) == ("NUT", first_asks["NUT"])

    outcome = reservation.on_line_reserved(line_reserved("NUT", 1, 1))
    assert types(outcome) == ["StockReserved"]
    events = reservation.reserve(reserve_cmd())
    assert types(events) == ["ReservationAccepted", "StockReserved"]  # every SKU answered: nothing to ask
    assert events[1].id == outcome[0].id
    assert reservation.reserved == {"BOLT": 2, "NUT": 1}


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


def test_stock_reserved_names_what_the_order_lacked_at_first_so_a_process_that_missed_the_partial_replenishes() -> None:
    short = reserving(("BOLT", 5), ("NUT", 1))
    short.on_line_reserved(line_reserved("NUT", 1, 1))
    short.on_line_reserved(line_reserved("BOLT", 5, 2))
    short.on_line_reserved(line_reserved("BOLT", 5, 4))
    [full] = short.on_line_reserved(line_reserved("BOLT", 5, 5))
    assert isinstance(full, StockReserved) and full.short == [Line(sku="BOLT", quantity=3)]
    # Announced again (a replay) with the same id and the same lines.
    [again] = short.on_line_reserved(line_reserved("BOLT", 5, 5))
    assert (again.id, again.short) == (full.id, full.short)

    direct = reserving(("BOLT", 5))
    [full] = direct.on_line_reserved(line_reserved("BOLT", 5, 5))
    assert isinstance(full, StockReserved) and full.short == []


def test_stale_line_update_never_lowers_the_reservation() -> None:
    reservation = reserving(("BOLT", 5))
    first = reservation.on_line_reserved(line_reserved("BOLT", 5, 5))
    # Nothing new: the outcome is re-announced as the very same fact.
    assert ids(reservation.on_line_reserved(line_reserved("BOLT", 5, 2))) == ids(first)
    assert reservation.reserved["BOLT"] == 5
    assert reservation.outcome == "full"


def test_duplicate_line_update_reports_the_same_outcome_again() -> None:
    reservation = reserving(("BOLT", 1))
    first = reservation.on_line_reserved(line_reserved("BOLT", 1, 1))
    assert types(first) == ["StockReserved"]
    before = snapshot(reservation)
    # A separately built duplicate (another id): still one StockReserved per order, by id.
    assert ids(reservation.on_line_reserved(line_reserved("BOLT", 1, 1))) == ids(first)
    assert reservation == before


def test_duplicate_line_update_before_every_sku_answered_reports_nothing() -> None:
    reservation = reserving(("BOLT", 1), ("NUT", 1))
    reservation.on_line_reserved(line_reserved("BOLT", 1, 1))
    before = snapshot(reservation)
    assert reservation.on_line_reserved(line_reserved("BOLT", 1, 1)) == []
    assert reservation == before


def test_partial_outcome_is_one_fact_per_order() -> None:
    """A still-short update changes the books but announces nothing new; a duplicate re-announces
    the order's one StockPartiallyReserved."""
    reservation = reserving(("BOLT", 5))
    first = reservation.on_line_reserved(line_reserved("BOLT", 5, 2))
    assert types(first) == ["StockPartiallyReserved"]
    assert reservation.on_line_reserved(line_reserved("BOLT", 5, 3)) == []
    assert ids(reservation.on_line_reserved(line_reserved("BOLT", 5, 3))) == ids(first)
    assert (reservation.reserved, reservation.outcome) == ({"BOLT": 3}, "partial")


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


def test_resent_pack_goods_repeats_the_same_facts() -> None:
    """Picked and packed once per order: a resend gets the same events by id, the ack answering it."""
    reservation = fully_reserved()
    first = reservation.pack(PackGoods(order_id=ORDER))
    resent = PackGoods(order_id=ORDER)
    events = reservation.pack(resent)
    assert ids(events) == ids(first)
    assert [type(e) for e in events] == [GoodsPicked, GoodsPacked]
    assert events[1].correlation_id == resent.id
    assert reservation.packed


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


def test_resent_release_stock_repeats_the_same_release_lines() -> None:
    """Each SKU is released once per order: a resend's ReleaseLine carry the first ones' ids, so the
    stock keepers drop them; the resend gets its own acknowledgment."""
    reservation = reserving(("BOLT", 2), ("NUT", 1))
    first = reservation.release(ReleaseStock(order_id=ORDER))
    resent = ReleaseStock(order_id=ORDER)
    events = reservation.release(resent)
    assert types(events) == ["ReleaseLine", "ReleaseLine", "StockReleased"]
    assert ids(events[:2]) == ids(first[:2])
    assert events[-1].correlation_id == resent.id
    assert reservation.released and not reservation.shipped


def test_release_after_shipping_gives_nothing_back_but_acknowledges() -> None:
    reservation = fully_reserved()
    reservation.ship(DeliveryCompleted(order_id=ORDER, attempt=1))
    assert types(reservation.release(ReleaseStock(order_id=ORDER))) == ["StockReleased"]
    assert not reservation.released


def test_delivered_order_ships_every_line_once() -> None:
    """Shipping is once per order and SKU: a repeated DeliveryCompleted (even a separately built
    one) repeats the same ShipLine and GoodsShipped by id."""
    reservation = reserving(("BOLT", 2), ("NUT", 1))
    delivered = DeliveryCompleted(order_id=ORDER, attempt=1, trace_id="t-9")
    events = reservation.ship(delivered)
    assert {e.sku for e in events if isinstance(e, ShipLine)} == {"BOLT", "NUT"}
    assert isinstance(events[-1], GoodsShipped)
    assert all(e.trace_id == "t-9" for e in events)
    assert ids(reservation.ship(delivered)) == ids(events)
    assert ids(reservation.ship(DeliveryCompleted(order_id=ORDER, attempt=2))) == ids(events)
    assert reservation.shipped and not reservation.released


def test_delivery_after_release_ships_nothing() -> None:
    reservation = reserving(("BOLT", 2))
    reservation.release(ReleaseStock(order_id=ORDER))
    assert reservation.ship(DeliveryCompleted(order_id=ORDER, attempt=1)) == []
    assert reservation.released and not reservation.shipped


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
    assert [type(e) for e in events] == [OrderAccepted, ReservationAccepted, ReserveLine]


def test_reserve_stock_overtaken_by_its_release_is_only_acknowledged() -> None:
    """A cancellation's ReleaseStock reached the desk first: the tombstone reserves nothing."""
    tombstone = OrderReservation(order_id=ORDER, released=True)
    cmd = ReserveStock(order_id=ORDER, lines=[Line(sku="BOLT", quantity=2)])
    events = tombstone.reserve(cmd)
    assert [(type(e), e.correlation_id) for e in events] == [(ReservationAccepted, cmd.id)]
    assert (tombstone.lines, tombstone.reserve_requested, tombstone.released) == ({}, False, True)
    assert tombstone.last_words(cmd) == []  # nothing to give back


def test_reserve_stock_resent_after_release_or_shipping_asks_no_sku_again() -> None:
    released = reserving(("BOLT", 2), ("NUT", 1))
    released.on_line_reserved(line_reserved("BOLT", 2, 2))
    released.release(ReleaseStock(order_id=ORDER))
    shipped = fully_reserved()
    shipped.ship(DeliveryCompleted(order_id=ORDER, attempt=1))
    for reservation in (released, shipped):
        assert types(reservation.reserve(reserve_cmd())) == ["ReservationAccepted"]


def test_tombstone_still_answers_accept_order_and_refuses_packing() -> None:
    tombstone = OrderReservation(order_id=ORDER, released=True)
    first = accepted(("BOLT", 1))
    [reply] = tombstone.reaccept(accept_cmd(("BOLT", 1)))
    assert isinstance(reply, OrderAccepted) and reply.id == first.reaccept(accept_cmd(("BOLT", 1)))[0].id
    [rejected] = tombstone.pack(PackGoods(order_id=ORDER))
    assert isinstance(rejected, PackingRejected) and rejected.reason == "stock was released"
