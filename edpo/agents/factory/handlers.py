"""The factory's handlers over its production lines: Kafka messages, the batch timer, the
request-replenishment task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.camunda.worker import task_lines, task_trace
from edpo.domain.factory import ProductionLine, ProductionPlan
from edpo.models import (
    CompleteProduction,
    ManufactureItems,
    Message,
    ProductionRequested,
)
from edpo.runtime.commands import Commands
from edpo.runtime.consume import Handlers
from edpo.runtime.publish import Publish
from edpo.runtime.tables import Table, TickThrottle

logger = logging.getLogger(__name__)
SOURCE = "factory"
WORKER = "factory-worker"  # the source of commands sent by the factory's process task


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

    def handlers(self) -> Handlers:
        """The production agent's messages and who handles each."""
        return {ManufactureItems: self.on_manufacture_items, CompleteProduction: self.on_complete_production}

    async def on_manufacture_items(self, msg: ManufactureItems) -> None:
        """Acknowledge a request for units of a SKU; they start a batch, or wait for the next one."""
        line = self.production_by_sku.get(msg.sku) or ProductionLine(sku=msg.sku)
        await self._keep(line, line.request(msg, self.clock(), self.plan))

    async def on_complete_production(self, msg: CompleteProduction) -> None:
        """A batch's lead time is over: its goods are made, and the next batch starts if units wait."""
        line = self.production_by_sku.get(msg.sku) or ProductionLine(sku=msg.sku)
        await self._keep(line, line.complete(msg, self.clock(), self.plan))

    async def _keep(self, line: ProductionLine, events: list[Message]) -> None:
        self.production_by_sku.set(line.sku, line)
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
