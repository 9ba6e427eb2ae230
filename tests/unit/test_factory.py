"""Production per SKU: requests coalesce into batches of min_batch..capacity units with a lead time."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from edpo.domain.factory import KEEP_FINISHED, ProductionLine, ProductionPlan
from edpo.models import (
    CompleteProduction,
    ItemsManufactured,
    ManufactureItems,
    Message,
    ProductionRequested,
    ProductionStarted,
)

SKU = "BOLT"


def ids() -> Callable[[], str]:
    """A deterministic id source: p1, p2, ..."""
    counter = iter(range(1, 1_000_000))
    return lambda: f"p{next(counter)}"


class Plant:
    """A production line with fixed settings and a deterministic id source."""

    def __init__(self, lead_time: float = 5.0, min_batch: int = 10, capacity: int = 100) -> None:
        self.line = ProductionLine(sku=SKU)
        self.plan = ProductionPlan(lead_time=lead_time, min_batch=min_batch, capacity=capacity, new_id=ids())

    def request(self, qty: int, request_id: str, now: float = 0.0) -> list[Message]:
        cmd = ManufactureItems(sku=SKU, quantity=qty, request_id=request_id)
        return self.line.request(cmd, now, self.plan)

    def complete(self, production_id: str, now: float) -> list[Message]:
        cmd = CompleteProduction(sku=SKU, production_id=production_id)
        return self.line.complete(cmd, now, self.plan)


def started(events: list[Message]) -> list[tuple[str, int]]:
    return [(e.production_id, e.quantity) for e in events if isinstance(e, ProductionStarted)]


def made(events: list[Message]) -> list[tuple[str, int]]:
    return [(e.production_id, e.quantity) for e in events if isinstance(e, ItemsManufactured)]


def types(events: list[Message]) -> list[type[Message]]:
    return [type(e) for e in events]


def test_request_is_acknowledged_once_per_request_id() -> None:
    plant = Plant()
    cmd = ManufactureItems(sku=SKU, quantity=20, request_id="q1")
    [ack, _] = plant.line.request(cmd, 0.0, plant.plan)
    assert isinstance(ack, ProductionRequested)
    assert (ack.sku, ack.request_id, ack.correlation_id) == (SKU, "q1", cmd.id)
    resent = ManufactureItems(sku=SKU, quantity=20, request_id="q1")
    [again] = plant.line.request(resent, 1.0, plant.plan)
    assert (type(again), again.id, again.correlation_id) == (ProductionRequested, ack.id, resent.id)
    [other, *_] = plant.request(5, "q2")
    assert isinstance(other, ProductionRequested) and other.id != ack.id


def test_first_request_starts_a_batch_due_after_the_lead_time() -> None:
    plant = Plant(lead_time=5.0)
    assert started(plant.request(20, "q1", now=100.0)) == [("p1", 20)]
    assert plant.line.due_at == 105.0
    assert not plant.line.due(104.9)
    assert plant.line.due(105.0)


def test_small_request_is_rounded_up_to_the_minimum_batch() -> None:
    plant = Plant(min_batch=10)
    assert started(plant.request(3, "q1")) == [("p1", 10)]
    assert plant.line.pending == 0


def test_large_request_is_split_at_capacity() -> None:
    plant = Plant(capacity=100)
    assert started(plant.request(250, "q1")) == [("p1", 100)]
    assert plant.line.pending == 150


def test_duplicate_request_is_produced_once() -> None:
    plant = Plant()
    plant.request(20, "q1")
    assert types(plant.request(20, "q1")) == [ProductionRequested]  # acknowledged again, nothing started
    assert (plant.line.current_id, plant.line.current_qty, plant.line.pending) == ("p1", 20, 0)


def test_requests_for_same_sku_coalesce_into_one_batch() -> None:
    plant = Plant(lead_time=5.0)
    plant.request(20, "q1", now=0.0)
    assert types(plant.request(4, "q2", now=1.0)) == [ProductionRequested]
    assert types(plant.request(7, "q3", now=2.0)) == [ProductionRequested]
    assert (plant.line.current_id, plant.line.pending) == ("p1", 11)
    events = plant.complete("p1", now=5.0)
    assert made(events) == [("p1", 20)]
    assert started(events) == [("p2", 11)]  # q2 and q3 together
    assert plant.line.due_at == 10.0


def test_completed_batch_with_nothing_pending_leaves_the_line_idle() -> None:
    plant = Plant()
    plant.request(20, "q1")
    events = plant.complete("p1", now=5.0)
    assert [type(e) for e in events] == [ItemsManufactured]
    assert (plant.line.current_id, plant.line.produced_total, plant.line.batches) == ("", 20, 1)
    assert not plant.line.due(1e9)


def test_repeated_completion_tick_produces_nothing_twice() -> None:
    """A repeated tick re-announces the finished batch with the same id (the stock books it once by
    production id) and counts nothing twice."""
    plant = Plant()
    plant.request(20, "q1")
    [first] = plant.complete("p1", now=5.0)
    again = plant.complete("p1", now=6.0)
    assert [(type(e), e.id, e.quantity) for e in again] == [(ItemsManufactured, first.id, 20)]
    assert plant.complete("", now=6.0) == []
    assert (plant.line.produced_total, plant.line.batches, plant.line.current_id) == (20, 1, "")


def test_repeated_tick_of_a_batch_that_started_the_next_starts_nothing_more() -> None:
    plant = Plant()
    plant.request(20, "q1")
    plant.request(5, "q2")
    first = plant.complete("p1", now=5.0)
    assert (made(first), started(first)) == ([("p1", 20)], [("p2", 10)])
    again = plant.complete("p1", now=6.0)
    assert [(type(e), e.id) for e in again] == [(ItemsManufactured, first[0].id)]
    assert (plant.line.current_id, plant.line.current_qty, plant.line.due_at, plant.line.pending) == ("p2", 10, 10.0, 0)
    assert (plant.line.produced_total, plant.line.batches) == (20, 1)


def test_only_the_latest_finished_batches_are_remembered() -> None:
    plant = Plant(min_batch=1)
    for i in range(KEEP_FINISHED + 1):
        plant.request(1, f"q{i}")
        plant.complete(f"p{i + 1}", now=float(i))
    assert len(plant.line.finished) == KEEP_FINISHED
    assert plant.complete("p1", now=100.0) == []  # forgotten: too old to be a replay
    assert made(plant.complete("p2", now=100.0)) == [("p2", 1)]
    assert plant.line.produced_total == KEEP_FINISHED + 1


def test_tick_for_another_batch_is_ignored() -> None:
    plant = Plant()
    plant.request(20, "q1")
    assert plant.complete("p-old", now=5.0) == []
    assert plant.line.current_id == "p1"


def test_production_events_carry_the_request_trace() -> None:
    plant = Plant()
    cmd = ManufactureItems(sku=SKU, quantity=5, request_id="q1", trace_id="t-7")
    events = plant.line.request(cmd, 0.0, plant.plan)
    assert types(events) == [ProductionRequested, ProductionStarted]
    assert [(e.trace_id, e.source) for e in events] == [("t-7", "factory"), ("t-7", "factory")]


def test_production_line_survives_a_json_round_trip_as_table_value() -> None:
    plant = Plant()
    plant.request(20, "q1")
    plant.request(4, "q2")
    restored = msgspec.json.decode(msgspec.json.encode(plant.line), type=ProductionLine)
    assert restored == plant.line
    plant.line = restored
    assert made(plant.complete("p1", now=5.0)) == [("p1", 20)]
