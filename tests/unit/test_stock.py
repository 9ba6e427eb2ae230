"""One SKU's stock: reservations, first-come-first-served backorders, receipts, release, shipping."""

from __future__ import annotations

import random

import msgspec
import pytest

from edpo.domain.stock import InvariantViolation, SkuStock
from edpo.models import (
    ItemsManufactured,
    LineReserved,
    Message,
    ReceiveStock,
    ReleaseLine,
    ReserveLine,
    SeedStock,
    ShipLine,
    StockLevelChanged,
)

SKU = "BOLT"


def seeded(qty: int) -> SkuStock:
    stock = SkuStock(sku=SKU)
    stock.seed(SeedStock(sku=SKU, quantity=qty))
    return stock


def reserve(order: str, qty: int, trace: str = "") -> ReserveLine:
    return ReserveLine(order_id=order, sku=SKU, quantity=qty, trace_id=trace)


def receipt(qty: int, receipt_id: str = "r1") -> ReceiveStock:
    return ReceiveStock(sku=SKU, quantity=qty, receipt_id=receipt_id)


def lines(events: list[Message]) -> dict[str, tuple[int, int]]:
    """order id -> (requested, reserved) of every LineReserved among events."""
    return {e.order_id: (e.requested, e.reserved) for e in events if isinstance(e, LineReserved)}


def levels(events: list[Message]) -> list[tuple[str, int, int]]:
    return [(e.reason, e.on_hand, e.reserved) for e in events if isinstance(e, StockLevelChanged)]


def snapshot(stock: SkuStock) -> SkuStock:
    """A copy of the state as the table stores it."""
    return msgspec.json.decode(msgspec.json.encode(stock), type=SkuStock)


def reannounces_open_orders(events: list[Message], stock: SkuStock) -> bool:
    """Every event is a LineReserved telling an open order holding units exactly what it holds, and
    every such order is told."""
    holding = {o: (stock.requested[o], n) for o, n in stock.allocated.items() if n}
    return all(isinstance(e, LineReserved) for e in events) and len(events) == len(holding) and lines(events) == holding


def answers_again(events: list[Message], stock: SkuStock, reason: str) -> bool:
    """What an input whose effect is already stored emits: the LineReserved re-announcements of the
    open orders holding units, then exactly one StockLevelChanged repeating the current level."""
    return (bool(events) and reannounces_open_orders(events[:-1], stock)
            and levels(events) == [(reason, stock.on_hand, stock.reserved)]
            and isinstance(events[-1], StockLevelChanged))


def level_ids(events: list[Message]) -> list[str]:
    return [e.id for e in events if isinstance(e, StockLevelChanged)]


def test_seeding_books_the_starting_stock() -> None:
    stock = SkuStock(sku=SKU)
    events = stock.seed(SeedStock(sku=SKU, quantity=7))
    assert (stock.on_hand, stock.seeded) == (7, True)
    assert levels(events) == [("seeded", 7, 0)]


def test_restart_does_not_reseed() -> None:
    stock = SkuStock(sku=SKU)
    cmd = SeedStock(sku=SKU, quantity=7)
    first = stock.seed(cmd)
    before = snapshot(stock)
    again = stock.seed(cmd)
    assert stock == before and stock.on_hand == 7
    # No open order to tell; the level of the first run comes again, with its id.
    assert answers_again(again, stock, "seeded") and lines(again) == {}
    assert level_ids(again) == level_ids(first)
    # A restart offering the starting stock in a new message adds nothing either.
    assert answers_again(stock.seed(SeedStock(sku=SKU, quantity=7)), stock, "seeded")
    assert stock == before


