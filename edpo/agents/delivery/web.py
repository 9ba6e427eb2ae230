"""The delivery service's REST operations and the delivery metrics read at every scrape."""

from __future__ import annotations

import msgspec

from edpo.domain.delivery import Delivery
from edpo.models.api import Errors, OrderId, PageQuery
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Problem, Reply, page
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.tables import Table

ATTEMPT_STATUSES = ("in_transit", "delivered", "failed", "withdrawn")


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    """Deliveries by order id; `next` is the cursor of the next page (null on the last)."""

    deliveries: list[Delivery]
    next: str | None


def add_routes(app: ServiceApp, deliveries_by_order: Table[Delivery]) -> None:
    """The delivery service's operations on the app's API."""
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
