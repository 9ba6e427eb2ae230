"""The warehouse service: stock per SKU and reservations per order in RocksDB-backed tables.

Two agents own two kinds of state. `order_desk` (keyed by order id) accepts orders, splits a
reservation into per-SKU lines and gathers their results; `stock_keeper` (keyed by SKU) owns
each SKU's stock on exactly one partition, so an order whose SKUs live on different
partitions is served by several stock keepers and completes when all have answered.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import faust
import msgspec

from edpo.agents.runtime import Outbox, StructTable, consume, error_json, raw_topic, service_app
from edpo.camunda.workers import install_task_worker
from edpo.config.catalog import load_catalog
from edpo.domain.reservation import OrderReservation, accept
from edpo.domain.stock import SkuStock
from edpo.models import (
    AcceptOrder,
    DeliveryCompleted,
    ItemsManufactured,
    LineReserved,
    Message,
    PackGoods,
    ReceiveStock,
    ReleaseLine,
    ReleaseStock,
    ReserveLine,
    ReserveStock,
    SeedStock,
    ShipLine,
    StockLevelChanged,
    StockReleased,
    caused_by,
    new_id,
)
from edpo.topics import (
    TopicSpec,
    delivery_events_topic,
    factory_events_topic,
    inventory_events_topic,
    reservation_updates_topic,
    stock_commands_topic,
    warehouse_commands_topic,
    warehouse_events_topic,
)

logger = logging.getLogger(__name__)
SOURCE = "warehouse"

app = service_app(SOURCE)
settings = app.edpo_settings  # type: ignore[attr-defined]
catalog = load_catalog(settings.catalog_file)

stock_by_sku = StructTable(app, "stock_by_sku", SkuStock, help="Stock per SKU: on hand, reserved, waiting orders")
reservations_by_order = StructTable(
    app, "reservations_by_order", OrderReservation, help="Each order's lines and how much of each is reserved"
)

# Where each kind of message goes: the topic and the field that is its key.
ROUTES: dict[type[Message], tuple[TopicSpec, str]] = {
    ReserveLine: (stock_commands_topic, "sku"),
    ReleaseLine: (stock_commands_topic, "sku"),
    ShipLine: (stock_commands_topic, "sku"),
    LineReserved: (reservation_updates_topic, "order_id"),
    StockLevelChanged: (inventory_events_topic, "sku"),
}


async def publish(out: Outbox, messages: list[Message]) -> None:
    """Send each message to its topic; anything not routed above is a warehouse event."""
    for msg in messages:
        spec, key_field = ROUTES.get(type(msg), (warehouse_events_topic, "order_id"))
        await out.send(spec, getattr(msg, key_field), msg)


# --- order desk: keyed by order id ----------------------------------------------------------------


async def on_order_message(msg: Message, out: Outbox) -> None:
    """Handlers for the order-keyed topics, in one visible place."""
    order_id: str = msg.order_id  # type: ignore[attr-defined]
    current: OrderReservation | None = reservations_by_order.get(order_id)
    match msg:
        case AcceptOrder():
            if current is not None:
                events = current.reaccept(msg)
            else:
                current, events = accept(msg, catalog.sku_set)
        case ReserveStock():
            if current is None:  # accepted elsewhere before a table loss; the command has the lines
                current = OrderReservation(order_id=order_id, lines={}, accepted=True)
            events = current.reserve(msg)
        case LineReserved() if current is not None:
            events = current.on_line_reserved(msg)
        case PackGoods() if current is not None:
            events = current.pack(msg)
        case ReleaseStock() if current is not None:
            events = current.release(msg)
        case ReleaseStock():  # nothing was ever reserved here: acknowledge so compensation can finish
            events = [caused_by(msg, StockReleased, source=SOURCE, reply=True, order_id=order_id)]
        case DeliveryCompleted() if current is not None:
            events = current.ship(msg)
        case _:
            return  # other delivery events, or news about an order this warehouse never saw
    if current is not None:
        reservations_by_order.set(order_id, current)
    await publish(out, events)


order_desk_topic = raw_topic(app, warehouse_commands_topic, reservation_updates_topic, delivery_events_topic)


@app.agent(order_desk_topic)
async def order_desk(stream: faust.StreamT) -> None:
    """Accept orders, split reservations into SKU lines, gather results, pack, release, ship."""
    await consume(app, stream, on_order_message, name="order_desk")


# --- stock keeper: keyed by SKU ---------------------------------------------------------------------


async def on_stock_message(msg: Message, out: Outbox) -> None:
    """Handlers for the SKU-keyed topics; invariants are checked before the new state is kept."""
    sku: str = msg.sku  # type: ignore[attr-defined]
    stock: SkuStock = stock_by_sku.get(sku) or SkuStock(sku=sku)
    match msg:
        case SeedStock():
            events = stock.seed(msg)
        case ReserveLine():
            events = stock.reserve(msg)
        case ReceiveStock() | ItemsManufactured():
            events = stock.receive(msg)
        case ReleaseLine():
            events = stock.release(msg)
        case ShipLine():
            events = stock.ship(msg)
        case _:
            return
    stock.check()  # raises before the table is written: the message is retried, then dead-lettered
    stock_by_sku.set(sku, stock)
    await publish(out, events)


stock_topic = raw_topic(app, stock_commands_topic, factory_events_topic)
stock_commands = raw_topic(app, stock_commands_topic)  # for sends from outside an agent


@app.agent(stock_topic)
async def stock_keeper(stream: faust.StreamT) -> None:
    """Own each SKU's stock: reserve, receive, allocate to waiting orders, release, ship."""
    await consume(app, stream, on_stock_message, name="stock_keeper")


