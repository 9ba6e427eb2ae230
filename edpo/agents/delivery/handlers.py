"""The delivery service's handlers over its deliveries: Kafka commands and the courier's timer."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.models import (
    FinishDelivery,
    ForgetDelivery,
    Message,
    StartDelivery,
    WithdrawDelivery,
)
from edpo.runtime.consume import Handlers
from edpo.runtime.publish import Publish
from edpo.runtime.tables import Table, TickThrottle

logger = logging.getLogger(__name__)
SOURCE = "delivery"
SWEEP = 1.0  # seconds between the timer's looks at every delivery of the local partitions


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

    def handlers(self) -> Handlers:
        """The courier agent's messages and who handles each."""
        return {
            StartDelivery: self.on_start_delivery,
            WithdrawDelivery: self.on_withdraw_delivery,
            FinishDelivery: self.on_finish_delivery,
            ForgetDelivery: self.on_forget_delivery,
        }

    async def on_start_delivery(self, msg: StartDelivery) -> None:
        """Acknowledge and dispatch the courier (a known attempt is acknowledged again)."""
        delivery = self.deliveries_by_order.get(msg.order_id) or Delivery(order_id=msg.order_id)
        await self._keep(delivery, delivery.start(msg, self.clock(), self.policy, self.dice()))

    async def on_withdraw_delivery(self, msg: WithdrawDelivery) -> None:
        """Call the courier back and answer; a withdrawal of an order never seen is stored too, as a
        final one must refuse later starts."""
        delivery = self.deliveries_by_order.get(msg.order_id) or Delivery(order_id=msg.order_id)
        await self._keep(delivery, delivery.withdraw(msg, self.clock()))

    async def on_finish_delivery(self, msg: FinishDelivery) -> None:
        """The courier's time is up: publish the attempt's outcome."""
        delivery = self.deliveries_by_order.get(msg.order_id) or Delivery(order_id=msg.order_id)
        await self._keep(delivery, delivery.finish(msg, self.clock()))

    async def on_forget_delivery(self, msg: ForgetDelivery) -> None:
        """Drop a delivery finished longer than the retention ago."""
        found = self.deliveries_by_order.get(msg.order_id)
        if found is not None and found.forgettable(self.clock(), self.retention):
            await self.publish(*found.last_words(msg), wait=True)  # on Kafka before the entry goes
            self.deliveries_by_order.delete(msg.order_id)

    async def _keep(self, delivery: Delivery, events: list[Message]) -> None:
        self.deliveries_by_order.set(delivery.order_id, delivery)
        self._watch(delivery.order_id, delivery)
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
