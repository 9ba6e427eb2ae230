"""The delivery service: accepts StartDelivery commands and simulates the courier.

The outcome of an attempt is decided when it starts (address pattern, random failure rate)
and published when the courier's time is up; a timer notices due deliveries and sends the
service a FinishDelivery tick through Kafka.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import faust
import msgspec

from edpo.agents.runtime import (
    Outbox,
    StructTable,
    TickThrottle,
    consume,
    error_json,
    guarded_timer,
    raw_topic,
    service_app,
)
from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.models import FinishDelivery, Message, StartDelivery
from edpo.topics import delivery_commands_topic, delivery_events_topic

logger = logging.getLogger(__name__)
SOURCE = "delivery"

app = service_app(SOURCE)
settings = app.edpo_settings  # type: ignore[attr-defined]
deliveries_by_order = StructTable(app, "deliveries_by_order", Delivery, help="Delivery attempts per order")
commands_topic = raw_topic(app, delivery_commands_topic)
policy = DeliveryPolicy(
    unreachable_pattern=settings.unreachable_pattern,
    failure_rate=settings.delivery_failure_rate,
    courier_time=settings.courier_time,
)
_dice = random.Random()


async def on_command(msg: Message, out: Outbox) -> None:
    """StartDelivery is acknowledged and dispatched; FinishDelivery publishes the outcome."""
    order_id: str = msg.order_id  # type: ignore[attr-defined]
    delivery: Delivery = deliveries_by_order.get(order_id) or Delivery(order_id=order_id)
    match msg:
        case StartDelivery():
            events = delivery.start(msg, time.time(), policy, _dice.random())
        case FinishDelivery():
            events = delivery.finish(msg)
        case _:
            return
    deliveries_by_order.set(order_id, delivery)
    for event in events:
        await out.send(delivery_events_topic, order_id, event)


@app.agent(commands_topic)
async def courier(stream: faust.StreamT) -> None:
    """Run deliveries."""
    await consume(app, stream, on_command, name="courier")


_ticks = TickThrottle()


@guarded_timer(app, settings.tick)
async def finish_due_deliveries() -> None:
    """Send FinishDelivery for every attempt whose courier time is over (local partitions)."""
    now = time.time()
    for order_id, delivery in deliveries_by_order.local_items():
        for attempt in delivery.due(now):
            if _ticks.should_send((order_id, attempt), now):
                tick = FinishDelivery(source=SOURCE, order_id=order_id, attempt=attempt)
                await commands_topic.send(key=order_id.encode(), value=msgspec.json.encode(tick))
    _ticks.prune(now)


@app.page("/deliveries")
async def deliveries_view(web: Any, request: Any) -> Any:
    """Deliveries of the partitions this worker owns."""
    return web.json({"deliveries": [msgspec.to_builtins(d) for _, d in deliveries_by_order.local_items()]})


@app.page("/deliveries/{order_id}")
async def delivery_view(web: Any, request: Any, order_id: str) -> Any:
    """One order's delivery attempts."""
    d = deliveries_by_order.get(order_id)
    if d is None:
        return error_json(web, 404, "order_id", "no delivery for this order")
    return web.json(msgspec.to_builtins(d))
