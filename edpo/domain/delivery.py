"""The courier: delivery attempts per order, decided when they start and reported when due.

Each attempt is known by its number, so a resent StartDelivery is answered again without a
second courier being sent; the outcome is fixed at the start so replaying the finish is harmless.

A WithdrawDelivery calls the courier back: every attempt in scope still in transit becomes
"withdrawn" and is never reported. The attempt's status is the memory of it, so a resent
withdrawal gets the same answer. A final withdrawal (the order is being cancelled) closes the
delivery: every later StartDelivery of a new attempt is rejected.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

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
    caused_by,
)

SOURCE = "delivery"
UNREACHABLE = "address unreachable"
RANDOM_FAILURE = "courier failed (random)"
CANCELLED = "order cancelled"
SILENCE = 10 * 365 * 24 * 3600.0  # a silent courier's trip: ten years


def _matches(pattern: str, address: str) -> bool:
    """Does address match pattern (a case-insensitive regex; an empty pattern matches nothing)?"""
    return bool(pattern) and re.search(pattern, address, re.IGNORECASE) is not None


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How the simulated courier behaves: which addresses fail, how often it fails, how long it takes."""

    unreachable_pattern: str
    failure_rate: float
    courier_time: float
    # Addresses whose courier never reports back (the overdue-delivery escalation's case).
    silent_pattern: str = ""
    # Addresses whose first courier never reports back, and whose later ones do (a dispatcher's retry helps).
    silent_once_pattern: str = ""

    def trip_time(self, address: str, attempt: int = 1) -> float:
        """Seconds until the courier of this attempt reports: courier_time, or practically never for
        a silent address (for a silent-once address, only on the first attempt)."""
        if _matches(self.silent_pattern, address) or (attempt == 1 and _matches(self.silent_once_pattern, address)):
            return SILENCE
        return self.courier_time

    def will_fail(self, address: str, roll: float) -> str:
        """The failure reason for this address and dice roll (0 <= roll < 1), or "" for success."""
        # An empty pattern would match every address; it means "no address is unreachable".
        if self.unreachable_pattern and re.search(self.unreachable_pattern, address, re.IGNORECASE):
            return UNREACHABLE
        if roll < self.failure_rate:
            return RANDOM_FAILURE
        return ""


class Attempt(msgspec.Struct, kw_only=True):
    """One delivery attempt."""

    # "withdrawn": called back while in transit; never finished, never reported.
    status: Literal["in_transit", "delivered", "failed", "withdrawn"]
    due_at: float
    failure: str = ""
    address: str = ""
    # The StartDelivery's trace, so the outcome (caused by a timer tick) stays in the order's trace.
    trace_id: str = ""