@app.task
async def seed_stock() -> None:
    """Offer the catalog's starting stock; a SKU takes it only once, so restarts do not re-seed."""
    for item in catalog.skus:
        msg = SeedStock(source=SOURCE, sku=item.sku, quantity=item.stock)
        await stock_commands.send(key=item.sku.encode(), value=msgspec.json.encode(msg))


install_task_worker(app, SOURCE)

# --- web views ---------------------------------------------------------------------------------------


def _stock_json(sku: str) -> dict[str, Any] | None:
    stock = stock_by_sku.get(sku)
    if stock is None:
        return None
    return stock.view()


async def _stock_of(sku: str) -> dict[str, Any] | None:
    """A SKU's stock from whichever warehouse worker owns its partition."""
    owner = app.router.key_store(stock_by_sku.table.name, sku.encode())
    if owner == app.conf.canonical_url:
        return _stock_json(sku)
    url = owner.with_path(f"/stock/{sku}").with_query(local="1")
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json() if r.status == 200 else None


def _not_found(web: Any, sku: str) -> Any:
    return error_json(web, 404, "sku", f"unknown SKU {sku!r}")


@app.page("/stock")
async def stock_list(web: Any, request: Any) -> Any:
    """Every catalog SKU's stock: on hand, reserved, available."""
    rows = [row for item in catalog.skus if (row := await _stock_of(item.sku)) is not None]
    return web.json({"stock": rows})


@app.page("/stock/{sku}")
async def stock_item(web: Any, request: Any, sku: str) -> Any:
    """One SKU's stock."""
    if sku not in catalog.sku_set:
        return _not_found(web, sku)
    row = _stock_json(sku) if request.query.get("local") else await _stock_of(sku)
    return web.json(row) if row is not None else _not_found(web, sku)


@app.page("/stock/{sku}/receipts")
class Receipts(faust.web.View):
    """POST /stock/{sku}/receipts {"quantity": n}: goods received; waiting orders are served first."""

    async def post(self, request: Any, sku: str) -> Any:
        if sku not in catalog.sku_set:
            return _not_found(self, sku)
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as e:
            return error_json(self, 400, "", f"malformed JSON: {e}")
        qty = body.get("quantity") if isinstance(body, dict) else None
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= 1_000_000:
            return error_json(self, 422, "quantity", "quantity must be an integer 1..1000000")
        receipt_id = request.headers.get("Idempotency-Key") or new_id()
        msg = ReceiveStock(source=SOURCE, sku=sku, quantity=qty, receipt_id=receipt_id)
        fut = await stock_commands.send(key=sku.encode(), value=msgspec.json.encode(msg))
        await fut
        return self.json({"sku": sku, "quantity": qty, "receipt_id": receipt_id}, status=202)


@app.page("/reservations/{order_id}")
async def reservation_view(web: Any, request: Any, order_id: str) -> Any:
    """One order's reservation as the warehouse sees it (local partitions)."""
    r = reservations_by_order.get(order_id)
    if r is None:
        return error_json(web, 404, "order_id", "no reservation for this order on this worker")
    return web.json(msgspec.to_builtins(r))
