"""The delivery service: accepts StartDelivery commands and simulates the courier.

The outcome of an attempt is decided when it starts (address pattern, random failure rate)
and published when the courier's time is up; a timer notices due deliveries and sends the
service a FinishDelivery tick through Kafka. WithdrawDelivery calls couriers back (a withdrawn
attempt is never reported) and, when final, refuses the order's later attempts. The delivery
service serves no process task: the warehouse's worker sends it StartDelivery and
WithdrawDelivery.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import msgspec

from edpo.config import Settings
from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.models import (
    FinishDelivery,
    ForgetDelivery,
    Message,
    StartDelivery,
    WithdrawDelivery,
)
from edpo.models.api import Errors, OrderId, PageQuery
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Problem, Reply, page
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.publish import Publish
from edpo.runtime.tables import Table, TickThrottle
from edpo.topics import delivery_commands_topic

logger = logging.getLogger(__name__)
SOURCE = "delivery"
SWEEP = 1.0  # seconds between the timer's looks at every delivery of the local partitions



class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    """Deliveries by order id; `next` is the cursor of the next page (null on the last)."""

    deliveries: list[Delivery]
    next: str | None

class Courier:
    """The delivery service's handlers over its deliveries."""

    def __init__(self, policy: DeliveryPolicy, deliveries_by_order: Table[Delivery], publish: Publish,
                 clock: Callable[[], float] = time.time, dice: Callable[[], float] = random.random,
                 retention: float = 300.0) -> None:
        self.policy = policy
        self.retention = retention
        self.deliveries_by_order = deliveries_by_order
        self.publish = publish
        self.clock = clock
        self.dice = dice
        self._ticks = TickThrottle()
        # Orders with an attempt in transit, as this worker last wrote or saw them: the timer
        # looks at these every tick and at the whole table once a SWEEP (partitions taken over
        # from another worker, entries to forget). Scanning every finished delivery five times
        # a second was 44% of the worker's CPU in a burst (py-spy).
        self._in_transit: set[str] = set()
        self._next_sweep = 0.0

    async def on_command(self, msg: Message) -> None:
        """StartDelivery is acknowledged and dispatched; FinishDelivery publishes the outcome;
        WithdrawDelivery calls the courier back and answers; ForgetDelivery drops a delivery
        finished longer than the retention ago."""
        if not isinstance(msg, (StartDelivery, FinishDelivery, WithdrawDelivery, ForgetDelivery)):
            return
        if isinstance(msg, ForgetDelivery):
            found = self.deliveries_by_order.get(msg.order_id)
            if found is not None and found.forgettable(self.clock(), self.retention):
                await self.publish(*found.last_words(msg), wait=True)  # on Kafka before the entry goes
                self.deliveries_by_order.delete(msg.order_id)
            return
        # A withdrawal of an order never seen is stored too: a final one must refuse later starts.
        delivery = self.deliveries_by_order.get(msg.order_id) or Delivery(order_id=msg.order_id)
        match msg:
            case StartDelivery():
                events = delivery.start(msg, self.clock(), self.policy, self.dice())
            case WithdrawDelivery():
                events = delivery.withdraw(msg, self.clock())
            case FinishDelivery():
                events = delivery.finish(msg, self.clock())
        self.deliveries_by_order.set(msg.order_id, delivery)
        self._watch(msg.order_id, delivery)
        await self.publish(*events)

    def _watch(self, order_id: str, delivery: Delivery) -> None:
        if delivery.in_transit():
            self._in_transit.add(order_id)
        else:
            self._in_transit.discard(order_id)

    async def finish_due_deliveries(self) -> None:
        """Send FinishDelivery for every attempt whose courier time is over; once a SWEEP, look
        at every delivery of the local partitions, and send ForgetDelivery for those finished
        longer than the retention ago."""
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP
            found = self.deliveries_by_order.local_items()
        else:
            found = [(order_id, d) for order_id in self._in_transit
                     if (d := self.deliveries_by_order.get(order_id)) is not None]
        self._in_transit = set()  # filled again below, and by on_command meanwhile
        for order_id, delivery in found:
            self._watch(order_id, delivery)
            for attempt in delivery.due(now):
                if self._ticks.should_send((order_id, attempt), now):
                    await self.publish(FinishDelivery(source=SOURCE, order_id=order_id, attempt=attempt))
            if delivery.forgettable(now, self.retention) and self._ticks.should_send((order_id, "forget"), now):
                await self.publish(ForgetDelivery(source=SOURCE, order_id=order_id))
        self._ticks.prune(now)


ATTEMPT_STATUSES = ("in_transit", "delivered", "failed", "withdrawn")


def watch_deliveries(metrics: Metrics, deliveries_by_order: Table[Delivery]) -> None:
    """Delivery attempts by status on the partitions this worker owns, read at every scrape
    (finished deliveries leave the table EDPO_TABLE_RETENTION after they end)."""
    attempts = metrics.gauge("edpo_delivery_attempts", "Delivery attempts in this worker's table by status: "
                             "in_transit, delivered, failed, withdrawn", ["status"])

    async def by_status() -> list[Sample]:
        counts = dict.fromkeys(ATTEMPT_STATUSES, 0)
        for _, delivery in deliveries_by_order.local_items():
            for attempt in delivery.attempts.values():
                counts[attempt.status] += 1
        return [(attempts, (status,), n) for status, n in counts.items()]

    metrics.at_scrape("deliveries", by_status, attempts)


def create_app(settings: Settings) -> ServiceApp:
    """The delivery worker: deliveries, the courier's timer and web views."""
    app = ServiceApp(SOURCE, settings)
    deliveries_by_order = app.struct_table("deliveries_by_order", Delivery, help="Delivery attempts per order")
    policy = DeliveryPolicy(unreachable_pattern=settings.unreachable_pattern,
                            failure_rate=settings.delivery_failure_rate, courier_time=settings.courier_time,
                            silent_pattern=settings.silent_pattern)
    courier = Courier(policy, deliveries_by_order, app.publisher.publish, retention=settings.table_retention)

    watch_deliveries(app.metrics, deliveries_by_order)
    app.agent_over("courier", courier.on_command, delivery_commands_topic)
    app.every(settings.tick, courier.finish_due_deliveries)

    api = app.api

    @api.operation("GET", "/deliveries", summary="Deliveries on this worker", query=PageQuery, tag="delivery",
                   answers={200: Answer("One page of deliveries in order id order", DeliveryPage)})
    async def list_deliveries(call: Call) -> Reply:
        """Deliveries of the partitions this worker owns, with their addresses (personal: needs the
        token when set); at most `limit`, the next page starts after the cursor `next`."""
        found, cursor = page(deliveries_by_order.local_items(), call.query.limit, call.query.after)
        return Reply(200, DeliveryPage(deliveries=found, next=cursor))

    @api.operation("GET", "/deliveries/{order_id}", summary="One order's delivery", tag="delivery",
                   path_types={"order_id": OrderId},
                   answers={200: Answer("The order's delivery attempts", Delivery),
                            404: Answer("No delivery for this order on this worker", Errors)})
    async def get_delivery(call: Call) -> Reply:
        """One order's delivery attempts (personal: needs the token when set)."""
        d = deliveries_by_order.get(call.path["order_id"])
        if d is None:
            raise Problem(404, "order_id", "no delivery for this order")
        return Reply(200, d)

    return app
