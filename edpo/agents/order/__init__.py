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

import faust
import mode
import msgspec
from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.agents.order import bridge
from edpo.agents.order.reconcile import Reconciler
from edpo.agents.order.store import OrderStore
from edpo.camunda import ORDER_FULFILMENT, ORDER_FULFILMENT_BPMN
from edpo.camunda.engine import EngineError
from edpo.config import Settings
from edpo.config.catalog import load_catalog
from edpo.domain.lifecycle import STATUSES, status_for
from edpo.domain.order import NewOrder, validate_new_order
from edpo.models import Message
from edpo.runtime.app import ServiceApp, error_json
from edpo.runtime.consume import TRANSIENT
from edpo.runtime.failpoints import NONE, Failpoints
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
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await reconciler.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - engine or database away: next round
                logger.exception("reconciliation round failed")

    async def _relay(self) -> None:
        """Publish outbox rows (events once; commands until acknowledged, with backoff)."""
        wake = self.orders.relay_wake
        while True:
            wake.clear()  # before looking, so a row written meanwhile is not missed
            try:
                sent = await self.orders.store.relay_once(
                    self.app.publisher.send_encoded, self.settings.command_timeout, self.settings.command_attempts,
                    after_send=lambda: self.app.failpoints.hit("after_publish"), count=self.app.count)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Kafka or DB hiccup: rows stay and are retried
                logger.exception("outbox relay round failed")
                sent = 0
            if not sent:
                try:
                    await asyncio.wait_for(wake.wait(), self.settings.tick)
                except TimeoutError:
                    pass


def create_app(settings: Settings) -> ServiceApp:
    """The order worker: REST API, lifecycle agent, outbox relay, process bridge, cancel-order task."""
    app = ServiceApp(SOURCE, settings)
    app.ready.clear()  # until the database is open and the process deployed
    catalog = load_catalog(settings.catalog)
    orders = Orders(OrderStore(settings.database_url), app.failpoints)
    app.start_with(OrderBackground(app, orders))

    app.agent_over("order_lifecycle", orders.on_event, warehouse_events_topic, delivery_events_topic)
    app.serve_tasks({"cancel-order": orders.cancel_order})

    # --- REST API ---

    def unavailable(web: Any, e: BaseException) -> Any:
        """The database is away: 503 with Retry-After; nothing was stored, the client retries
        (with its Idempotency-Key, a retry never places the order twice)."""
        logger.warning("order API: database unavailable (%s: %s)", type(e).__name__, e)
        return web.json({"errors": [{"field": "", "message": "the order database is unavailable; retry shortly"}]},
                        status=503, headers={"Retry-After": "2"})

    @app.page("/orders")
    class OrdersView(faust.web.View):
        """POST /orders places an order; GET /orders?status=&limit= lists them."""

        async def post(self, request: faust.web.Request) -> faust.web.Response:
            raw = await request.read()
            try:
                body = msgspec.json.decode(raw) if raw else None
            except msgspec.DecodeError as e:
                return error_json(self, 400, "", f"malformed JSON: {e}")
            new, errors = validate_new_order(body, catalog.sku_set)
            if new is None:
                return self.json({"errors": errors}, status=422)
            try:
                order, created = await orders.place(new, request.headers.get("Idempotency-Key") or None)
            except TRANSIENT as e:
                return unavailable(self, e)
            headers = {"Location": f"/orders/{order['order_id']}"}
            if not created:
                headers["Idempotent-Replayed"] = "true"
            return self.json(order, status=201, headers=headers)

        async def get(self, request: faust.web.Request) -> faust.web.Response:
            status = request.query.get("status") or None
            if status is not None and status not in STATUSES:
                return error_json(self, 422, "status", f"unknown status {status!r}")
            try:
                limit = int(request.query.get("limit", "100"))
                if not 1 <= limit <= 1000:
                    raise ValueError
            except ValueError:
                return error_json(self, 422, "limit", "limit must be an integer 1..1000")
            try:
                return self.json({"orders": await orders.store.find(status, limit)})
            except TRANSIENT as e:
                return unavailable(self, e)

    @app.page("/orders/{order_id}")
    class OrderView(faust.web.View):
        """GET /orders/{order_id}: the order with its lines, status history and process."""

        async def get(self, request: faust.web.Request, order_id: str) -> faust.web.Response:
            try:
                order = await orders.store.get(order_id)
            except TRANSIENT as e:
                return unavailable(self, e)
            if order is None:
                return error_json(self, 404, "order_id", f"no order {order_id!r}")
            if request.query.get("process", "true").lower() not in ("false", "0", "no"):
                order["process"] = await process_of(order_id)
            return self.json(order)

    async def process_of(order_id: str) -> dict[str, Any] | None:
        """The order's process instance as the engine sees it; None (and a warning) when the
        engine cannot say: the order itself is still served."""
        try:
            return await asyncio.wait_for(app.engine.process_view(ORDER_FULFILMENT, order_id), PROCESS_VIEW_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - engine away or slow: the order without its process
            logger.warning("order API: process of %s unavailable (%s: %s)", order_id, type(e).__name__, e)
            return None

    @app.page("/orders/{order_id}/cancel")
    class CancelView(faust.web.View):
        """POST /orders/{order_id}/cancel: 202 while the courier does not have the goods (the
        order moves to CANCELLED once compensation is done), 409 with the reason after, 404."""

        async def post(self, request: faust.web.Request, order_id: str) -> faust.web.Response:
            try:
                outcome, found = await orders.request_cancel(order_id)
            except TRANSIENT as e:
                return unavailable(self, e)
            if outcome == "unknown":
                return error_json(self, 404, "order_id", f"no order {order_id!r}")
            if outcome == "conflict":
                assert found is not None
                return self.json({"errors": [{"field": "order_id", "message": f"cannot cancel: {found['reason']}"}],
                                  "status": found["status"]}, status=409)
            return self.json(found, status=202, headers={"Location": f"/orders/{order_id}"})

    @app.page("/catalog")
    async def catalog_view(web: Any, request: Any) -> Any:
        """The SKUs orders may contain."""
        return web.json({"skus": [msgspec.to_builtins(item) for item in catalog.skus]})

    return app
