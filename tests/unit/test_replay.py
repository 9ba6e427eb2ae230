"""The replay rule (issue 7, guarantee 1): a handler stores its new state, then publishes; a worker
killed in between is given the same input again and meets its own stored effect. It must then
emit again what the input emitted the first time, with the same ids (receivers drop duplicates
by id), and change nothing: no second reservation, batch, courier or shipment.

Each case runs a domain handler once, keeps its state as the table stores it, runs the same input
again on that stored state, and compares. The handler-level tests below kill the worker for real:
the publisher fails after the table was written, and Kafka redelivers the message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from edpo.agents.delivery.handlers import Courier
from edpo.agents.factory.handlers import Factory
from edpo.agents.warehouse.handlers import Warehouse
from edpo.config.catalog import Catalog, CatalogItem
from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.domain.factory import ProductionLine, ProductionPlan
from edpo.domain.reservation import OrderReservation, accept
from edpo.domain.stock import SkuStock
from edpo.models import (
    AcceptOrder,
    CompleteProduction,
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryStarted,
    FinishDelivery,
    GoodsPacked,
    GoodsPicked,
    GoodsShipped,
    ItemsManufactured,
    Line,
    LineReserved,
    ManufactureItems,
    Message,
    OrderAccepted,
    PackGoods,
    ProductionRequested,
    ProductionStarted,
    ReceiveStock,
    ReleaseLine,
    ReleaseStock,
    ReservationAccepted,
    ReserveLine,
    ReserveStock,
    SeedStock,
    ShipLine,
    StartDelivery,
    StockLevelChanged,
    StockPartiallyReserved,
    StockReleased,
    StockReserved,
)
from tests.unit.fakes import FakeCommands, MemoryTable, RecordingPublish

SKU = "A"
ORDER = "o1"
POLICY = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.0, courier_time=3.0)


def stored(state: Any) -> Any:
    """The state as the table keeps it (a JSON round trip)."""
    return msgspec.json.decode(msgspec.json.encode(state), type=type(state))


def ids(events: list[Message], kinds: tuple[type[Message], ...]) -> list[tuple[str, str]]:
    """(type, id) of the events of the given kinds, in order."""
    return [(e.type, e.id) for e in events if isinstance(e, kinds)]


@dataclass
class Case:
    """A state, an input and the handler taking it; `facts` are the kinds a replay must repeat by id."""

    state: Any
    handle: Callable[[Any], list[Message]]
    facts: tuple[type[Message], ...]
    expect: list[type[Message]]  # the kinds of the first run, so the case tests what it claims to

    def run(self) -> tuple[list[Message], list[Message], Any]:
        """First run, then the replay on the stored state; returns both outputs and the state before the replay."""
        first = self.handle(self.state)
        assert [type(e) for e in first] == self.expect
        after = stored(self.state)
        replayed_state = stored(self.state)
        replay = self.handle(replayed_state)
        assert replayed_state == after, "a replay changes nothing"
        return first, replay, after


# --- stock of one SKU -----------------------------------------------------------------------------


def stock(on_hand: int, *orders: tuple[str, int]) -> SkuStock:
    """Seeded stock with orders reserved in turn (the later ones may wait)."""
    s = SkuStock(sku=SKU)
    s.seed(SeedStock(sku=SKU, quantity=on_hand))
    for order, qty in orders:
        s.reserve(ReserveLine(order_id=order, sku=SKU, quantity=qty, trace_id=f"trace-{order}"))
    return s


def unseeded_with_waiting_orders() -> SkuStock:
    s = SkuStock(sku=SKU)
    s.reserve(ReserveLine(order_id="o1", sku=SKU, quantity=2))
    s.reserve(ReserveLine(order_id="o2", sku=SKU, quantity=5))
    return s


SEED = SeedStock(sku=SKU, quantity=4)
NEW_LINE = ReserveLine(order_id="o9", sku=SKU, quantity=3)
RECEIPT = ReceiveStock(sku=SKU, quantity=6, receipt_id="r1")
BATCH = ItemsManufactured(sku=SKU, production_id="p1", quantity=6)
RELEASE = ReleaseLine(order_id="o1", sku=SKU)
SHIP = ShipLine(order_id="o1", sku=SKU)

# The facts a replay repeats by id: every LineReserved and the stock level of the first run. A
# replayed ReserveLine answers its line again but does not repeat the "reserved" level.
REPEATS_LEVEL = (LineReserved, StockLevelChanged)

STOCK_CASES: dict[str, Callable[[], Case]] = {
    "seed serving waiting orders": lambda: Case(
        unseeded_with_waiting_orders(), lambda s: s.seed(SEED), REPEATS_LEVEL,
        [LineReserved, LineReserved, StockLevelChanged]),
    "reserve with units": lambda: Case(stock(5), lambda s: s.reserve(NEW_LINE), (LineReserved,),
                               [LineReserved, StockLevelChanged]),
    "reserve that waits": lambda: Case(stock(0), lambda s: s.reserve(NEW_LINE), (LineReserved,), [LineReserved]),
    "receipt serving waiting orders": lambda: Case(
        stock(2, ("o1", 3), ("o2", 4)), lambda s: s.receive(RECEIPT), REPEATS_LEVEL,
        [LineReserved, LineReserved, StockLevelChanged]),
    "batch serving a waiting order": lambda: Case(
        stock(0, ("o1", 3)), lambda s: s.receive(BATCH), REPEATS_LEVEL,
        [LineReserved, StockLevelChanged]),
    "release handing units on": lambda: Case(
        stock(4, ("o1", 4), ("o2", 1), ("o3", 2)), lambda s: s.release(RELEASE), REPEATS_LEVEL,
        [LineReserved, LineReserved, StockLevelChanged]),
    "ship": lambda: Case(stock(5, ("o1", 2), ("o2", 1)), lambda s: s.ship(SHIP), REPEATS_LEVEL,
                 [StockLevelChanged]),
}


@pytest.mark.parametrize("make", STOCK_CASES.values(), ids=STOCK_CASES.keys())
def test_replayed_stock_input_repeats_its_reservations_and_books_nothing_twice(
        make: Callable[[], Case]) -> None:
    case = make()
    first, replay, after = case.run()
    after.check()
    # Every LineReserved of the first run comes again by id, and so does its level ...
    assert set(ids(first, case.facts)) <= set(ids(replay, case.facts))
    levels_again = ids(first, (StockLevelChanged,)) if StockLevelChanged in case.facts else []
    assert ids(replay, (StockLevelChanged,)) == levels_again
    # ... anything else is a LineReserved telling an open order what it already holds, once ...
    reannounced = [e for e in replay if isinstance(e, LineReserved)]
    assert all(e.order_id in after.requested and after.allocated[e.order_id] == e.reserved for e in reannounced)
    assert len({e.order_id for e in reannounced}) == len(reannounced)
    # ... and the level, if any, comes last and tells the stored level.
    assert replay[:len(reannounced)] == reannounced
    for level in replay[len(reannounced):]:
        assert isinstance(level, StockLevelChanged)
        assert (level.on_hand, level.reserved) == (after.on_hand, after.reserved)


def test_replayed_receipt_is_booked_once_and_its_orders_hear_the_same_news() -> None:
    s = stock(0, ("o1", 3), ("o2", 4))
    first = s.receive(RECEIPT)
    replay = stored(s).receive(RECEIPT)
    assert (s.on_hand, s.reserved, s.allocated) == (6, 6, {"o1": 3, "o2": 3})
    assert ids(replay, (LineReserved,)) == ids(first, (LineReserved,))
    assert ids(replay, (StockLevelChanged,)) == ids(first, (StockLevelChanged,)) != []
    assert [e.trace_id for e in replay if isinstance(e, LineReserved)] == ["trace-o1", "trace-o2"], \
        "still in each order's trace"


# --- one order in the warehouse -------------------------------------------------------------------


def reservation(*lines: tuple[str, int], answered: dict[str, int] | None = None) -> OrderReservation:
    r, _ = accept(AcceptOrder(order_id=ORDER, lines=[Line(sku=s, quantity=q) for s, q in lines]), {"A", "B"})
    assert r is not None
    r.reserve(ReserveStock(order_id=ORDER, lines=[]))
    for sku, n in (answered or {}).items():
        r.on_line_reserved(LineReserved(order_id=ORDER, sku=sku, requested=dict(lines)[sku], reserved=n))
    return r


ACCEPT = AcceptOrder(order_id=ORDER, lines=[Line(sku="A", quantity=2)])
RESERVE = ReserveStock(order_id=ORDER, lines=[Line(sku="A", quantity=2), Line(sku="B", quantity=1)])
LAST_LINE = LineReserved(order_id=ORDER, sku="B", requested=1, reserved=1)
SHORT_LINE = LineReserved(order_id=ORDER, sku="B", requested=1, reserved=0)
COMPLETING_LINE = LineReserved(order_id=ORDER, sku="A", requested=2, reserved=2)
PACK = PackGoods(order_id=ORDER)
RELEASE_STOCK = ReleaseStock(order_id=ORDER)
DELIVERED = DeliveryCompleted(order_id=ORDER, attempt=1)

RESERVATION_CASES: dict[str, Callable[[], Case]] = {
    "accept (resent)": lambda: Case(
        reservation(("A", 2)), lambda r: r.reaccept(ACCEPT), (OrderAccepted,), [OrderAccepted]),
    "reserve": lambda: Case(
        OrderReservation(order_id=ORDER, lines={}, accepted=True), lambda r: r.reserve(RESERVE),
        (ReservationAccepted, ReserveLine), [ReservationAccepted, ReserveLine, ReserveLine]),
    "last line: full": lambda: Case(
        reservation(("A", 2), ("B", 1), answered={"A": 2}), lambda r: r.on_line_reserved(LAST_LINE),
        (StockReserved,), [StockReserved]),
    "last line: partial": lambda: Case(
        reservation(("A", 2), ("B", 1), answered={"A": 2}), lambda r: r.on_line_reserved(SHORT_LINE),
        (StockPartiallyReserved,), [StockPartiallyReserved]),
    "backorder completes": lambda: Case(
        reservation(("A", 2), ("B", 1), answered={"A": 1, "B": 1}), lambda r: r.on_line_reserved(COMPLETING_LINE),
        (StockReserved,), [StockReserved]),
    "pack": lambda: Case(
        reservation(("A", 2), answered={"A": 2}), lambda r: r.pack(PACK), (GoodsPicked, GoodsPacked),
        [GoodsPicked, GoodsPacked]),
    "release": lambda: Case(
        reservation(("A", 2), ("B", 1), answered={"A": 2}), lambda r: r.release(RELEASE_STOCK),
        (ReleaseLine, StockReleased), [ReleaseLine, ReleaseLine, StockReleased]),
    "ship": lambda: Case(
        reservation(("A", 2), ("B", 1), answered={"A": 2, "B": 1}), lambda r: r.ship(DELIVERED),
        (ShipLine, GoodsShipped), [ShipLine, ShipLine, GoodsShipped]),
}


@pytest.mark.parametrize("make", RESERVATION_CASES.values(), ids=RESERVATION_CASES.keys())
def test_replayed_order_input_emits_exactly_what_it_emitted(make: Callable[[], Case]) -> None:
    case = make()
    first, replay, _ = case.run()
    assert ids(replay, case.facts) == ids(first, case.facts)
    assert [type(e) for e in replay] == case.expect


def test_replayed_reply_still_answers_its_command() -> None:
    r = reservation(("A", 2), answered={"A": 2})
    first = r.pack(PACK)
    replay = stored(r).pack(PACK)
    assert [e.correlation_id for e in replay if isinstance(e, GoodsPacked)] == [PACK.id]
    assert ids(replay, (GoodsPacked,)) == ids(first, (GoodsPacked,))


def test_replayed_release_and_ship_reach_the_stock_once() -> None:
    """Even a stock keeper that did not drop the re-sent ReleaseLine or ShipLine by id books it once."""
    a = stock(3, (ORDER, 2), ("o2", 3))  # o2 waits for 2
    released = reservation(("A", 2), answered={"A": 2})
    lines = [e for e in released.release(RELEASE_STOCK) + stored(released).release(RELEASE_STOCK)
             if isinstance(e, ReleaseLine)]
    assert len(lines) == 2 and lines[0].id == lines[1].id
    for line in lines:
        a.release(line)
        a.check()
    assert (a.on_hand, a.reserved, a.allocated) == (3, 3, {"o2": 3})

    b = stock(5, (ORDER, 2))
    shipped = reservation(("A", 2), answered={"A": 2})
    ships = [e for e in shipped.ship(DELIVERED) + stored(shipped).ship(DELIVERED) if isinstance(e, ShipLine)]
    assert len(ships) == 2 and ships[0].id == ships[1].id
    for ship in ships:
        b.ship(ship)
        b.check()
    assert (b.on_hand, b.reserved) == (3, 0)


# --- factory and courier --------------------------------------------------------------------------


def plant() -> tuple[ProductionLine, ProductionPlan]:
    counter = iter(range(1, 1_000_000))
    return ProductionLine(sku=SKU), ProductionPlan(lead_time=5.0, min_batch=1, capacity=100,
                                                   new_id=lambda: f"p{next(counter)}")


def test_replayed_manufacture_request_is_acknowledged_again_and_starts_nothing_more() -> None:
    line, plan = plant()
    cmd = ManufactureItems(sku=SKU, quantity=4, request_id="o1:A")
    first = line.request(cmd, 0.0, plan)
    assert [type(e) for e in first] == [ProductionRequested, ProductionStarted]
    again = stored(line)
    replay = again.request(cmd, 1.0, plan)
    assert ids(replay, (ProductionRequested,)) == ids(first, (ProductionRequested,))
    assert not any(isinstance(e, ProductionStarted) and e.production_id != "p1" for e in replay)
    assert again == line and (again.current_id, again.current_qty, again.pending) == ("p1", 4, 0)


def test_replayed_completion_announces_the_same_goods_and_counts_them_once() -> None:
    line, plan = plant()
    line.request(ManufactureItems(sku=SKU, quantity=4, request_id="q1"), 0.0, plan)
    line.request(ManufactureItems(sku=SKU, quantity=2, request_id="q2"), 0.0, plan)
    tick = CompleteProduction(sku=SKU, production_id="p1")
    first = line.complete(tick, 5.0, plan)
    assert [type(e) for e in first] == [ItemsManufactured, ProductionStarted]
    again = stored(line)
    replay = again.complete(tick, 6.0, plan)
    assert ids(replay, (ItemsManufactured,)) == ids(first, (ItemsManufactured,))
    assert not any(isinstance(e, ProductionStarted) and e.production_id != "p2" for e in replay)
    assert again == line and (again.produced_total, again.batches, again.current_id) == (4, 1, "p2")
    # The warehouse books the batch once, by production id, however often it is announced.
    s = stock(0)
    for goods in [e for e in first + replay if isinstance(e, ItemsManufactured)]:
        s.receive(goods)
    assert s.on_hand == 4


@pytest.mark.parametrize(("address", "outcome"), [("Main St 1", DeliveryCompleted), ("unreachable", DeliveryFailed)])
def test_replayed_delivery_start_and_finish_repeat_the_same_facts(address: str, outcome: type[Message]) -> None:
    delivery = Delivery(order_id=ORDER)
    start = StartDelivery(order_id=ORDER, attempt=1, delivery_address=address)
    first = delivery.start(start, 0.0, POLICY, roll=0.5)
    again = stored(delivery)
    replay = again.start(start, 1.0, POLICY, roll=0.0)
    assert ids(replay, (DeliveryAccepted, DeliveryStarted)) == ids(first, (DeliveryAccepted, DeliveryStarted))
    assert again == delivery and list(again.attempts) == ["1"]

    tick = FinishDelivery(order_id=ORDER, attempt=1)
    done = delivery.finish(tick)
    again = stored(delivery)
    replay = again.finish(tick)
    assert [type(e) for e in done] == [outcome]
    assert ids(replay, (outcome,)) == ids(done, (outcome,))
    assert again == delivery and again.due(1e9) == []


# --- a worker killed between storing and publishing -----------------------------------------------


class WorkerKilled(Exception):
    pass


class DiesOnFirstPublish(RecordingPublish):
    """A publisher whose worker dies before the first batch reaches Kafka; later batches go through."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[Message] | None = None

    async def __call__(self, *messages: Message, wait: bool = False) -> None:
        if self.lost is None:
            self.lost = list(messages)
            raise WorkerKilled
        await super().__call__(*messages, wait=wait)


