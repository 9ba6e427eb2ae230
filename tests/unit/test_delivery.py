"""The courier: attempts decided at the start, reported when due, never started twice, called back
when withdrawn."""

from __future__ import annotations

import msgspec

from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.models import (
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryRejected,
    DeliveryStarted,
    DeliveryWithdrawn,
    FinishDelivery,
    Message,
    StartDelivery,
    WithdrawDelivery,
)

ORDER = "o1"
POLICY = DeliveryPolicy(unreachable_pattern="unreachable", failure_rate=0.0, courier_time=3.0)


def start(attempt: int = 1, address: str = "Main St 1", trace: str = "") -> StartDelivery:
    return StartDelivery(order_id=ORDER, attempt=attempt, delivery_address=address, trace_id=trace)


def finish(attempt: int = 1) -> FinishDelivery:
    return FinishDelivery(order_id=ORDER, attempt=attempt)


def withdraw(attempt: int = 0, final: bool = False) -> WithdrawDelivery:
    return WithdrawDelivery(order_id=ORDER, attempt=attempt, final=final)


def answer(events: list[Message]) -> tuple[str, int, str]:
    """The one DeliveryWithdrawn a withdrawal answers with: (outcome, attempt, correlation id)."""
    [reply] = events
    assert isinstance(reply, DeliveryWithdrawn)
    return reply.outcome, reply.attempt, reply.correlation_id


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


# --- withdrawal ------------------------------------------------------------------------------------


def test_withdrawn_courier_never_reports_an_outcome() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 100.0, POLICY, roll=0.5)
    cmd = withdraw()
    assert answer(delivery.withdraw(cmd, 101.0)) == ("withdrawn", 0, cmd.id)
    assert delivery.attempts["1"].status == "withdrawn"
    assert delivery.due(1e9) == []
    assert delivery.finish(finish(), now=200.0) == []  # a tick sent before the withdrawal
    assert delivery.attempts["1"].status == "withdrawn"
    assert delivery.last_words(finish()) == []


def test_resent_withdrawal_is_answered_the_same_way_with_the_same_id() -> None:
    """The attempt's status remembers the withdrawal: a resend (or a new command of the same scope,
    from a re-fetched task) still hears "withdrawn", with the first answer's id."""
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 100.0, POLICY, roll=0.5)
    cmd = withdraw()
    [first] = delivery.withdraw(cmd, 101.0)
    [resent] = delivery.withdraw(cmd, 102.0)
    [again] = delivery.withdraw(withdraw(), 103.0)
    assert [(r.id, r.outcome, r.correlation_id) for r in (resent, again)] == [
        (first.id, "withdrawn", cmd.id), (first.id, "withdrawn", again.correlation_id)]
    assert delivery.finished_at == 101.0  # the courier came back once


def test_withdrawal_after_delivery_is_too_late() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 0.0, POLICY, roll=0.5)
    delivery.finish(finish())
    assert answer(delivery.withdraw(withdraw(final=True), 10.0))[0] == "delivered"
    assert delivery.attempts["1"].status == "delivered"
    assert [type(e) for e in delivery.last_words(finish())] == [DeliveryCompleted]


def test_withdrawal_after_a_failed_attempt_finds_no_courier() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(address="unreachable road"), 0.0, POLICY, roll=0.5)
    delivery.finish(finish(), now=3.0)
    assert answer(delivery.withdraw(withdraw(), 10.0))[0] == "none"
    assert delivery.attempts["1"].status == "failed"
    assert delivery.finished_at == 3.0


def test_withdrawal_of_one_attempt_calls_back_that_attempt_only() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(1, address="unreachable road"), 0.0, POLICY, roll=0.5)
    delivery.finish(finish(1), now=3.0)
    delivery.start(start(2), 10.0, POLICY, roll=0.5)
    assert answer(delivery.withdraw(withdraw(1), 11.0))[:2] == ("none", 1)
    assert delivery.attempts["2"].status == "in_transit"
    assert answer(delivery.withdraw(withdraw(2), 12.0))[:2] == ("withdrawn", 2)
    assert [a.status for a in delivery.attempts.values()] == ["failed", "withdrawn"]


