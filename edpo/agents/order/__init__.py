"""The order service: REST API, order lifecycle in PostgreSQL, outbox relay, process bridge.

It builds each order's lifecycle from the other services' events (choreography), sends
AcceptOrder through its transactional outbox until the warehouse acknowledges it, starts the
`order_fulfilment` process for accepted orders and correlates the events the process waits for.
Customers cancel through it (POST /orders/{id}/cancel, correlated as CancelRequested), and
GET /orders/{id} shows where the order's process is. It serves the process's cancel-order task.

The only service with a database, hence a package: `store.py` (orders, outbox, inbox),
`bridge.py` (inbox -> engine), `migrate.py` and `migrations/`. This module has the same
layout as every service module: the handlers, then `create_app`, the composition root.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import mode
import msgspec
from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.agents.order import bridge
from edpo.agents.order.reconcile import Reconciler
from edpo.agents.order.store import OrderStore, parse_order_cursor
from edpo.camunda import ORDER_FULFILMENT, ORDER_FULFILMENT_BPMN
from edpo.camunda.engine import EngineError
from edpo.config import Settings
from edpo.config.catalog import Catalog, load_catalog
from edpo.domain.lifecycle import STATUSES, status_for
from edpo.domain.order import InvalidOrder, NewOrder, new_order
from edpo.logs import OutageLog, log_context
from edpo.models import Message
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
from edpo.runtime.consume import server_away
from edpo.runtime.failpoints import NONE, Failpoints
from edpo.runtime.http import Answer, Call, Problem, Reply
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.retry import STARTUP
from edpo.topics import delivery_events_topic, warehouse_events_topic

logger = logging.getLogger(__name__)
SOURCE = "order"
DISPATCHERS = "dispatchers"  # candidate group of the process's user tasks
PROCESS_VIEW_TIMEOUT = 3.0  # seconds GET /orders/{id} waits for the engine before answering without `process`


class Orders:
    """The order service's handlers over its store; they wake the relay and the bridge when
    they leave work for them."""

    def __init__(self, store: OrderStore, failpoints: Failpoints = NONE) -> None:
        self.store = store
        self.failpoints = failpoints
        self.relay_wake = asyncio.Event()
        self.bridge_wake = asyncio.Event()

    async def on_event(self, msg: Message) -> None:
        """Acknowledgments, lifecycle and the process inbox, in one transaction per event."""
        if status_for(msg) is None and not bridge.wanted(msg):
            return  # progress nobody here records (GoodsPicked, DeliveryAccepted, ...): no database trip
        status, queued = await self.store.record_event(msg)
        self.failpoints.hit("after_store")
        if status:
            self.relay_wake.set()
        if queued:
            self.bridge_wake.set()

    async def place(self, new: NewOrder, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """Store a new order with its OrderPlaced and AcceptOrder; (order, created)."""
        order, created = await self.store.create(new, idempotency_key)
        if created:
            self.relay_wake.set()
        return order, created

    async def cancel_order(self, task: ExternalTask) -> TaskResult:
        """Compensation's last step: CANCELLED, and OrderCancelled for everyone else. The path
        that led here set cancel_reason (attempts spent, a dispatcher, the customer)."""
        reason = task.get_variable("cancel_reason") or "every delivery attempt failed"
        await self.store.cancel(task.get_business_key(), reason, SOURCE)
        self.relay_wake.set()
        return task.complete({})

    async def request_cancel(self, order_id: str) -> tuple[str, dict[str, Any] | None]:
        """A customer's cancellation: accepted (the process is told), conflict, or unknown."""
        outcome, found = await self.store.request_cancel(order_id, "the customer cancelled it")
        if outcome == "accepted":
            self.bridge_wake.set()
        return outcome, found


