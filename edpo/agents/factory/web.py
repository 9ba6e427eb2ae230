"""The factory's REST operations and the production metrics read at every scrape."""

from __future__ import annotations

import msgspec

from edpo.domain.factory import ProductionLine
from edpo.models.api import PageQuery
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Reply, page
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.tables import Table


class ProductionPage(msgspec.Struct, frozen=True, kw_only=True):
    """Production lines by SKU; `next` is the cursor of the next page (null on the last)."""

    lines: list[ProductionLine]
    next: str | None


def add_routes(app: ServiceApp, production_by_sku: Table[ProductionLine]) -> None:
    """The factory's operations on the app's API."""

    @app.api.operation("GET", "/production", summary="Production lines on this worker", query=PageQuery,
                       open=True, tag="factory",
                       answers={200: Answer("One page of production lines in SKU order", ProductionPage)})
    async def list_production(call: Call) -> Reply:
        """Production lines of the partitions this worker owns; at most `limit`, the next page starts
        after the cursor `next`. Open to all."""
        found, cursor = page(production_by_sku.local_items(), call.query.limit, call.query.after)
        return Reply(200, ProductionPage(lines=found, next=cursor))


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
