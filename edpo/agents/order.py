"""The order service: REST API, order lifecycle in PostgreSQL, outbox relay, process bridge.

It builds each order's lifecycle from the other services' events (choreography), sends
AcceptOrder through its transactional outbox until the warehouse acknowledges it, starts the
`order_fulfilment` process for accepted orders and correlates the events the process waits for.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
import faust
import msgspec

from edpo.agents.runtime import Outbox, consume, error_json, raw_topic, retrying, service_app
from edpo.camunda import bridge
from edpo.camunda.engine import Engine
from edpo.camunda.workers import TaskContext, install_task_worker
from edpo.config.catalog import load_catalog
from edpo.db import orders as repo
from edpo.db.migrate import migrate
from edpo.domain.lifecycle import STATUSES, status_for
from edpo.domain.order import validate_new_order
from edpo.models import Message, OrderAccepted, OrderCancelled, OrderRejected
from edpo.topics import BY_NAME, delivery_events_topic, order_events_topic, warehouse_events_topic

logger = logging.getLogger(__name__)

app = service_app("order")
settings = app.edpo_settings  # type: ignore[attr-defined]
catalog = load_catalog(settings.catalog_file)
BPMN = Path(__file__).resolve().parents[1] / "camunda" / "order_fulfilment.bpmn"


class Resources:
    """Connections opened once the worker runs (not at import, so `--help` needs no servers)."""

    pool: asyncpg.Pool | None = None
    engine: Engine | None = None
    bridge: bridge.ProcessBridge | None = None
    relay_wake: asyncio.Event = asyncio.Event()


res = Resources()
app.edpo_ready.clear()  # type: ignore[attr-defined]


async def pool() -> asyncpg.Pool:
    await app.edpo_ready.wait()  # type: ignore[attr-defined]
    assert res.pool is not None
    return res.pool


@app.task
async def open_resources() -> None:
    """Migrate the schema, open the pool, deploy the process, start the bridge and relay."""
    await retrying("database migration", lambda: migrate(settings.database_url))
    res.pool = await retrying(
        "database pool", lambda: asyncpg.create_pool(settings.database_url, min_size=2, max_size=20)
    )
    res.engine = Engine(settings.camunda_url)
    async def deploy() -> None:
        await res.engine.deploy("edpo-order-fulfilment", BPMN)  # type: ignore[union-attr]

    await retrying("BPMN deployment", deploy)

    async def start_vars(order_id: str) -> dict[str, Any] | None:
        values = await repo.start_variables(res.pool, order_id)  # type: ignore[arg-type]
        if values is not None:
            values["max_delivery_attempts"] = settings.delivery_attempts
            values["delivery_attempt"] = 0
            values["delivery_retry_backoff"] = f"PT{settings.delivery_retry_backoff:g}S"
        return values

    res.bridge = bridge.ProcessBridge(settings, res.pool, res.engine, start_vars, deploy)
    app.edpo_ready.set()  # type: ignore[attr-defined]
    await asyncio.gather(res.bridge.run(), relay_outbox())


# --- outbox relay --------------------------------------------------------------------------------


async def relay_outbox() -> None:
    """Publish outbox rows (events once; commands until acknowledged, with backoff)."""
    producer_topics: dict[str, faust.TopicT] = {}
    while True:
        res.relay_wake.clear()  # before looking, so a row written meanwhile is not missed
        try:
            sent = await _relay_once(producer_topics)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - Kafka or DB hiccup: rows stay and are retried
            logger.exception("outbox relay round failed")
            sent = 0
        if not sent:
            try:
                await asyncio.wait_for(res.relay_wake.wait(), settings.tick)
            except TimeoutError:
                pass


async def _relay_once(topics: dict[str, faust.TopicT]) -> int:
    assert res.pool is not None
    async with res.pool.acquire() as conn, conn.transaction():
        rows = await repo.due_outbox(conn, 500)
        if not rows:
            return 0
        futures = []
        for r in rows:
            if r["topic"] not in topics:
                topics[r["topic"]] = raw_topic(app, BY_NAME[r["topic"]])
            futures.append(await topics[r["topic"]].send(key=r["key"].encode(), value=bytes(r["payload"])))
        await asyncio.gather(*futures)  # on Kafka before the rows count as sent
        await repo.mark_sent(conn, rows, settings.command_timeout, max_backoff=60.0)
        return len(rows)


# --- events from the other services ----------------------------------------------------------------

events_topic = raw_topic(app, warehouse_events_topic, delivery_events_topic)


async def on_event(msg: Message, out: Outbox) -> None:
    """Acknowledgments, lifecycle and the process inbox, in one transaction per event."""
    if status_for(msg) is None and not bridge.wanted(msg):
        return  # progress nobody here records (GoodsPicked, DeliveryAccepted, ...): no database trip
    db = await pool()
    async with db.acquire() as conn, conn.transaction():
        if isinstance(msg, (OrderAccepted, OrderRejected)):
            await repo.ack_command(conn, msg.correlation_id, msg.type)
        status = await repo.apply_status(conn, msg)
        queued = await bridge.record(conn, msg)
    if status:
        res.relay_wake.set()
    if queued and res.bridge:
        res.bridge.wake.set()


@app.agent(events_topic)
async def order_lifecycle(stream: faust.StreamT) -> None:
    """Build each order's lifecycle from warehouse and delivery events."""
    await consume(app, stream, on_event, name="order_lifecycle")


# --- the cancel-order task of the process ---------------------------------------------------------


async def cancel_order(order_id: str, reason: str) -> None:
    """Compensation's last step: CANCELLED, and OrderCancelled for everyone else."""
    db = await pool()
    trace = await db.fetchval("SELECT trace_id FROM orders WHERE order_id = $1", order_id)
    cancelled = OrderCancelled(source="order", order_id=order_id, reason=reason, trace_id=trace or "")
    async with db.acquire() as conn, conn.transaction():
        if await repo.apply_status(conn, cancelled):
            await repo.enqueue(conn, order_events_topic, order_id, cancelled)
    res.relay_wake.set()


def _with_cancel(ctx: TaskContext) -> None:
    ctx.cancel_order = cancel_order


install_task_worker(app, "order", _with_cancel)

# --- REST API -------------------------------------------------------------------------------------


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
        key = request.headers.get("Idempotency-Key") or None
        order, created = await repo.create_order(await pool(), new, key)
        if created:
            res.relay_wake.set()
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
        return self.json({"orders": await repo.list_orders(await pool(), status, limit)})


@app.page("/orders/{order_id}")
class OrderView(faust.web.View):
    """GET /orders/{order_id}: the order with its lines and status history."""

    async def get(self, request: faust.web.Request, order_id: str) -> faust.web.Response:
        order = await repo.get_order(await pool(), order_id)
        if order is None:
            return error_json(self, 404, "order_id", f"no order {order_id!r}")
        return self.json(order)


@app.page("/catalog")
async def catalog_view(web: Any, request: Any) -> Any:
    """The SKUs orders may contain."""
    return web.json({"skus": [msgspec.to_builtins(item) for item in catalog.skus]})
