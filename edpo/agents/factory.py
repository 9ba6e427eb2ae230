"""The factory service: coalesces replenishment requests per SKU into production batches.

A batch takes the configured lead time; a timer notices finished batches and sends the
factory a CompleteProduction tick through Kafka (tables are only written by agents), and the
finished goods go to the warehouse as ItemsManufactured. The factory also serves the
process's request-replenishment task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.camunda.worker import task_lines, task_trace
from edpo.config import Settings
from edpo.domain.factory import ProductionLine, ProductionPlan
from edpo.models import (
    CompleteProduction,
    ManufactureItems,
    Message,
    ProductionRequested,
)
from edpo.models.api import PageQuery
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Reply, page
from edpo.runtime.commands import CommandClient, Commands
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.publish import Publish
from edpo.runtime.tables import Table, TickThrottle
from edpo.topics import factory_commands_topic, factory_events_topic

logger = logging.getLogger(__name__)
SOURCE = "factory"
WORKER = "factory-worker"  # the source of commands sent by the factory's process task



class ProductionPage(msgspec.Struct, frozen=True, kw_only=True):
    """Production lines by SKU; `next` is the cursor of the next page (null on the last)."""

    lines: list[ProductionLine]
    next: str | None

class Factory:
    """The factory's handlers over its production lines."""

    def __init__(self, plan: ProductionPlan, production_by_sku: Table[ProductionLine], publish: Publish,
                 commands: Commands, clock: Callable[[], float] = time.time) -> None:
        self.plan = plan
        self.production_by_sku = production_by_sku
        self.publish = publish
        self.commands = commands
        self.clock = clock
        self._ticks = TickThrottle()

    async def on_command(self, msg: Message) -> None:
        """ManufactureItems starts or joins a batch; CompleteProduction finishes one."""
        if not isinstance(msg, (ManufactureItems, CompleteProduction)):
            return
        line = self.production_by_sku.get(msg.sku) or ProductionLine(sku=msg.sku)
        if isinstance(msg, ManufactureItems):
            events = line.request(msg, self.clock(), self.plan)
        else:
            events = line.complete(msg, self.clock(), self.plan)
        self.production_by_sku.set(msg.sku, line)
        await self.publish(*events)

    async def finish_due_batches(self) -> None:
        """Send CompleteProduction for every batch whose lead time is over (local partitions)."""
        now = self.clock()
        for sku, line in self.production_by_sku.local_items():
            if line.due(now) and self._ticks.should_send(line.current_id, now):
                await self.publish(CompleteProduction(source=SOURCE, sku=sku, production_id=line.current_id))
        self._ticks.prune(now)

    async def request_replenishment(self, task: ExternalTask) -> TaskResult:
        """One ManufactureItems per missing SKU, each acknowledged by the factory (resent until it
        is); the request id makes a retried task harmless."""
        order_id = task.get_business_key()
        await asyncio.gather(*(
            self.commands.request(
                ManufactureItems(sku=line.sku, quantity=line.quantity, request_id=f"{order_id}:{line.sku}",
                                 order_id=order_id, source=WORKER, trace_id=task_trace(task)),
                replies=(ProductionRequested,),
            )
            for line in task_lines(task, "missing")
        ))
        return task.complete({})


def watch_production(metrics: Metrics, production_by_sku: Table[ProductionLine]) -> None:
    """Production per SKU of the partitions this worker owns, read from its table at every scrape."""
    batches = metrics.gauge("edpo_factory_batches_in_production", "Batches in production per SKU (0 or 1)", ["sku"])
    units = metrics.gauge("edpo_factory_units_in_production", "Units of the batch in production per SKU", ["sku"])
    pending = metrics.gauge("edpo_factory_units_pending", "Units requested and waiting for a batch per SKU", ["sku"])

    async def lines() -> list[Sample]:
        samples: list[Sample] = []
        for sku, line in production_by_sku.local_items():
            samples += [(batches, (sku,), 1 if line.current_id else 0), (units, (sku,), line.current_qty),
                        (pending, (sku,), line.pending)]
        return samples

    metrics.at_scrape("production", lines, batches, units, pending)


def create_app(settings: Settings) -> ServiceApp:
    """The factory worker: production lines, their timer, the replenishment task and a web view."""
    app = ServiceApp(SOURCE, settings)
    production_by_sku = app.struct_table("production_by_sku", ProductionLine, help="Production line per SKU")
    plan = ProductionPlan(lead_time=settings.factory_lead_time, min_batch=settings.factory_min_batch,
                          capacity=settings.factory_capacity)
    commands = CommandClient(settings.kafka_bootstrap, app.publisher.publish, [factory_events_topic],
                             timeout=settings.command_timeout, attempts=settings.command_attempts)
    app.start_with(commands)
    factory = Factory(plan, production_by_sku, app.publisher.publish, commands)

    watch_production(app.metrics, production_by_sku)
    app.agent_over("production", factory.on_command, factory_commands_topic)
    app.every(settings.tick, factory.finish_due_batches)
    app.serve_tasks({"request-replenishment": factory.request_replenishment})

    @app.api.operation("GET", "/production", summary="Production lines on this worker", query=PageQuery,
                       open=True, tag="factory",
                       answers={200: Answer("One page of production lines in SKU order", ProductionPage)})
    async def list_production(call: Call) -> Reply:
        """Production lines of the partitions this worker owns; at most `limit`, the next page starts
        after the cursor `next`. Open to all."""
        found, cursor = page(production_by_sku.local_items(), call.query.limit, call.query.after)
        return Reply(200, ProductionPage(lines=found, next=cursor))

    return app
