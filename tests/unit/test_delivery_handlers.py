"""The courier's handlers over its deliveries, publisher, clock and dice (domain rules: test_delivery)."""

from __future__ import annotations

import pytest

from edpo.agents.delivery.handlers import Courier
from edpo.domain.delivery import RANDOM_FAILURE, Attempt, Delivery, DeliveryPolicy
from edpo.models import (
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryRejected,
    DeliveryStarted,
    DeliveryWithdrawn,
    FinishDelivery,
    ForgetDelivery,
    Message,
    StartDelivery,
    WithdrawDelivery,
)
from tests.unit.fakes import MemoryTable, RecordingPublish

ORDER = "o-1"
POLICY = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.5, courier_time=3.0)


class Rig:
    """A courier over an in-memory table, with a clock and a dice roll the test sets."""

    def __init__(self, deliveries: dict[str, Delivery] | None = None, roll: float = 0.9) -> None:
        self.now = 100.0
        self.roll = roll
        self.table = MemoryTable(deliveries)
        self.publish = RecordingPublish()
        self.courier = Courier(POLICY, self.table, self.publish, clock=lambda: self.now, dice=lambda: self.roll)


def in_transit(due_at: float, failure: str = "") -> Attempt:
    return Attempt(status="in_transit", due_at=due_at, failure=failure, address="Main St 1")


def ticks(publish: RecordingPublish) -> list[tuple[str, int]]:
    return [(m.order_id, m.attempt) for m in publish.sent if isinstance(m, FinishDelivery)]


async def test_start_delivery_is_stored_due_after_the_courier_time_and_acknowledged() -> None:
    rig = Rig()
    cmd = StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1")
    await rig.courier.on_start_delivery(cmd)
    stored = rig.table.get(ORDER)
    assert stored is not None and stored.attempts["1"].due_at == 103.0 and stored.attempts["1"].failure == ""
    assert [(type(m), m.correlation_id) for m in rig.publish.sent] == [
        (DeliveryAccepted, cmd.id), (DeliveryStarted, cmd.id)]


