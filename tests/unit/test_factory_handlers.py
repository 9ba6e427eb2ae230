"""The factory's handlers over its production lines, publisher and clock (domain rules: test_factory)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edpo.agents.factory.handlers import Factory
from edpo.domain.factory import ProductionLine, ProductionPlan
from edpo.models import (
    CompleteProduction,
    ItemsManufactured,
    ManufactureItems,
    Message,
    ProductionRequested,
    ProductionStarted,
    caused_by,
)
from edpo.runtime.commands import CommandUnanswered
from tests.unit.fakes import FakeCommands, MemoryTable, RecordingPublish, external_task

LEAD_TIME = 10.0


def acknowledge(cmd: Message) -> Message:
    """The factory's answer to a ManufactureItems."""
    assert isinstance(cmd, ManufactureItems)
    return caused_by(cmd, ProductionRequested, source="factory", reply=True, once_per=cmd.request_id, sku=cmd.sku,
                     request_id=cmd.request_id)


class Rig:
    """A factory over an in-memory table, with a clock the test sets and ids p1, p2, ..."""

    def __init__(self, lines: dict[str, ProductionLine] | None = None,
                 answer: Callable[[Message], Message] | None = acknowledge) -> None:
        self.now = 1000.0
        self.table = MemoryTable(lines)
        self.publish = RecordingPublish()
        self.commands = FakeCommands(answer)
        counter = iter(range(1, 1_000_000))
        plan = ProductionPlan(lead_time=LEAD_TIME, min_batch=1, capacity=100, new_id=lambda: f"p{next(counter)}")
        self.factory = Factory(plan, self.table, self.publish, self.commands, clock=lambda: self.now)


def running(sku: str, production_id: str, due_at: float) -> ProductionLine:
    return ProductionLine(sku=sku, current_id=production_id, current_qty=5, due_at=due_at)


def ticks(publish: RecordingPublish) -> list[tuple[str, str]]:
    return [(m.sku, m.production_id) for m in publish.sent if isinstance(m, CompleteProduction)]


async def test_manufacture_request_is_acknowledged_and_starts_a_batch_due_after_the_lead_time() -> None:
    rig = Rig()
    cmd = ManufactureItems(sku="A", quantity=5, request_id="o-1:A")
    await rig.factory.on_manufacture_items(cmd)
    stored = rig.table.get("A")
    assert stored is not None and (stored.current_id, stored.current_qty, stored.due_at) == ("p1", 5, 1000.0 + LEAD_TIME)
    assert rig.publish.types() == [ProductionRequested, ProductionStarted]
    ack, begun = rig.publish.sent
    assert (ack.correlation_id, ack.request_id) == (cmd.id, "o-1:A")
    assert isinstance(begun, ProductionStarted) and begun.production_id == "p1"


async def test_completed_batch_is_stored_and_its_goods_published() -> None:
    rig = Rig({"A": running("A", "p0", due_at=990.0)})
    await rig.factory.on_complete_production(CompleteProduction(sku="A", production_id="p0"))
    stored = rig.table.get("A")
    assert stored is not None and (stored.current_id, stored.produced_total, stored.batches) == ("", 5, 1)
    assert [(type(m), m.quantity) for m in rig.publish.sent if isinstance(m, ItemsManufactured)] == [
        (ItemsManufactured, 5)]
    assert len(rig.publish.sent) == 1


@pytest.mark.parametrize("msg", [
    ProductionStarted(sku="A", production_id="p1", quantity=5),
    ItemsManufactured(sku="A", production_id="p1", quantity=5),
], ids=lambda m: m.type)
async def test_factory_declares_no_handler_for_messages_it_does_not_handle(msg: Message) -> None:
    assert type(msg) not in Rig().factory.handlers(), "the agent loop skips what has no handler"


async def test_timer_ticks_only_batches_whose_lead_time_is_over() -> None:
    rig = Rig({
        "A": running("A", "pa", due_at=1000.0),
        "B": running("B", "pb", due_at=1000.1),
        "C": ProductionLine(sku="C"),  # idle
    })
    await rig.factory.finish_due_batches()
    assert ticks(rig.publish) == [("A", "pa")]


async def test_timer_ticks_a_due_batch_once_while_the_agent_catches_up() -> None:
    rig = Rig({"A": running("A", "pa", due_at=900.0)})
    await rig.factory.finish_due_batches()
    rig.now += 1.0
    await rig.factory.finish_due_batches()
    assert ticks(rig.publish) == [("A", "pa")]
    rig.now += 60.0  # the tick got lost: send it again
    await rig.factory.finish_due_batches()
    assert ticks(rig.publish) == [("A", "pa"), ("A", "pa")]


async def test_replenishment_task_requests_each_missing_sku_and_waits_for_the_acknowledgments() -> None:
    rig = Rig()
    missing = [{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 1}]
    result = await rig.factory.request_replenishment(
        external_task("request-replenishment", "o-1", missing=missing, trace_id="tr"))
    assert [(type(m), m.sku, m.quantity, m.request_id, m.order_id, m.trace_id, replies)
            for m, replies in rig.commands.requested] == [
        (ManufactureItems, "A", 3, "o-1:A", "o-1", "tr", (ProductionRequested,)),
        (ManufactureItems, "B", 1, "o-1:B", "o-1", "tr", (ProductionRequested,)),
    ]
    assert rig.publish.sent == [] and rig.commands.sent == []  # only through the acknowledged requests
    assert result.is_success()


async def test_retried_replenishment_task_sends_the_same_request_ids() -> None:
    rig = Rig()
    task = external_task("request-replenishment", "o-1", missing=[{"sku": "A", "quantity": 3}])
    await rig.factory.request_replenishment(task)
    await rig.factory.request_replenishment(task)
    assert [m.request_id for m, _ in rig.commands.requested] == ["o-1:A", "o-1:A"]


async def test_unacknowledged_replenishment_fails_the_task_call() -> None:
    def unanswered(cmd: Message) -> Message:
        raise CommandUnanswered(f"{cmd.type}: no acknowledgment")

    rig = Rig(answer=unanswered)
    with pytest.raises(CommandUnanswered):
        await rig.factory.request_replenishment(
            external_task("request-replenishment", "o-1", missing=[{"sku": "A", "quantity": 3}]))
