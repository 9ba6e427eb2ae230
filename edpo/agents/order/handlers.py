"""The order service's handlers (`Orders`) and its background work (`OrderBackground`): the
database and the process deployment at start-up, then the outbox relay, the process bridge
and reconciliation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import mode
from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.agents.order.bridge import ProcessBridge
from edpo.agents.order.inbox import WANTED
from edpo.agents.order.outbox import outbox_report, relay_once
from edpo.agents.order.reconcile import Reconciler
from edpo.agents.order.store import SOURCE, OrderStore, Store
from edpo.camunda import ORDER_FULFILMENT_BPMN
from edpo.camunda.engine import EngineError
from edpo.domain.lifecycle import STATUS_OF
from edpo.domain.order import NewOrder
from edpo.logs import OutageLog
from edpo.models import Message
from edpo.runtime.app import ServiceApp
from edpo.runtime.consume import Handler, server_away
from edpo.runtime.failpoints import NONE, Failpoints
from edpo.runtime.retry import STARTUP
from edpo.topics import delivery_events_topic, warehouse_events_topic

logger = logging.getLogger(__name__)
DISPATCHERS = "dispatchers"  # candidate group of the process's user tasks
# What the order_lifecycle agent reads.
LIFECYCLE_TOPICS = (warehouse_events_topic, delivery_events_topic)


class Orders:
    """The order service's handlers over its store; they wake the relay and the bridge when
    they leave work for them."""

    def __init__(self, store: Store, failpoints: Failpoints = NONE) -> None:
        self.store = store
        self.failpoints = failpoints
        self.relay_wake = asyncio.Event()
        self.bridge_wake = asyncio.Event()

    def handlers(self) -> dict[type[Message], Handler]:
        """The order_lifecycle agent's {event type: handler}: the events of its topics that move an
        order (domain/lifecycle.py) or that its process starts on or waits for (inbox.py). The
        rest (GoodsPicked, DeliveryAccepted, ...) never reach a handler: no database trip."""
        recorded = STATUS_OF.keys() | WANTED
        return {t: self.on_event for spec in LIFECYCLE_TOPICS for t in spec.types if t in recorded}

    async def on_event(self, msg: Message) -> None:
        """Acknowledgments, lifecycle and the process inbox, in one transaction per event."""
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

    def __init__(self, app: ServiceApp, orders: Orders, store: OrderStore) -> None:
        super().__init__()
        self.app = app
        self.orders = orders
        self.store = store
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
        values = await self.store.start_variables(order_id)
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
        pool = await self.store.open()
        await STARTUP.retry("BPMN deployment", self.deploy)
        process_bridge = ProcessBridge(self.settings, pool, self.app.engine, self.start_variables, self.deploy,
                                       wake=self.orders.bridge_wake, failpoints=self.app.failpoints)
        reconciler = Reconciler(pool, self.app.engine, process_bridge.process_key, grace=self.settings.reconcile_grace,
                                retention_hours=self.settings.retention_hours, count=self.app.count,
                                wake=self.orders.bridge_wake.set, wake_relay=self.orders.relay_wake.set)
        self.app.health_details["outbox"] = lambda: outbox_report(pool, self.settings.command_attempts)
        self.app.ready.set()
        await asyncio.gather(process_bridge.run(), self._relay(pool), self._reconcile(reconciler))

    async def on_stop(self) -> None:
        await self.store.close()

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

    async def _relay(self, pool: asyncpg.Pool) -> None:
        """Publish outbox rows (events once; commands until acknowledged, with backoff)."""
        wake = self.orders.relay_wake
        outage = OutageLog(logger, "outbox relay round")
        while True:
            wake.clear()  # before looking, so a row written meanwhile is not missed
            try:
                sent = await relay_once(pool, self.app.publisher.send_encoded, self.settings.command_timeout,
                                        self.settings.command_attempts, count=self.app.count,
                                        after_send=lambda: self.app.failpoints.hit("after_publish"))
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