async def crash_then_redeliver(handle: Callable[[Message], Any], table: MemoryTable[Any], msg: Message,
                               publish: DiesOnFirstPublish) -> tuple[list[Message], dict[str, Any]]:
    """Handle msg until the worker dies after storing; redeliver it; return what was lost and the table then."""
    with pytest.raises(WorkerKilled):
        await handle(msg)
    assert publish.lost
    after_crash = copy.deepcopy(table.rows)
    await handle(msg)
    assert table.rows == after_crash, "the redelivery changed the stored state"
    return publish.lost, after_crash


CATALOG = Catalog(skus=[CatalogItem(sku="A", stock=5), CatalogItem(sku="B", stock=3)])


def warehouse(stock_rows: dict[str, SkuStock] | None = None,
              reservations: dict[str, OrderReservation] | None = None) -> tuple[Warehouse, DiesOnFirstPublish]:
    publish = DiesOnFirstPublish()
    return Warehouse(CATALOG, MemoryTable(stock_rows), MemoryTable(reservations), publish, FakeCommands()), publish


@pytest.mark.parametrize(("msg", "facts"), [
    (ReserveLine(order_id="o9", sku=SKU, quantity=2), (LineReserved,)),
    (ReceiveStock(sku=SKU, quantity=6, receipt_id="r1"), REPEATS_LEVEL),
    (ReleaseLine(order_id="o1", sku=SKU), REPEATS_LEVEL),
    (ShipLine(order_id="o1", sku=SKU), (StockLevelChanged,)),
], ids=["reserve", "receive", "release", "ship"])
async def test_stock_keeper_killed_after_storing_republishes_on_redelivery(msg: Message,
                                                                          facts: tuple[type[Message], ...]) -> None:
    w, publish = warehouse(stock_rows={SKU: stock(3, ("o1", 3), ("o2", 2))})
    lost, rows = await crash_then_redeliver(w.stock_keeper_handlers()[type(msg)], w.stock_by_sku, msg, publish)
    assert ids(lost, facts), "the case loses a reservation"
    assert set(ids(lost, facts)) <= set(ids(publish.sent, facts))
    rows[SKU].check()