def test_restart_with_open_orders_reannounces_them_without_reseeding() -> None:
    stock = seeded(3)
    stock.reserve(reserve("o1", 2))
    stock.reserve(reserve("o2", 4))  # gets 1, waits for 3
    stock.reserve(reserve("o3", 1))  # gets nothing: nothing to re-announce
    before = snapshot(stock)
    events = stock.seed(SeedStock(sku=SKU, quantity=3))
    assert stock == before
    assert lines(events) == {"o1": (2, 2), "o2": (4, 1)} and len(events) == 3
    assert answers_again(events, stock, "seeded") and levels(events) == [("seeded", 3, 3)]


def test_seeding_after_orders_wait_serves_them_first() -> None:
    stock = SkuStock(sku=SKU)
    stock.reserve(reserve("o1", 3))
    events = stock.seed(SeedStock(sku=SKU, quantity=10))
    assert lines(events) == {"o1": (3, 3)}
    assert (stock.available, stock.waiting) == (7, [])
    stock.check()


def test_reserve_takes_what_is_available() -> None:
    stock = seeded(10)
    events = stock.reserve(reserve("o1", 4))
    assert lines(events) == {"o1": (4, 4)}
    assert levels(events) == [("reserved", 10, 4)]
    assert (stock.available, stock.waiting) == (6, [])


def test_short_line_reserves_what_there_is_and_waits() -> None:
    stock = seeded(3)
    events = stock.reserve(reserve("o1", 5))
    assert lines(events) == {"o1": (5, 3)}
    assert stock.waiting == ["o1"]
    assert stock.available == 0


def test_line_with_nothing_available_is_answered_without_a_stock_change() -> None:
    stock = seeded(0)
    events = stock.reserve(reserve("o1", 2))
    assert lines(events) == {"o1": (2, 0)}
    assert levels(events) == []


def test_backordered_line_is_reserved_when_stock_arrives() -> None:
    stock = seeded(1)
    stock.reserve(reserve("o1", 5))
    events = stock.receive(receipt(10))
    assert lines(events) == {"o1": (5, 5)}
    assert levels(events) == [("received", 11, 5)]
    assert (stock.waiting, stock.available) == ([], 6)


def test_arriving_goods_go_to_waiting_orders_first_come_first_served() -> None:
    stock = seeded(0)
    for order in ("o1", "o2", "o3"):
        stock.reserve(reserve(order, 4))
    events = stock.receive(receipt(6))
    assert lines(events) == {"o1": (4, 4), "o2": (4, 2)}
    assert stock.waiting == ["o2", "o3"]
    events = stock.receive(receipt(6, "r2"))
    assert lines(events) == {"o2": (4, 4), "o3": (4, 4)}
    assert stock.waiting == []


def test_newcomer_does_not_jump_the_queue_of_waiting_orders() -> None:
    stock = seeded(2)
    stock.reserve(reserve("early", 5))
    stock.receive(receipt(1))  # early still needs 2 more
    events = stock.reserve(reserve("late", 1))
    assert lines(events) == {"late": (1, 0)}
    assert stock.waiting == ["early", "late"]


def test_duplicate_reserve_line_reserves_nothing_twice() -> None:
    stock = seeded(10)
    stock.reserve(reserve("o1", 4))
    again = stock.reserve(reserve("o1", 4))
    assert lines(again) == {"o1": (4, 4)}
    assert levels(again) == []
    assert stock.reserved == 4


def test_duplicate_receipt_is_booked_once() -> None:
    stock = seeded(0)
    cmd = receipt(5, "r1")
    first = stock.receive(cmd)
    before = snapshot(stock)
    again = stock.receive(cmd)
    assert stock == before and stock.on_hand == 5
    assert answers_again(again, stock, "received") and levels(again) == [("received", 5, 0)]
    assert level_ids(again) == level_ids(first)
    # Another message with the same receipt id is booked once as well.
    assert answers_again(stock.receive(receipt(5, "r1")), stock, "received")
    assert stock == before


