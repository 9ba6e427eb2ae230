"""The monitor's read models (edpo/domain/monitor.py) and its handlers over fake tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edpo.agents.monitor.handlers import Monitor
from edpo.agents.monitor.web import batch_rows, dead_letters, has_session, session_value, stock_rows
from edpo.domain.monitor import (
    Board,
    DeadLetterBox,
    OrderView,
    ProductionView,
    SkuView,
    engine_time,
    process_steps,
    timeline,
)
from edpo.models import (
    DeadLetter,
    DeadLetterReplayed,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryStarted,
    ForgetOrderView,
    ItemsManufactured,
    Line,
    OrderAccepted,
    OrderPlaced,
    OrderStatusChanged,
    ProductionStarted,
    StockLevelChanged,
    StockPartiallyReserved,
    StockReserved,
)
from edpo.runtime.http import Api

from .fakes import MemoryTable, RecordingPublish

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
ORDER = "o1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def placed(order_id: str = ORDER, t: float = 0) -> OrderPlaced:
    return OrderPlaced(order_id=order_id, customer_id="c", delivery_address="a", lines=[Line(sku="CABLE", quantity=2)],
                       source="order", time=at(t), trace_id="trace-1")


def status(value: str, t: float, order_id: str = ORDER) -> OrderStatusChanged:
    return OrderStatusChanged(order_id=order_id, status=value, source="order", time=at(t), trace_id="trace-1")


def test_events_arriving_out_of_order_make_one_timeline_in_time_order() -> None:
    view = OrderView(order_id=ORDER)
    accepted = OrderAccepted(order_id=ORDER, source="warehouse", time=at(1), trace_id="trace-1")
    view.apply(status("ACCEPTED", 2), "order-events")
    view.apply(accepted, "warehouse-events")
    view.apply(placed(), "order-events")
    assert [s.name for s in view.steps] == ["OrderPlaced", "OrderAccepted", "OrderStatusChanged"]
    assert view.status == "ACCEPTED"
    assert view.trace_id == "trace-1"
    assert view.placed_at == at(0) and view.updated_at == at(2)
    assert view.steps[1].topic == "warehouse-events" and view.steps[2].detail == "ACCEPTED"


def test_a_duplicate_event_changes_nothing() -> None:
    view = OrderView(order_id=ORDER)
    event = placed()
    assert view.apply(event) is True
    assert view.apply(event) is False
    assert len(view.steps) == 1


def test_a_terminal_status_is_never_left() -> None:
    view = OrderView(order_id=ORDER)
    view.apply(status("DELIVERED", 5))
    view.apply(status("SHIPPED", 6))
    assert view.status == "DELIVERED"
    assert view.delivered_at == at(5)


def test_units_an_order_waits_for_are_counted_until_it_is_reserved() -> None:
    view = OrderView(order_id=ORDER)
    view.apply(StockPartiallyReserved(order_id=ORDER, missing=[Line(sku="DOCK", quantity=3)], time=at(1)))
    assert view.waiting == [Line(sku="DOCK", quantity=3)]
    view.apply(StockReserved(order_id=ORDER, time=at(2)))
    assert view.waiting == []


def test_a_cancelled_order_waits_for_nothing() -> None:
    view = OrderView(order_id=ORDER)
    view.apply(StockPartiallyReserved(order_id=ORDER, missing=[Line(sku="DOCK", quantity=3)], time=at(1)))
    view.apply(status("CANCELLED", 2))
    assert view.waiting == []


def test_a_delivery_is_in_transit_from_its_start_to_its_outcome() -> None:
    view = OrderView(order_id=ORDER)
    view.apply(DeliveryStarted(order_id=ORDER, attempt=1, time=at(1)))
    assert view.in_transit == [1]
    view.apply(DeliveryFailed(order_id=ORDER, attempt=1, reason="nobody home", time=at(2)))
    assert view.in_transit == [] and view.failed_attempts == 1
    view.apply(DeliveryStarted(order_id=ORDER, attempt=2, time=at(3)))
    view.apply(DeliveryCompleted(order_id=ORDER, attempt=2, time=at(4)))
    assert view.in_transit == []
    assert view.steps[1].detail == "attempt 1: nobody home"


def test_an_older_stock_level_does_not_replace_a_newer_one() -> None:
    sku = SkuView(sku="CABLE")
    assert sku.apply(StockLevelChanged(sku="CABLE", on_hand=10, reserved=2, reason="reserved", time=at(2)))
    assert not sku.apply(StockLevelChanged(sku="CABLE", on_hand=12, reserved=0, reason="seeded", time=at(1)))
    assert (sku.on_hand, sku.reserved) == (10, 2)


def test_a_batch_is_in_production_until_its_items_are_made_once() -> None:
    line = ProductionView(sku="DOCK")
    line.apply(ProductionStarted(sku="DOCK", production_id="p1", quantity=10, time=at(1)))
    assert [b.quantity for b in line.batches] == [10]
    made = ItemsManufactured(sku="DOCK", production_id="p1", quantity=10, time=at(2))
    assert line.apply(made)
    assert not line.apply(made)
    assert not line.apply(ProductionStarted(sku="DOCK", production_id="p1", quantity=10, time=at(1)))
    assert line.batches == [] and line.produced == 10


def test_a_replayed_dead_letter_is_no_longer_open() -> None:
    box = DeadLetterBox(key="k")
    letter = DeadLetter(topic="warehouse-commands", partition=1, offset=7, key="k", reason="undecodable: x" * 100,
                        payload="x")
    box.apply(letter)
    box.apply(letter)
    assert (box.total, box.open) == (1, 1)
    assert len(box.letters[0].reason) == 300
    box.apply(DeadLetterReplayed(dead_letter_id=letter.id, key="k", topic="warehouse-commands", partition=1, offset=9))
    assert box.open == 0 and box.letters[0].replayed
    assert not box.apply(DeadLetterReplayed(dead_letter_id=letter.id, key="k", topic="t", partition=1, offset=9))


def test_the_board_counts_every_status_and_the_orders_per_minute() -> None:
    board = Board()
    for i, final in enumerate(["DELIVERED", "DELIVERED", "ACCEPTED"]):
        view = OrderView(order_id=f"o{i}")
        view.apply(placed(f"o{i}", t=i * 70))
        view.apply(status(final, i * 70 + 5, f"o{i}"))
        board.put(view)
    counts = board.counts()
    assert list(counts)[:2] == ["PLACED", "ACCEPTED"] and len(counts) == 10
    assert (counts["DELIVERED"], counts["ACCEPTED"], counts["PLACED"]) == (2, 1, 0)
    minutes = board.throughput(at(200), minutes=5)
    assert len(minutes) == 5 and minutes[-1].minute == T0 + timedelta(minutes=3)
    assert [m.placed for m in minutes] == [0, 1, 1, 1, 0]
    assert [m.delivered for m in minutes] == [0, 1, 1, 0, 0]
    assert [b.order_id for b in board.recent(2)] == ["o2", "o1"]


def test_search_finds_the_exact_id_first_then_ids_starting_with_the_text() -> None:
    board = Board()
    for order_id, t in [("ab", 0), ("abc", 5), ("abd", 3), ("x", 9)]:
        view = OrderView(order_id=order_id)
        view.apply(placed(order_id, t))
        board.put(view)
    assert [b.order_id for b in board.search("ab")] == ["ab", "abc", "abd"]
    assert [b.order_id for b in board.search(" AB ", limit=2)] == ["ab", "abc"]
    assert board.search("zz") == []


def test_process_steps_leave_out_gateways_and_mark_user_tasks_and_incidents() -> None:
    activities = [
        {"id": "a1", "activityId": "start", "activityName": "Order accepted", "activityType": "startEvent",
         "startTime": "2026-11-28T12:00:01.000+0000", "endTime": "2026-11-28T12:00:01.250+0000"},
        {"id": "a2", "activityId": "gw", "activityType": "exclusiveGateway",
         "startTime": "2026-11-28T12:00:02.000+0000"},
        {"id": "a3", "activityId": "decide", "activityName": "Resolve overdue delivery", "activityType": "userTask",
         "startTime": "2026-11-28T12:00:03.000+0000", "endTime": None},
    ]
    incidents = [{"id": "i1", "activityId": "pack", "createTime": "2026-11-28T12:00:02.500+0000",
                  "incidentMessage": "warehouse away", "resolved": False, "deleted": False}]
    steps = process_steps(activities, incidents)
    assert [(s.kind, s.name) for s in steps] == [
        ("activity", "Order accepted"), ("user task", "Resolve overdue delivery"), ("incident", "Incident at pack")]
    assert steps[0].detail == "startEvent, 0.25 s" and steps[1].detail == "userTask, active"
    assert steps[2].detail == "open: warehouse away"
    view = OrderView(order_id=ORDER)
    view.apply(placed(t=1.5))
    assert [s.name for s in timeline(view, steps)] == ["Order accepted", "OrderPlaced", "Incident at pack",
                                                       "Resolve overdue delivery"]


def test_engine_times_are_read_with_their_offset() -> None:
    assert engine_time("2026-11-28T13:00:00.000+0100") == T0
    assert engine_time(None) is None


async def test_the_monitor_keeps_orders_stock_and_dead_letters_and_counts_changes() -> None:
    orders, stock, production, letters = MemoryTable(), MemoryTable(), MemoryTable(), MemoryTable()
    board = Board()
    monitor = Monitor(orders, stock, production, letters, board)
    first = placed()
    await monitor.on_order_event(first)
    await monitor.on_order_event(first)  # a duplicate
    await monitor.on_order_event(StockPartiallyReserved(order_id=ORDER, missing=[Line(sku="CABLE", quantity=1)]))
    await monitor.on_stock_level(StockLevelChanged(sku="CABLE", on_hand=5, reserved=4, reason="reserved"))
    await monitor.on_production(ProductionStarted(sku="CABLE", production_id="p", quantity=10))
    await monitor.on_dead_letter(DeadLetter(topic="t", partition=0, offset=1, key=None, reason="r", payload=""))
    assert monitor.changes == 5
    assert orders.get(ORDER).status == "PLACED" and board.briefs[ORDER].waiting == [Line(sku="CABLE", quantity=1)]
    assert [step.topic for step in orders.get(ORDER).steps] == ["order-events", "warehouse-events"], \
        "each step names the topic its event travels on"
    [row] = stock_rows(monitor)
    assert (row.on_hand, row.reserved, row.available, row.waiting, row.in_production) == (5, 4, 1, 1, 10)
    assert [b.production_id for b in batch_rows(monitor)] == ["p"]
    assert dead_letters(monitor).count == 1 and dead_letters(monitor).items[0].key == ""


async def test_an_order_finished_longer_than_the_retention_ago_is_forgotten_and_no_other() -> None:
    orders = MemoryTable()
    board = Board()
    publish = RecordingPublish()
    now = [at(0)]
    monitor = Monitor(orders, MemoryTable(), MemoryTable(), MemoryTable(), board, publish,
                      retention=timedelta(hours=1), clock=lambda: now[0])
    for order_id, final in [("done", "DELIVERED"), ("open", "SHIPPED")]:
        await monitor.on_order_event(placed(order_id))
        await monitor.on_order_event(status(final, 1, order_id))
    now[0] = at(3599)
    await monitor.forget_finished()
    assert publish.sent == []
    now[0] = at(3602)
    await monitor.forget_finished()
    await monitor.forget_finished()  # not sent again while the first is on its way
    assert [(type(m), m.order_id) for m in publish.sent] == [(ForgetOrderView, "done")]
    await monitor.on_forget_order_view(publish.sent[0])
    assert orders.get("done") is None and "done" not in board.briefs
    assert orders.get("open") is not None and board.counts()["SHIPPED"] == 1
    await monitor.on_forget_order_view(ForgetOrderView(order_id="open"))  # a tick for an order still going
    assert orders.get("open") is not None


class _Request:
    def __init__(self, cookies: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self.cookies = cookies
        self.headers = headers or {}


def test_the_session_cookie_stands_for_the_token_and_nothing_else() -> None:
    token = "s3cret"
    assert session_value(token) != token
    assert has_session(token, _Request({"edpo_monitor": session_value(token)}))
    assert not has_session(token, _Request({"edpo_monitor": session_value("other")}))
    assert not has_session(token, _Request({}))
    assert not has_session("", _Request({"edpo_monitor": session_value("")}))
    api = Api("t", "", token=token)
    api.also_authorized = lambda request: has_session(token, request)
    assert api.authorized(_Request({"edpo_monitor": session_value(token)}))  # type: ignore[arg-type]
    assert api.authorized(_Request({}, {"Authorization": f"Bearer {token}"}))  # type: ignore[arg-type]
    assert not api.authorized(_Request({"edpo_monitor": "nope"}))  # type: ignore[arg-type]