class Delivery(msgspec.Struct, kw_only=True):
    """An order's delivery attempts, keyed by str(attempt number) so the table stores them as JSON."""

    order_id: str
    attempts: dict[str, Attempt] = {}
    # When the latest attempt ended or was withdrawn (clock seconds); 0 while one is in
    # transit or none ended.
    finished_at: float = 0.0
    # A final WithdrawDelivery arrived: the order is being cancelled, no new attempt starts.
    closed: bool = False

    def start(self, cmd: StartDelivery, now: float, policy: DeliveryPolicy, roll: float) -> list[Message]:
        """Send the courier for a new attempt; a known attempt is only acknowledged again, a new
        one of a closed delivery is rejected."""
        if str(cmd.attempt) in self.attempts:
            return [self._accepted(cmd), self._started(cmd)]
        address = cmd.delivery_address.strip()
        if self.closed or not address:
            return [
                caused_by(cmd, DeliveryRejected, source=SOURCE, reply=True, order_id=self.order_id,
                          attempt=cmd.attempt, reason=CANCELLED if self.closed else "no delivery address")
            ]
        self.attempts[str(cmd.attempt)] = Attempt(
            status="in_transit",
            due_at=now + policy.trip_time(address, cmd.attempt),
            failure=policy.will_fail(address, roll),
            address=address,
            trace_id=cmd.trace_id or cmd.id,
        )
        return [self._accepted(cmd), self._started(cmd)]

    def withdraw(self, cmd: WithdrawDelivery, now: float) -> list[Message]:
        """Call back the couriers of the attempts in scope (attempt 0: all) and say what became of
        them: "delivered" if one in scope was delivered already (then nothing is withdrawn),
        "withdrawn" if one in scope is called back (now or by an earlier withdrawal), else "none".
        A final withdrawal also closes the delivery. A resent command gets the same answer."""
        if cmd.final:
            self.closed = True
        in_scope = [a for n, a in self.attempts.items() if cmd.attempt == 0 or n == str(cmd.attempt)]
        if any(a.status == "delivered" for a in in_scope):
            outcome = "delivered"
        else:
            called_back = [a for a in in_scope if a.status == "in_transit"]
            for attempt in called_back:
                attempt.status = "withdrawn"
            on_the_road = any(a.status == "in_transit" for a in self.attempts.values())
            if called_back or (not self.finished_at and not on_the_road):
                # The entry is dropped retention seconds after its last courier came back (or
                # after a withdrawal that found none, so a closed delivery goes too).
                self.finished_at = now
            outcome = "withdrawn" if any(a.status == "withdrawn" for a in in_scope) else "none"
        # One answer per order, scope and outcome: a resend is answered with the same id.
        return [caused_by(cmd, DeliveryWithdrawn, source=SOURCE, reply=True,
                          once_per=f"{self.order_id}:withdraw:{cmd.attempt}:{outcome}",
                          order_id=self.order_id, attempt=cmd.attempt, outcome=outcome)]

    def forgettable(self, now: float, retention: float) -> bool:
        """Every attempt ended (or was withdrawn) at least retention seconds ago: the entry may be
        dropped."""
        return (self.finished_at > 0 and now - self.finished_at >= retention
                and all(a.status != "in_transit" for a in self.attempts.values()))

    def last_words(self, cause: Message) -> list[Message]:
        """Every finished attempt's outcome once more before the entry is dropped (same ids as
        the first time; receivers drop what they have); withdrawn attempts have none."""
        return [self._outcome(cause, int(n), attempt)
                for n, attempt in sorted(self.attempts.items(), key=lambda item: int(item[0]))
                if attempt.status in ("delivered", "failed")]

    def in_transit(self) -> bool:
        """Is an attempt on its way (the courier's timer has to watch it)?"""
        return any(a.status == "in_transit" for a in self.attempts.values())

    def due(self, now: float) -> list[int]:
        """Numbers of the attempts in transit whose courier time is over."""
        return sorted(int(n) for n, a in self.attempts.items() if a.status == "in_transit" and a.due_at <= now)

    def finish(self, cmd: FinishDelivery, now: float | None = None) -> list[Message]:
        """Report the outcome decided at the start; a repeated tick reports it again with the same
        id (its first report may have died with the worker), and receivers drop the duplicate."""
        attempt = self.attempts.get(str(cmd.attempt))
        if attempt is None or attempt.status == "withdrawn":
            return []  # unknown, or called back: the courier never arrives
        cause = msgspec.structs.replace(cmd, trace_id=attempt.trace_id) if attempt.trace_id else cmd
        if attempt.status == "in_transit":
            if now is not None and now < attempt.due_at:
                return []  # asked early (reconciliation asking again): the courier is still on the road
            self.finished_at = now or 0.0
            attempt.status = "failed" if attempt.failure else "delivered"
        return [self._outcome(cause, cmd.attempt, attempt)]

    def _outcome(self, cause: Message, n: int, attempt: Attempt) -> Message:
        """A finished attempt's outcome: one id per order and attempt, whatever the cause."""
        once = f"{self.order_id}:{n}"
        if attempt.status == "failed":
            return caused_by(cause, DeliveryFailed, source=SOURCE, once_per=once, order_id=self.order_id, attempt=n,
                             reason=attempt.failure)
        return caused_by(cause, DeliveryCompleted, source=SOURCE, once_per=once, order_id=self.order_id, attempt=n)

    def _accepted(self, cmd: StartDelivery) -> DeliveryAccepted:
        return caused_by(cmd, DeliveryAccepted, source=SOURCE, reply=True, once_per=f"{self.order_id}:{cmd.attempt}",
                         order_id=self.order_id, attempt=cmd.attempt)

    def _started(self, cmd: StartDelivery) -> Message:
        return caused_by(cmd, DeliveryStarted, source=SOURCE, once_per=f"{self.order_id}:{cmd.attempt}",
                         order_id=self.order_id, attempt=cmd.attempt)