def test_duplicate_receipt_reannounces_the_orders_it_served() -> None:
    stock = seeded(0)
    stock.reserve(reserve("o1", 3))
    first = stock.receive(receipt(5, "r1"))
    before = snapshot(stock)
    again = stock.receive(receipt(5, "r1"))  # another message, same receipt id
    assert stock == before
    assert lines(again) == lines(first) == {"o1": (3, 3)}
    assert answers_again(again, stock, "received") and levels(again) == levels(first) == [("received", 5, 3)]
    stock.check()


def test_manufactured_batch_is_booked_once_by_production_id() -> None:
    stock = seeded(0)
    batch = ItemsManufactured(sku=SKU, production_id="p1", quantity=10)
    first = stock.receive(batch)
    before = snapshot(stock)
    again = stock.receive(batch)
    assert stock == before and stock.on_hand == 10
    assert answers_again(again, stock, "received") and levels(again) == [("received", 10, 0)]
    assert level_ids(again) == level_ids(first)


def test_only_the_last_thousand_receipt_ids_are_kept() -> None:
    stock = seeded(0)
    for i in range(1005):
        stock.receive(receipt(1, f"r{i}"))
    assert len(stock.applied) == 1000
    assert stock.applied[-1] == "r1004"


def test_release_frees_units_for_the_next_waiting_order() -> None:
    stock = seeded(5)
    stock.reserve(reserve("o1", 5))
    stock.reserve(reserve("o2", 3))
    events = stock.release(ReleaseLine(order_id="o1", sku=SKU))
    assert lines(events) == {"o2": (3, 3)}
    assert levels(events) == [("released", 5, 3)]
    assert "o1" not in stock.requested and "o1" not in stock.allocated


def test_releasing_a_waiting_order_takes_it_out_of_the_queue() -> None:
    stock = seeded(0)
    stock.reserve(reserve("o1", 2))
    stock.reserve(reserve("o2", 2))
    stock.release(ReleaseLine(order_id="o1", sku=SKU))
    assert stock.waiting == ["o2"]
    stock.check()


def test_release_of_unknown_order_changes_nothing() -> None:
    stock = seeded(5)
    stock.reserve(reserve("o1", 2))
    cmd = ReleaseLine(order_id="o1", sku=SKU)
    first = stock.release(cmd)
    before = snapshot(stock)
    again = stock.release(cmd)
    assert stock == before
    assert answers_again(again, stock, "released") and levels(again) == [("released", 5, 0)]
    assert level_ids(again) == level_ids(first)
    assert answers_again(stock.release(ReleaseLine(order_id="o1", sku=SKU)), stock, "released")
    assert stock.release(ReleaseLine(order_id="never", sku=SKU)) == []
    assert stock == before and stock.reserved == 0


def test_repeated_release_reannounces_the_orders_that_got_the_units() -> None:
    stock = seeded(5)
    stock.reserve(reserve("o1", 5))
    stock.reserve(reserve("o2", 3))
    stock.reserve(reserve("o3", 1))
    cmd = ReleaseLine(order_id="o1", sku=SKU)
    first = stock.release(cmd)
    assert lines(first) == {"o2": (3, 3), "o3": (1, 1)}
    before = snapshot(stock)
    again = stock.release(cmd)
    assert stock == before
    assert lines(again) == lines(first) and answers_again(again, stock, "released")
    assert levels(again) == levels(first) == [("released", 5, 4)]
    assert [e.id for e in again] == [e.id for e in first], "the replay repeats the first run, id for id"
    # An order never seen here was never released here: nobody to tell.
    assert stock.release(ReleaseLine(order_id="never", sku=SKU)) == []
    stock.check()


def test_shipping_takes_the_allocated_units_off_the_books() -> None:
    stock = seeded(10)
    stock.reserve(reserve("o1", 4))
    cmd = ShipLine(order_id="o1", sku=SKU)
    events = stock.ship(cmd)
    assert levels(events) == [("shipped", 6, 0)]
    assert stock.requested == {} and stock.allocated == {}
    before = snapshot(stock)
    again = stock.ship(cmd)
    assert stock == before and stock.on_hand == 6
    assert [(type(e), e.id) for e in again] == [(type(e), e.id) for e in events]
    assert levels(stock.ship(ShipLine(order_id="o1", sku=SKU))) == [("shipped", 6, 0)]
    assert stock.ship(ShipLine(order_id="never", sku=SKU)) == []
    assert stock == before


