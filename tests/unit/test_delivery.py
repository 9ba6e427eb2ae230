"""The courier: attempts decided at the start, reported when due, never started twice."""

from __future__ import annotations

import msgspec

from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.models import (
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryRejected,
    DeliveryStarted,
    FinishDelivery,
    StartDelivery,
)

ORDER = "o1"
POLICY = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.0, courier_time=3.0)


def start(attempt: int = 1, address: str = "Main St 1", trace: str = "") -> StartDelivery:
    return StartDelivery(order_id=ORDER, attempt=attempt, delivery_address=address, trace_id=trace)


def finish(attempt: int = 1) -> FinishDelivery:
    return FinishDelivery(order_id=ORDER, attempt=attempt)


def test_start_acknowledges_and_dispatches_the_courier() -> None:
    delivery = Delivery(order_id=ORDER)
    cmd = start()
    events = delivery.start(cmd, 100.0, POLICY, roll=0.5)
    assert [type(e) for e in events] == [DeliveryAccepted, DeliveryStarted]
    assert events[0].correlation_id == cmd.id
    assert delivery.attempts["1"].status == "in_transit"
    assert delivery.attempts["1"].due_at == 103.0


def test_retried_start_delivery_never_starts_a_second_delivery() -> None:
    """A resend is acknowledged and re-announces the same start (same ids): no second courier, no
    new due time, no second dice roll."""
    policy = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.5, courier_time=3.0)
    delivery = Delivery(order_id=ORDER)
    first = delivery.start(start(), 100.0, policy, roll=0.9)
    resent = start()
    events = delivery.start(resent, 101.0, policy, roll=0.0)  # a fresh roll of 0.0 would fail it
    assert [(type(e), e.correlation_id) for e in events] == [(DeliveryAccepted, resent.id),
                                                             (DeliveryStarted, resent.id)]
    assert [e.id for e in events] == [e.id for e in first]
    assert list(delivery.attempts) == ["1"]
    assert (delivery.attempts["1"].due_at, delivery.attempts["1"].failure) == (103.0, "")


def test_each_attempt_is_its_own_start() -> None:
    delivery = Delivery(order_id=ORDER)
    one = delivery.start(start(1), 0.0, POLICY, roll=0.5)
    two = delivery.start(start(2), 0.0, POLICY, roll=0.5)
    assert {e.id for e in one}.isdisjoint(e.id for e in two)


def test_blank_address_is_rejected_without_an_attempt() -> None:
    delivery = Delivery(order_id=ORDER)
    cmd = start(address="   ")
    events = delivery.start(cmd, 0.0, POLICY, roll=0.5)
    assert isinstance(events[0], DeliveryRejected) and events[0].correlation_id == cmd.id
    assert events[0].reason
    assert delivery.attempts == {}


def test_unreachable_address_fails_case_insensitively() -> None:
    assert POLICY.will_fail("Nowhere Lane, UnReachable City", roll=0.99) == "address unreachable"
    assert POLICY.will_fail("Main St 1", roll=0.99) == ""


def test_random_failure_follows_the_failure_rate() -> None:
    policy = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.25, courier_time=1.0)
    assert policy.will_fail("Main St 1", roll=0.24) == "courier failed (random)"
    assert policy.will_fail("Main St 1", roll=0.25) == ""


def test_empty_pattern_makes_no_address_unreachable() -> None:
    policy = DeliveryPolicy(unreachable_pattern="", failure_rate=0.0, courier_time=1.0)
    assert policy.will_fail("anywhere", roll=0.5) == ""


def test_attempt_is_due_when_the_courier_time_is_over() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(1), 100.0, POLICY, roll=0.5)
    delivery.start(start(2), 101.0, POLICY, roll=0.5)
    assert delivery.due(102.9) == []
    assert delivery.due(103.0) == [1]
    assert delivery.due(104.0) == [1, 2]


def test_successful_attempt_completes_once() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 0.0, POLICY, roll=0.5)
    events = delivery.finish(finish())
    assert [type(e) for e in events] == [DeliveryCompleted]
    assert delivery.attempts["1"].status == "delivered"
    # A repeated tick re-announces the same fact (same id): receivers drop it.
    again = delivery.finish(finish())
    assert [(type(e), e.id) for e in again] == [(DeliveryCompleted, events[0].id)]
    assert delivery.attempts["1"].status == "delivered"
    assert delivery.due(1e9) == []


def test_failed_attempt_fails_once() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(address="unreachable road"), 0.0, POLICY, roll=0.5)
    events = delivery.finish(finish())
    again = delivery.finish(finish())
    assert [(type(e), e.id, e.reason) for e in again] == [(DeliveryFailed, events[0].id, "address unreachable")]
    assert delivery.attempts["1"].status == "failed"
    assert delivery.due(1e9) == []


def test_outcome_is_decided_at_the_start() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(address="unreachable road"), 0.0, POLICY, roll=0.5)
    assert delivery.attempts["1"].failure == "address unreachable"
    events = delivery.finish(finish())
    assert isinstance(events[0], DeliveryFailed)
    assert (events[0].attempt, events[0].reason) == (1, "address unreachable")
    assert delivery.attempts["1"].status == "failed"


def test_failed_attempt_can_be_followed_by_a_new_one() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(1, address="unreachable"), 0.0, POLICY, roll=0.5)
    delivery.finish(finish(1))
    events = delivery.start(start(2, address="Main St 1"), 10.0, POLICY, roll=0.5)
    assert [type(e) for e in events] == [DeliveryAccepted, DeliveryStarted]
    assert [type(e) for e in delivery.finish(finish(2))] == [DeliveryCompleted]


def test_finish_for_unknown_attempt_reports_nothing() -> None:
    assert Delivery(order_id=ORDER).finish(finish(3)) == []


def test_outcome_stays_in_the_orders_trace_although_a_timer_tick_caused_it() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(trace="trace-o1"), 0.0, POLICY, roll=0.5)
    events = delivery.finish(finish())
    assert events[0].trace_id == "trace-o1"


def test_delivery_survives_a_json_round_trip_as_table_value() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 0.0, POLICY, roll=0.5)
    restored = msgspec.json.decode(msgspec.json.encode(delivery), type=Delivery)
    assert restored == delivery
    assert [type(e) for e in restored.finish(finish())] == [DeliveryCompleted]


def test_a_finish_asked_for_before_the_courier_time_is_up_finishes_nothing() -> None:
    # Reconciliation may ask the courier again for an attempt still on the road.
    policy = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.0, courier_time=3.0)
    delivery = Delivery(order_id="o-early")
    delivery.start(StartDelivery(order_id="o-early", attempt=1, delivery_address="Main St 1"), 100.0, policy, 0.9)
    assert delivery.finish(FinishDelivery(order_id="o-early", attempt=1), now=102.0) == []
    assert delivery.attempts["1"].status == "in_transit" and delivery.finished_at == 0.0
    [done] = delivery.finish(FinishDelivery(order_id="o-early", attempt=1), now=103.0)
    assert isinstance(done, DeliveryCompleted) and delivery.finished_at == 103.0
