"""The order service's REST API (the contract: edpo/models/api.py; served and described by
edpo/runtime/http.py) and the gauges it reads from the database at every scrape."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from edpo.agents.order.handlers import Orders
from edpo.agents.order.inbox import inbox_backlog
from edpo.agents.order.outbox import outbox_backlog
from edpo.agents.order.store import OrderStore, parse_order_cursor
from edpo.camunda import ORDER_FULFILMENT
from edpo.config.catalog import Catalog
from edpo.domain.lifecycle import STATUSES
from edpo.domain.order import InvalidOrder, new_order
from edpo.logs import log_context
from edpo.models.api import (
    CancelConflict,
    Errors,
    Order,
    OrderId,
    OrderPage,
    OrderQuery,
    OrdersQuery,
    OrderSummary,
    PlaceOrder,
)
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Problem, Reply
from edpo.runtime.metrics import Metrics, Sample

logger = logging.getLogger(__name__)
PROCESS_VIEW_TIMEOUT = 3.0  # seconds GET /orders/{id} waits for the engine before answering without `process`


def add_routes(app: ServiceApp, orders: Orders, catalog: Catalog) -> None:
    """Place, list, show and cancel orders; the catalog."""
    api = app.api
    api.refine("OrderLine", "sku", enum=[item.sku for item in catalog.skus])
    outage = Answer("A server is unavailable (the database); nothing was stored: retry after Retry-After seconds "
                    "with the same Idempotency-Key", Errors, {"Retry-After": "Seconds to wait"})
    not_found = Answer("No such order", Errors)

    @api.operation("POST", "/orders", summary="Place an order", body=PlaceOrder, idempotency_key=True, tag="orders",
                   answers={201: Answer("The order, stored and on its way", Order,
                                        {"Location": "The order's URL",
                                         "Idempotent-Replayed": "true when the Idempotency-Key was known"},
                                        links={"GetOrder": ("get_order", {"order_id": "$response.body#/order_id"}),
                                               "CancelOrder": ("cancel_order",
                                                               {"order_id": "$response.body#/order_id"})}),
                            503: outage})
    async def place_order(call: Call) -> Reply:
        """Store a new order (PLACED) with its OrderPlaced event and the warehouse's AcceptOrder
        command, in one transaction. Unknown SKUs are refused (422)."""
        try:
            new = new_order(call.body, catalog.sku_set)
        except InvalidOrder as e:
            raise Problem(422, e.errors[0]["field"], e.errors[0]["message"], extra={"errors": e.errors}) from None
        order, created = await orders.place(new, call.idempotency_key())
        with log_context(order_id=order["order_id"], trace_id=order.get("trace_id")):
            logger.info("order placed" if created else "order placed before (same Idempotency-Key)")
        headers = {"Location": f"/orders/{order['order_id']}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return Reply(201, msgspec.convert(order, Order), headers)

    @api.operation("GET", "/orders", summary="List orders, newest first", query=OrdersQuery, tag="orders",
                   answers={200: Answer("One page of orders", OrderPage), 503: outage})
    async def list_orders(call: Call) -> Reply:
        """Orders, newest first, optionally of one status; at most `limit` per page, the next
        page starts at the cursor `next`. Customer ids are personal: needs the token when set."""
        q: OrdersQuery = call.query
        after = None
        if q.after is not None:
            after = parse_order_cursor(q.after)
            if after is None:
                raise Problem(422, "after", "after must be the `next` cursor of an earlier page")
        found, cursor = await orders.store.find(q.status, q.limit, after)
        return Reply(200, OrderPage(orders=[msgspec.convert(o, OrderSummary) for o in found], next=cursor))

    @api.operation("GET", "/orders/{order_id}", summary="One order", query=OrderQuery,
                   path_types={"order_id": OrderId}, tag="orders",
                   answers={200: Answer("The order with its lines, status history and process", Order),
                            404: not_found, 503: outage})
    async def get_order(call: Call) -> Reply:
        """The order with its lines, status history and where its process is (`process`; null
        when the engine cannot say within 3 s; left out with ?process=false)."""
        order_id = call.path["order_id"]
        order = await orders.store.get(order_id)
        if order is None:
            raise Problem(404, "order_id", f"no order {order_id!r}")
        if call.query.process:
            order["process"] = await process_of(order_id)
        return Reply(200, msgspec.convert(order, Order))

    async def process_of(order_id: str) -> dict[str, Any] | None:
        """The order's process instance as the engine sees it; None (and a warning) when the
        engine cannot say: the order itself is still served."""
        try:
            return await asyncio.wait_for(app.engine.process_view(ORDER_FULFILMENT, order_id), PROCESS_VIEW_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - engine away or slow: the order without its process
            logger.warning("order API: process of %s unavailable (%s: %s)", order_id, type(e).__name__, e)
            return None

    @api.operation("POST", "/orders/{order_id}/cancel", summary="Cancel an order", tag="orders",
                   path_types={"order_id": OrderId},
                   answers={202: Answer("Accepted: the process withdraws the delivery, returns the goods and "
                                        "ends CANCELLED", Order, {"Location": "The order's URL"}),
                            404: not_found, 409: Answer("Too late (SHIPPED or final): why, and the status",
                                                        CancelConflict), 503: outage})
    async def cancel_order(call: Call) -> Reply:
        """A customer's cancellation: 202 while the courier does not have the goods (asking twice
        is harmless), 409 with the reason after."""
        order_id = call.path["order_id"]
        outcome, found = await orders.request_cancel(order_id)
        if outcome == "unknown":
            raise Problem(404, "order_id", f"no order {order_id!r}")
        if outcome == "conflict":
            assert found is not None
            raise Problem(409, "order_id", f"cannot cancel: {found['reason']}", extra={"status": found["status"]})
        return Reply(202, msgspec.convert(found, Order), {"Location": f"/orders/{order_id}"})

    @api.operation("GET", "/catalog", summary="The catalog", open=True, tag="orders",
                   answers={200: Answer("The SKUs orders may contain, with their starting stock", Catalog)})
    async def get_catalog(call: Call) -> Reply:
        """The SKUs orders may contain, with their starting stock. Open to all."""
        return Reply(200, catalog)


def watch_orders(metrics: Metrics, store: OrderStore, command_attempts: int) -> None:
    """Orders by status, and the outbox's and the inbox's backlog, read from the database at
    every scrape (left out of a scrape while the database does not answer)."""
    orders = metrics.gauge("edpo_orders", "Orders in the order database, by status", ["status"])
    outbox = metrics.gauge("edpo_outbox_backlog", "Outbox rows not done: unsent (never sent), awaiting_ack "
                           "(commands sent, not acknowledged yet)", ["state"])
    unanswered = metrics.gauge("edpo_outbox_commands_unanswered", "Commands still unanswered after "
                               "EDPO_COMMAND_ATTEMPTS sends (resent at the backoff's cap meanwhile)")
    outbox_age = metrics.gauge("edpo_outbox_oldest_seconds", "Age of the oldest outbox row not done (0: none)")
    inbox = metrics.gauge("edpo_inbox_backlog", "Process inbox rows not correlated yet: waiting (for their "
                          "instance or their turn), held (the engine failed or was away)", ["state"])
    inbox_age = metrics.gauge("edpo_inbox_oldest_seconds", "Age of the oldest pending process inbox row (0: none)")

    async def by_status() -> list[Sample]:
        counts = await store.status_counts()
        return [(orders, (status,), counts.get(status, 0)) for status in STATUSES]

    async def backlog() -> list[Sample]:
        pool = store.opened_pool()
        o, i = await asyncio.gather(outbox_backlog(pool, command_attempts), inbox_backlog(pool))
        return [(outbox, ("unsent",), o["unsent"]), (outbox, ("awaiting_ack",), o["awaiting_ack"]),
                (unanswered, (), o["unanswered"]), (outbox_age, (), o["oldest"]),
                (inbox, ("waiting",), i["waiting"]), (inbox, ("held",), i["held"]), (inbox_age, (), i["oldest"])]

    metrics.at_scrape("orders", by_status, orders)
    metrics.at_scrape("backlog", backlog, outbox, unanswered, outbox_age, inbox, inbox_age)
