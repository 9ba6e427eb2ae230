"""The factory service: coalesces replenishment requests per SKU into production batches.

A batch takes the configured lead time; the timer notices finished batches and sends the
factory a CompleteProduction tick through Kafka (tables are only written by agents), and the
finished goods go to the warehouse as ItemsManufactured.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import msgspec

from edpo.agents.runtime import Outbox, StructTable, TickThrottle, consume, guarded_timer, raw_topic, service_app
from edpo.camunda.workers import install_task_worker
from edpo.domain.factory import ProductionLine, ProductionPlan
from edpo.models import CompleteProduction, ManufactureItems, Message
from edpo.topics import factory_commands_topic, factory_events_topic

logger = logging.getLogger(__name__)
SOURCE = "factory"

app = service_app(SOURCE)
settings = app.edpo_settings  # type: ignore[attr-defined]
production_by_sku = StructTable(app, "production_by_sku", ProductionLine, help="Production line per SKU")
commands_topic = raw_topic(app, factory_commands_topic)

PLAN = ProductionPlan(
    lead_time=settings.factory_lead_time, min_batch=settings.factory_min_batch, capacity=settings.factory_capacity
)


async def on_command(msg: Message, out: Outbox) -> None:
    """ManufactureItems starts or joins a batch; CompleteProduction finishes one."""
    sku: str = msg.sku  # type: ignore[attr-defined]
    line: ProductionLine = production_by_sku.get(sku) or ProductionLine(sku=sku)
    now = time.time()
    match msg:
        case ManufactureItems():
            events = line.request(msg, now, PLAN)
        case CompleteProduction():
            events = line.complete(msg, now, PLAN)
        case _:
            return
    production_by_sku.set(sku, line)
    for event in events:
        await out.send(factory_events_topic, sku, event)


@app.agent(commands_topic)
async def production(stream: faust.StreamT) -> None:
    """Run the production lines."""
    await consume(app, stream, on_command, name="production")


_ticks = TickThrottle()


@guarded_timer(app, settings.tick)
async def finish_due_batches() -> None:
    """Send CompleteProduction for every batch whose lead time is over (local partitions)."""
    now = time.time()
    for sku, line in production_by_sku.local_items():
        if line.due(now) and _ticks.should_send(line.current_id, now):
            tick = CompleteProduction(source=SOURCE, sku=sku, production_id=line.current_id)
            await commands_topic.send(key=sku.encode(), value=msgspec.json.encode(tick))
    _ticks.prune(now)


install_task_worker(app, SOURCE)


@app.page("/production")
async def production_view(web: Any, request: Any) -> Any:
    """Production lines of the partitions this worker owns."""
    return web.json({"lines": [msgspec.to_builtins(line) for _, line in production_by_sku.local_items()]})