class OrderBackground(mode.Service):
    """Opens the database and deploys the process, then runs the outbox relay and the process bridge."""

    def __init__(self, app: ServiceApp, orders: Orders) -> None:
        super().__init__()
        self.app = app
        self.orders = orders
        self.settings = app.settings

    async def deploy(self) -> None:
        await self.app.engine.deploy("edpo-order-fulfilment", ORDER_FULFILMENT_BPMN)
        # The process's user tasks are for the group dispatchers; the dev stack's user demo is one.
        # An engine whose users live elsewhere (LDAP, read-only) refuses: the process runs anyway.
        try:
            await self.app.engine.ensure_member(DISPATCHERS, "Dispatchers", self.settings.dispatcher_user)
        except EngineError as e:
            logger.warning("could not put %s into the group %s: %s", self.settings.dispatcher_user, DISPATCHERS, e)

    async def start_variables(self, order_id: str) -> dict[str, Any] | None:
        values = await self.orders.store.start_variables(order_id)
        if values is not None:
            values["max_delivery_attempts"] = self.settings.delivery_attempts
            values["delivery_attempt"] = 0
            values["delivery_retry_backoff"] = f"PT{self.settings.delivery_retry_backoff:g}S"
            values["delivery_timeout"] = self.settings.delivery_timeout
            values["stock_timeout"] = self.settings.stock_timeout
            values["order_deadline"] = self.settings.order_deadline
        return values

    @mode.Service.task
    async def _run(self) -> None:
        pool = await self.orders.store.open()
        await STARTUP.retry("BPMN deployment", self.deploy)
        process_bridge = bridge.ProcessBridge(self.settings, pool, self.app.engine, self.start_variables, self.deploy,
                                              wake=self.orders.bridge_wake, failpoints=self.app.failpoints)
        reconciler = Reconciler(pool, self.app.engine, process_bridge.process_key, grace=self.settings.reconcile_grace,
                                retention_hours=self.settings.retention_hours, count=self.app.count,
                                wake=self.orders.bridge_wake.set, wake_relay=self.orders.relay_wake.set)
        self.app.health_details["outbox"] = lambda: self.orders.store.outbox_report(self.settings.command_attempts)
        self.app.ready.set()
        await asyncio.gather(process_bridge.run(), self._relay(), self._reconcile(reconciler))

    async def on_stop(self) -> None:
        await self.orders.store.close()

    async def _reconcile(self, reconciler: Reconciler) -> None:
        """Repair what crashes left between orders and process instances, every interval."""
        outage = OutageLog(logger, "reconciliation round")
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await reconciler.run_once()
                outage.passed()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # engine or database away: next round
                if server_away(e):
                    outage.failed(e)
                else:
                    logger.exception("reconciliation round failed")

    async def _relay(self) -> None:
        """Publish outbox rows (events once; commands until acknowledged, with backoff)."""
        wake = self.orders.relay_wake
        outage = OutageLog(logger, "outbox relay round")
        while True:
            wake.clear()  # before looking, so a row written meanwhile is not missed
            try:
                sent = await self.orders.store.relay_once(
                    self.app.publisher.send_encoded, self.settings.command_timeout, self.settings.command_attempts,
                    after_send=lambda: self.app.failpoints.hit("after_publish"), count=self.app.count)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Kafka or DB hiccup: rows stay and are retried
                if server_away(e):
                    outage.failed(e)
                else:
                    logger.exception("outbox relay round failed")
                sent = 0
            else:
                outage.passed()
            if not sent:
                try:
                    await asyncio.wait_for(wake.wait(), self.settings.tick)
                except TimeoutError:
                    pass


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
        b = await store.backlog(command_attempts)
        return [(outbox, ("unsent",), b["unsent"]), (outbox, ("awaiting_ack",), b["awaiting_ack"]),
                (unanswered, (), b["unanswered"]), (outbox_age, (), b["oldest"]),
                (inbox, ("waiting",), b["waiting"]), (inbox, ("held",), b["held"]), (inbox_age, (), b["inbox_oldest"])]

    metrics.at_scrape("orders", by_status, orders)
    metrics.at_scrape("backlog", backlog, outbox, unanswered, outbox_age, inbox, inbox_age)


def create_app(settings: Settings) -> ServiceApp:
    """The order worker: REST API, lifecycle agent, outbox relay, process bridge, cancel-order task."""
    app = ServiceApp(SOURCE, settings, title="EDPO order service",
                     description="Place, follow and cancel orders. Errors: {\"errors\": [{\"field\", \"message\"}]}.")
    app.ready.clear()  # until the database is open and the process deployed
    catalog = load_catalog(settings.catalog)
    orders = Orders(OrderStore(settings.database_url), app.failpoints)
    app.start_with(OrderBackground(app, orders))
    watch_orders(app.metrics, orders.store, settings.command_attempts)

    app.agent_over("order_lifecycle", dict.fromkeys((*warehouse_events_topic.types, *delivery_events_topic.types),
                                                    orders.on_event), warehouse_events_topic, delivery_events_topic)
    app.serve_tasks({"cancel-order": orders.cancel_order})

    # --- REST API (the contract: edpo/models/api.py; served and described by edpo/runtime/http.py) ---

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

    return app