async def test_the_dice_roll_decides_a_random_failure_at_the_start() -> None:
    rig = Rig(roll=0.1)  # below the failure rate
    await rig.courier.on_start_delivery(StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1"))
    stored = rig.table.get(ORDER)
    assert stored is not None and stored.attempts["1"].failure == RANDOM_FAILURE


@pytest.mark.parametrize(("failure", "outcome", "status"), [
    ("", DeliveryCompleted, "delivered"),
    (RANDOM_FAILURE, DeliveryFailed, "failed"),
])
async def test_finish_delivery_stores_and_publishes_the_outcome(failure: str, outcome: type[Message],
                                                                status: str) -> None:
    rig = Rig({ORDER: Delivery(order_id=ORDER, attempts={"1": in_transit(100.0, failure)})})
    await rig.courier.on_finish_delivery(FinishDelivery(order_id=ORDER, attempt=1))
    stored = rig.table.get(ORDER)
    assert stored is not None and stored.attempts["1"].status == status
    assert rig.publish.types() == [outcome]


@pytest.mark.parametrize("msg", [
    DeliveryAccepted(order_id=ORDER, attempt=1),
    DeliveryCompleted(order_id=ORDER, attempt=1),
], ids=lambda m: m.type)
async def test_courier_declares_no_handler_for_messages_it_does_not_handle(msg: Message) -> None:
    rig = Rig()
    assert type(msg) not in rig.courier.handlers(), "the agent loop skips what has no handler"
    assert rig.table.rows == {}
    assert rig.publish.sent == []


async def test_timer_ticks_only_attempts_whose_courier_time_is_over() -> None:
    rig = Rig({
        "o-1": Delivery(order_id="o-1", attempts={"1": in_transit(100.0)}),
        "o-2": Delivery(order_id="o-2", attempts={"1": in_transit(100.5)}),
        "o-3": Delivery(order_id="o-3", attempts={
            "1": Attempt(status="failed", due_at=50.0), "2": in_transit(90.0)}),
    })
    await rig.courier.finish_due_deliveries()
    assert sorted(ticks(rig.publish)) == [("o-1", 1), ("o-3", 2)]


async def test_timer_ticks_a_due_attempt_once_while_the_agent_catches_up() -> None:
    rig = Rig({ORDER: Delivery(order_id=ORDER, attempts={"1": in_transit(90.0)})})
    await rig.courier.finish_due_deliveries()
    rig.now += 1.0
    await rig.courier.finish_due_deliveries()
    assert ticks(rig.publish) == [(ORDER, 1)]
    rig.now += 60.0  # the tick got lost: send it again
    await rig.courier.finish_due_deliveries()
    assert ticks(rig.publish) == [(ORDER, 1), (ORDER, 1)]


async def test_withdraw_delivery_calls_the_courier_back_and_answers() -> None:
    rig = Rig({ORDER: Delivery(order_id=ORDER, attempts={"1": in_transit(103.0)})})
    cmd = WithdrawDelivery(order_id=ORDER, final=True)
    await rig.courier.on_withdraw_delivery(cmd)
    stored = rig.table.get(ORDER)
    assert stored is not None and stored.attempts["1"].status == "withdrawn" and stored.closed
    [reply] = rig.publish.sent
    assert isinstance(reply, DeliveryWithdrawn)
    assert (reply.outcome, reply.attempt, reply.correlation_id) == ("withdrawn", 0, cmd.id)


async def test_resent_withdraw_delivery_gets_the_same_answer() -> None:
    rig = Rig({ORDER: Delivery(order_id=ORDER, attempts={"1": in_transit(103.0)})})
    cmd = WithdrawDelivery(order_id=ORDER, attempt=1)
    await rig.courier.on_withdraw_delivery(cmd)
    await rig.courier.on_withdraw_delivery(cmd)
    first, resent = rig.publish.sent
    assert isinstance(first, DeliveryWithdrawn) and isinstance(resent, DeliveryWithdrawn)
    assert (resent.id, resent.outcome) == (first.id, first.outcome) == (first.id, "withdrawn")


async def test_withdraw_delivery_of_an_order_never_seen_is_remembered_when_final() -> None:
    rig = Rig()
    await rig.courier.on_withdraw_delivery(WithdrawDelivery(order_id=ORDER, final=True))
    assert [(type(m), m.outcome) for m in rig.publish.sent] == [(DeliveryWithdrawn, "none")]
    late = StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1")
    await rig.courier.on_start_delivery(late)
    stored = rig.table.get(ORDER)
    assert stored is not None and stored.closed and stored.attempts == {}
    assert [(type(m), m.correlation_id) for m in rig.publish.sent[1:]] == [(DeliveryRejected, late.id)]


async def test_withdrawn_attempt_is_never_ticked_and_is_forgotten_without_last_words() -> None:
    rig = Rig({ORDER: Delivery(order_id=ORDER, attempts={"1": in_transit(103.0)})})
    await rig.courier.on_withdraw_delivery(WithdrawDelivery(order_id=ORDER))
    rig.publish.sent.clear()
    rig.now += 10.0
    await rig.courier.finish_due_deliveries()
    assert rig.publish.sent == []
    rig.now += 300.0  # the default retention
    await rig.courier.finish_due_deliveries()
    assert rig.publish.types() == [ForgetDelivery]
    await rig.courier.handlers()[type(rig.publish.sent[0])](rig.publish.sent[0])
    assert rig.table.rows == {}
    assert rig.publish.types() == [ForgetDelivery]  # a withdrawn attempt has no outcome to repeat


class CountingTable(MemoryTable[Delivery]):
    """Counts whole-table scans, which the timer does once a sweep only."""

    scans = 0

    def local_items(self) -> list[tuple[str, Delivery]]:
        self.scans += 1
        return super().local_items()


async def test_between_sweeps_the_timer_looks_only_at_deliveries_in_transit() -> None:
    table = CountingTable({f"done-{n}": Delivery(order_id=f"done-{n}", attempts={
        "1": Attempt(status="delivered", due_at=50.0)}, finished_at=60.0) for n in range(3)})
    publish = RecordingPublish()
    now = [100.0]
    courier = Courier(POLICY, table, publish, clock=lambda: now[0], dice=lambda: 0.9)
    await courier.finish_due_deliveries()  # the first tick sweeps
    assert table.scans == 1
    await courier.on_start_delivery(StartDelivery(order_id=ORDER, attempt=1, delivery_address="Main St 1"))
    now[0] += 0.2
    await courier.finish_due_deliveries()
    assert table.scans == 1 and ticks(publish) == []  # not due yet, and no scan
    now[0] += 3.0
    await courier.finish_due_deliveries()  # past the sweep interval: a scan, and the tick
    now[0] += 0.2
    await courier.finish_due_deliveries()
    assert table.scans == 2
    assert ticks(publish) == [(ORDER, 1)]


async def test_a_delivery_this_worker_did_not_write_is_ticked_at_the_next_sweep() -> None:
    # Taken over from another worker (a rebalance): known only from the table.
    rig = Rig()
    await rig.courier.finish_due_deliveries()
    rig.table.set(ORDER, Delivery(order_id=ORDER, attempts={"1": in_transit(100.1)}))
    rig.now += 0.5
    await rig.courier.finish_due_deliveries()
    assert ticks(rig.publish) == []  # not seen before the sweep
    rig.now += 1.0
    await rig.courier.finish_due_deliveries()
    assert ticks(rig.publish) == [(ORDER, 1)]