@pytest.mark.parametrize(("msg", "state", "facts"), [
    (ACCEPT, None, (OrderAccepted,)),
    (RESERVE, None, (ReservationAccepted, ReserveLine)),
    (LAST_LINE, reservation(("A", 2), ("B", 1), answered={"A": 2}), (StockReserved,)),
    (PACK, reservation(("A", 2), answered={"A": 2}), (GoodsPicked, GoodsPacked)),
    (RELEASE_STOCK, reservation(("A", 2), ("B", 1)), (ReleaseLine, StockReleased)),
    (DELIVERED, reservation(("A", 2), answered={"A": 2}), (ShipLine, GoodsShipped)),
], ids=["accept", "reserve", "line", "pack", "release", "ship"])
async def test_order_desk_killed_after_storing_republishes_on_redelivery(
        msg: Message, state: OrderReservation | None, facts: tuple[type[Message], ...]) -> None:
    w, publish = warehouse(reservations={ORDER: state} if state else None)
    lost, _ = await crash_then_redeliver(w.order_desk_handlers()[type(msg)], w.reservations_by_order, msg,
                                     publish)
    assert ids(lost, facts)
    assert ids(publish.sent, facts) == ids(lost, facts)


async def test_factory_killed_after_storing_republishes_on_redelivery() -> None:
    publish = DiesOnFirstPublish()
    table: MemoryTable[ProductionLine] = MemoryTable()
    _, plan = plant()
    factory = Factory(plan, table, publish, FakeCommands(), clock=lambda: 0.0)
    manufacture = ManufactureItems(sku=SKU, quantity=4, request_id="q1")
    lost, _ = await crash_then_redeliver(factory.on_manufacture_items, table, manufacture, publish)
    assert ids(publish.sent, (ProductionRequested,)) == ids(lost, (ProductionRequested,)) != []

    publish.lost, publish.sent = None, []
    complete = CompleteProduction(sku=SKU, production_id="p1")
    lost, rows = await crash_then_redeliver(factory.on_complete_production, table, complete, publish)
    assert ids(publish.sent, (ItemsManufactured,)) == ids(lost, (ItemsManufactured,)) != []
    assert (rows[SKU].produced_total, rows[SKU].batches) == (4, 1)


async def test_courier_killed_after_storing_republishes_on_redelivery() -> None:
    publish = DiesOnFirstPublish()
    table: MemoryTable[Delivery] = MemoryTable()
    now = [0.0]
    courier = Courier(POLICY, table, publish, clock=lambda: now[0], dice=lambda: 0.5)
    start = StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1")
    lost, _ = await crash_then_redeliver(courier.on_start_delivery, table, start, publish)
    facts = (DeliveryAccepted, DeliveryStarted)
    assert ids(publish.sent, facts) == ids(lost, facts) != []

    publish.lost, publish.sent = None, []
    now[0] = 1000.0  # the courier's time is up
    finish = FinishDelivery(order_id=ORDER, attempt=1)
    lost, rows = await crash_then_redeliver(courier.on_finish_delivery, table, finish, publish)
    assert ids(publish.sent, (DeliveryCompleted,)) == ids(lost, (DeliveryCompleted,)) != []
    assert rows[ORDER].attempts["1"].status == "delivered"