def test_outcome_and_scope_each_have_their_own_answer_id() -> None:
    delivery = Delivery(order_id=ORDER)
    [none] = delivery.withdraw(withdraw(), 0.0)
    delivery.start(start(), 1.0, POLICY, roll=0.5)
    [withdrawn] = delivery.withdraw(withdraw(), 2.0)
    [one] = delivery.withdraw(withdraw(1), 3.0)
    assert (none.outcome, withdrawn.outcome, one.outcome) == ("none", "withdrawn", "withdrawn")
    assert len({none.id, withdrawn.id, one.id}) == 3


def test_final_withdrawal_rejects_new_attempts_but_acknowledges_known_ones_again() -> None:
    delivery = Delivery(order_id=ORDER)
    first = delivery.start(start(1), 0.0, POLICY, roll=0.5)
    delivery.withdraw(withdraw(final=True), 1.0)
    assert delivery.closed
    late = start(2)
    [rejected] = delivery.start(late, 2.0, POLICY, roll=0.5)
    assert isinstance(rejected, DeliveryRejected)
    assert (rejected.reason, rejected.attempt, rejected.correlation_id) == ("order cancelled", 2, late.id)
    assert list(delivery.attempts) == ["1"]
    again = delivery.start(start(1), 3.0, POLICY, roll=0.5)
    assert [(type(e), e.id) for e in again] == [(type(e), e.id) for e in first]
    assert delivery.attempts["1"].status == "withdrawn"


def test_a_withdrawal_that_is_not_final_lets_the_next_attempt_start() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(1), 0.0, POLICY, roll=0.5)
    delivery.withdraw(withdraw(1), 1.0)
    assert not delivery.closed
    assert [type(e) for e in delivery.start(start(2), 2.0, POLICY, roll=0.5)] == [DeliveryAccepted, DeliveryStarted]


def test_final_withdrawal_of_an_order_never_seen_closes_it_and_finds_nothing() -> None:
    delivery = Delivery(order_id=ORDER)
    assert answer(delivery.withdraw(withdraw(final=True), 50.0))[0] == "none"
    assert delivery.closed and delivery.attempts == {}
    assert isinstance(delivery.start(start(1), 51.0, POLICY, roll=0.5)[0], DeliveryRejected)
    assert not delivery.forgettable(50.0 + 299.0, retention=300.0)
    assert delivery.forgettable(50.0 + 300.0, retention=300.0)


def test_withdrawn_delivery_is_forgotten_after_the_retention() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 100.0, POLICY, roll=0.5)
    assert not delivery.forgettable(1e9, retention=300.0)  # on the road
    delivery.withdraw(withdraw(), 101.0)
    assert delivery.finished_at == 101.0
    assert not delivery.forgettable(400.0, retention=300.0)
    assert delivery.forgettable(401.0, retention=300.0)


def test_withdrawn_and_closed_delivery_survives_a_json_round_trip() -> None:
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(), 0.0, POLICY, roll=0.5)
    first = delivery.withdraw(withdraw(final=True), 1.0)
    restored = msgspec.json.decode(msgspec.json.encode(delivery), type=Delivery)
    assert restored == delivery and restored.closed
    assert [e.id for e in restored.withdraw(withdraw(final=True), 2.0)] == [e.id for e in first]


def test_a_silent_address_keeps_its_courier_on_the_road_until_withdrawn() -> None:
    from edpo.domain.delivery import SILENCE, DeliveryPolicy

    policy = DeliveryPolicy(unreachable_pattern="", failure_rate=0, courier_time=1, silent_pattern="no news")
    assert policy.trip_time("No News Lane 4") == SILENCE
    assert policy.trip_time("Main Street 1") == 1
    assert DeliveryPolicy(unreachable_pattern="", failure_rate=0, courier_time=1).trip_time("no news") == 1
    assert policy.trip_time("No News Lane 4", attempt=2) == SILENCE


def test_a_silent_once_address_keeps_only_its_first_courier_on_the_road() -> None:
    from edpo.domain.delivery import SILENCE, DeliveryPolicy

    policy = DeliveryPolicy(unreachable_pattern="", failure_rate=0, courier_time=1, silent_once_pattern="late news")
    delivery = Delivery(order_id=ORDER)
    delivery.start(start(attempt=1, address="Late News Road 3"), 0.0, policy, roll=0.5)
    delivery.start(start(attempt=2, address="Late News Road 3"), 10.0, policy, roll=0.5)
    assert delivery.attempts["1"].due_at == SILENCE
    assert delivery.attempts["2"].due_at == 11.0
    assert policy.trip_time("Main Street 1", attempt=1) == 1