def test_shipping_a_partly_allocated_order_ships_what_it_has() -> None:
    stock = seeded(3)
    stock.reserve(reserve("o1", 5))
    stock.ship(ShipLine(order_id="o1", sku=SKU))
    assert (stock.on_hand, stock.reserved, stock.waiting) == (0, 0, [])
    stock.check()


def test_replayed_reserve_after_shipping_reserves_nothing() -> None:
    stock = seeded(10)
    stock.reserve(reserve("o1", 4))
    stock.ship(ShipLine(order_id="o1", sku=SKU))
    before = snapshot(stock)
    assert stock.reserve(reserve("o1", 4)) == []
    # A replayed ShipLine only repeats the level; it takes nothing off the books again.
    assert levels(stock.ship(ShipLine(order_id="o1", sku=SKU))) == [("shipped", 6, 0)]
    assert stock == before and (stock.on_hand, stock.reserved) == (6, 0)


def test_units_given_to_a_waiting_order_report_in_that_orders_trace() -> None:
    stock = seeded(0)
    stock.reserve(reserve("o1", 2, trace="trace-of-o1"))
    events = stock.receive(ReceiveStock(sku=SKU, quantity=5, receipt_id="r1", trace_id="trace-of-receipt"))
    by_type = {type(e): e for e in events}
    assert by_type[LineReserved].trace_id == "trace-of-o1"
    assert by_type[StockLevelChanged].trace_id == "trace-of-receipt"


def test_answers_carry_the_commands_trace_and_source() -> None:
    stock = seeded(5)
    cmd = reserve("o1", 1, trace="t-1")
    for event in stock.reserve(cmd):
        assert (event.trace_id, event.source) == ("t-1", "warehouse")


def test_check_detects_books_that_do_not_add_up() -> None:
    stock = seeded(5)
    stock.reserve(reserve("o1", 3))
    stock.reserved = 2
    with pytest.raises(InvariantViolation, match="sum of allocations"):
        stock.check()


def test_check_detects_units_left_idle_while_orders_wait() -> None:
    stock = seeded(0)
    stock.reserve(reserve("o1", 3))
    stock.on_hand = 2  # goods that bypassed receive(): nobody got them
    with pytest.raises(InvariantViolation, match="available while orders wait"):
        stock.check()


def test_check_detects_a_short_order_missing_from_the_queue() -> None:
    stock = seeded(0)
    stock.reserve(reserve("o1", 3))
    stock.waiting = []
    with pytest.raises(InvariantViolation, match="waiting"):
        stock.check()


def test_view_shows_levels_and_queue_length() -> None:
    stock = seeded(2)
    stock.reserve(reserve("o1", 5))
    assert stock.view() == {"sku": SKU, "on_hand": 2, "reserved": 2, "available": 0, "waiting": 1}


def test_stock_survives_a_json_round_trip_as_table_value() -> None:
    stock = seeded(2)
    stock.reserve(reserve("o1", 5))
    restored = msgspec.json.decode(msgspec.json.encode(stock), type=SkuStock)
    assert restored == stock
    assert lines(restored.receive(receipt(3))) == {"o1": (5, 5)}


