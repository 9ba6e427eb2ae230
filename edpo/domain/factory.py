"""Production of one SKU: replenishment requests coalesce into batches with a lead time.

One batch runs at a time per SKU; requests arriving meanwhile wait for the next batch, so a
burst of orders short of the same SKU is served by few batches instead of one per order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from edpo.models import (
    CompleteProduction,
    ItemsManufactured,
    ManufactureItems,
    Message,
    ProductionStarted,
    caused_by,
    new_id,
)

SOURCE = "factory"
# Enough to recognise a resent request; a request older than that cannot be resent any more.
KEEP_IDS = 1000


@dataclass(frozen=True)
class ProductionPlan:
    """How the factory produces: lead time per batch, batch size limits, and where ids come from."""

    lead_time: float
    min_batch: int
    capacity: int
    new_id: Callable[[], str] = new_id


class ProductionLine(msgspec.Struct, kw_only=True):
    """One SKU's production: units waiting for a batch and the batch in progress."""

    sku: str
    pending: int = 0
    current_id: str = ""
    current_qty: int = 0
    due_at: float = 0.0
    seen_requests: list[str] = []
    produced_total: int = 0
    batches: int = 0

    def request(
        self,
        cmd: ManufactureItems,
        now: float,
        plan: ProductionPlan,
    ) -> list[Message]:
        """Queue the requested units (once per request id); start a batch if none is running."""
        if cmd.request_id in self.seen_requests:
            return []
        self.seen_requests = (self.seen_requests + [cmd.request_id])[-KEEP_IDS:]
        self.pending += max(0, cmd.quantity)
        if self.current_id:
            return []
        return self._start(cmd, now, plan)

    def due(self, now: float) -> bool:
        """A batch is running and its lead time is over."""
        return bool(self.current_id) and now >= self.due_at

    def complete(
        self,
        cmd: CompleteProduction,
        now: float,
        plan: ProductionPlan,
    ) -> list[Message]:
        """Finish the running batch (a repeated tick finishes nothing) and start the next if units wait."""
        if not self.current_id or cmd.production_id != self.current_id:
            return []
        events: list[Message] = [
            caused_by(cmd, ItemsManufactured, source=SOURCE, sku=self.sku, production_id=self.current_id,
                      quantity=self.current_qty)
        ]
        self.produced_total += self.current_qty
        self.batches += 1
        self.current_id, self.current_qty, self.due_at = "", 0, 0.0
        events += self._start(cmd, now, plan)
        return events

    def _start(
        self,
        cause: Message,
        now: float,
        plan: ProductionPlan,
    ) -> list[Message]:
        """Start a batch for the pending units: at least min_batch, at most capacity."""
        if self.pending <= 0:
            return []
        # The surplus of a minimum-size batch is stock for later orders; capacity caps a batch,
        # and what does not fit waits for the next one.
        qty = max(1, min(max(self.pending, plan.min_batch), plan.capacity))
        self.pending -= min(self.pending, qty)
        self.current_id = plan.new_id()
        self.current_qty = qty
        self.due_at = now + plan.lead_time
        return [caused_by(cause, ProductionStarted, source=SOURCE, sku=self.sku, production_id=self.current_id,
                          quantity=qty)]
