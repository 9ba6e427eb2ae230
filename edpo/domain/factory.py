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
    ProductionRequested,
    ProductionStarted,
    caused_by,
    new_id,
)

SOURCE = "factory"
# Enough to recognise a resent request; a request older than that cannot be resent any more.
KEEP_IDS = 1000
# Finished batches remembered for replays: a replay comes within seconds, a batch takes longer.
KEEP_FINISHED = 20


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
    # The latest finished batches (id, quantity): a replayed tick announces its batch again.
    finished: list[tuple[str, int]] = []

    def request(
        self,
        cmd: ManufactureItems,
        now: float,
        plan: ProductionPlan,
    ) -> list[Message]:
        """Acknowledge, and queue the requested units (once per request id); start a batch if none
        is running."""
        ack = caused_by(cmd, ProductionRequested, source=SOURCE, reply=True, once_per=cmd.request_id, sku=self.sku,
                        request_id=cmd.request_id)
        if cmd.request_id in self.seen_requests:
            return [ack]
        self.seen_requests = (self.seen_requests + [cmd.request_id])[-KEEP_IDS:]
        self.pending += max(0, cmd.quantity)
        if self.current_id:
            return [ack]
        return [ack, *self._start(cmd, now, plan)]

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
        done = dict(self.finished)
        if cmd.production_id in done:  # replayed: its first run may have died before sending
            return [self._manufactured(cmd, cmd.production_id, done[cmd.production_id])]
        if not self.current_id or cmd.production_id != self.current_id:
            return []
        events: list[Message] = [self._manufactured(cmd, self.current_id, self.current_qty)]
        self.finished = (self.finished + [(self.current_id, self.current_qty)])[-KEEP_FINISHED:]
        self.produced_total += self.current_qty
        self.batches += 1
        self.current_id, self.current_qty, self.due_at = "", 0, 0.0
        events += self._start(cmd, now, plan)
        return events

    def _manufactured(self, cause: Message, production_id: str, quantity: int) -> Message:
        return caused_by(cause, ItemsManufactured, source=SOURCE, once_per=production_id, sku=self.sku,
                         production_id=production_id, quantity=quantity)

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
        return [caused_by(cause, ProductionStarted, source=SOURCE, once_per=self.current_id, sku=self.sku,
                          production_id=self.current_id, quantity=qty)]