def apply(stock: SkuStock, cmd: Message) -> list[Message]:
    """The stock keeper's dispatch, for the operations the property test draws."""
    match cmd:
        case ReserveLine():
            return stock.reserve(cmd)
        case ReceiveStock():
            return stock.receive(cmd)
        case ReleaseLine():
            return stock.release(cmd)
        case ShipLine():
            return stock.ship(cmd)
    raise AssertionError(f"unexpected {cmd.type}")


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_keep_the_books_consistent(seed: int) -> None:
    """Property: any sequence of operations, duplicates and crash replays included, keeps the
    invariants and conserves units; an input whose effect is stored changes nothing and only
    re-announces open orders' reservations and the current stock level."""
    rnd = random.Random(seed)
    initial = rnd.randint(0, 20)
    stock = seeded(initial)
    received = shipped = replays = 0
    # What the emitted LineReserved events say each open order holds: an independent ledger.
    reported: dict[str, int] = {}
    orders = [f"o{i}" for i in range(10)]
    receipts: list[ReceiveStock] = []
    for step in range(300):
        if rnd.random() < 0.15:  # new orders keep coming; old ids stay in play as late duplicates
            orders = orders[1:] + [f"o{10 + step}"]
        op = rnd.choice(["reserve", "reserve", "receive", "receive", "release", "ship", "dup_receipt"])
        order = rnd.choice(orders)
        cmd: Message
        if op == "reserve":
            cmd = reserve(order, rnd.randint(1, 8))
        elif op == "receive":
            cmd = receipt(rnd.randint(1, 10), f"r{len(receipts)}")
            receipts.append(cmd)
            received += cmd.quantity
        elif op == "dup_receipt" and receipts:
            earlier = rnd.choice(receipts)
            cmd = receipt(earlier.quantity, earlier.receipt_id)  # another message, same receipt
        elif op == "release":
            cmd = ReleaseLine(order_id=order, sku=SKU)
        elif op == "ship":
            cmd = ShipLine(order_id=order, sku=SKU)
        else:
            continue  # a duplicate receipt before any receipt
        duplicate = op == "dup_receipt" or (op == "release" and order in stock.closed and order not in stock.requested)
        shipped_before = op == "ship" and order in stock.closed and order not in stock.requested
        before = snapshot(stock)
        events = apply(stock, cmd)
        if duplicate:
            assert stock == before, f"a duplicate {op} changes nothing"
            assert answers_again(events, stock, "received" if op == "dup_receipt" else "released")
        if shipped_before:
            assert stock == before, "a duplicate ship changes nothing"
            assert levels(events) == [("shipped", stock.on_hand, stock.reserved)] and len(events) == 1
        if op == "release":
            reported.pop(order, None)
        elif op == "ship":
            shipped += reported.pop(order, 0)
        for e in events:
            if isinstance(e, LineReserved):
                assert e.reserved >= reported.get(e.order_id, 0), "an open order's reservation never shrinks"
                reported[e.order_id] = e.reserved
        stock.check()
        assert initial + received - shipped == stock.on_hand
        assert sum(reported.values()) == stock.reserved, "every allocation was reported"
        if events and isinstance(events[-1], StockLevelChanged):
            assert (events[-1].on_hand, events[-1].reserved) == (stock.on_hand, stock.reserved)
        if rnd.random() < 0.3:
            # The worker died after storing and before publishing: the same input meets its own
            # effect. Nothing changes, every LineReserved of the first run comes again by id, and
            # so does its stock level (a replayed ReserveLine only answers its line).
            replays += 1
            stored = snapshot(stock)
            replayed = apply(stock, cmd)
            assert stock == stored, f"a replayed {op} changes nothing"
            assert {e.id for e in events if isinstance(e, LineReserved)} <= {e.id for e in replayed}
            for e in replayed:
                if isinstance(e, LineReserved):
                    assert reported.get(e.order_id) == e.reserved, "a replay re-announces what was reported"
            assert all(isinstance(e, LineReserved) for e in replayed[:-1])
            if op == "reserve":
                assert levels(replayed) == []
            else:
                assert level_ids(replayed) == level_ids(events), "the first run's level comes again by id"
                assert levels(replayed) == levels(events) and len(levels(replayed)) <= 1
                assert not replayed or isinstance(replayed[-1], StockLevelChanged)
    assert replays > 50
