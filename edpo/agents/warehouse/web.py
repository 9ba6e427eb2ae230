"""The warehouse's REST operations (the contract: edpo/models/api.py; served and described by
edpo/runtime/http.py), its readiness check and the stock metrics read at every scrape."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import msgspec
from faust.app.router import SameNode
from faust.web.exceptions import ServiceUnavailable

from edpo.agents.warehouse.handlers import Warehouse
from edpo.domain.reservation import OrderReservation
from edpo.domain.stock import SkuStock
from edpo.models import new_id
from edpo.models.api import (
    Errors,
    OrderId,
    Receipt,
    ReceiptAccepted,
    Sku,
    StockLevel,
    StockPage,
    StockQuery,
)
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Problem, Reply, Unavailable, page
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.tables import StructTable, Table


def add_routes(app: ServiceApp, warehouse: Warehouse, stock_by_sku: StructTable[SkuStock],
               reservations_by_order: Table[OrderReservation]) -> None:
    """The warehouse's operations on the app's API: stock (gathered from the workers that own the
    SKUs), receipts, reservations."""
    catalog, settings = warehouse.catalog, app.settings
    api = app.api
    busy = Answer("The warehouse's partitions are being assigned, or Kafka is away: retry after Retry-After "
                  "seconds", Errors, {"Retry-After": "Seconds to wait"})
    unknown_sku = Answer("Not a catalog SKU", Errors)

    def known(sku: str) -> str:
        if sku not in catalog.sku_set:
            raise Problem(404, "sku", f"unknown SKU {sku!r}")
        return sku

    def rebalancing() -> Problem:
        return Problem(503, "", "the warehouse's partitions are being assigned; try again shortly",
                       headers={"Retry-After": "2"})

    def local_page(limit: int, after: str | None) -> tuple[list[StockLevel], str | None]:
        return page(((sku, StockLevel(**s.view())) for sku, s in stock_by_sku.local_items()), limit, after)

    @api.operation("GET", "/stock", summary="Stock of every SKU", query=StockQuery, open=True, tag="stock",
                   answers={200: Answer("One page of stock levels in SKU order", StockPage), 503: busy})
    async def list_stock(call: Call) -> Reply:
        """Every catalog SKU's stock: on hand, reserved, available, orders waiting; gathered from the
        workers that own the SKUs (?local=true: this worker's SKUs only). Open to all."""
        q: StockQuery = call.query
        if q.local:
            levels, cursor = local_page(q.limit, q.after)
            return Reply(200, StockPage(stock=levels, next=cursor))
        try:  # one request per worker, for its first `limit` SKUs after the cursor
            owners = {str(app.router.key_store(stock_by_sku.table.name, item.sku)) for item in catalog.skus}
        except (KeyError, TypeError):  # no assignment yet / no metadata for the changelog yet
            raise rebalancing() from None
        rows: list[StockLevel] = []
        for owner in owners:
            if owner == str(app.conf.canonical_url):
                rows += local_page(q.limit, q.after)[0]
                continue
            params = {"local": "true", "limit": str(q.limit), **({"after": q.after} if q.after else {})}
            try:
                async with app.http_client.get(f"{owner}/stock", params=params) as r:
                    if r.status != 200:  # that worker is rebalancing too
                        raise rebalancing()
                    rows += msgspec.json.decode(await r.read(), type=StockPage).stock
            except (aiohttp.ClientError, TimeoutError):  # that worker is gone; its partitions move soon
                raise rebalancing() from None
        levels, cursor = page(((level.sku, level) for level in rows if level.sku in catalog.sku_set), q.limit, None)
        return Reply(200, StockPage(stock=levels, next=cursor))

    @api.operation("GET", "/stock/{sku}", summary="Stock of one SKU", path_types={"sku": Sku}, query=StockQuery,
                   open=True, tag="stock",
                   answers={200: Answer("The SKU's stock level", StockLevel), 404: unknown_sku, 503: busy})
    async def get_stock(call: Call) -> Any:
        """One SKU's stock, answered by the worker that owns it (?local=true: from this worker's
        store only). Open to all."""
        sku = known(call.path["sku"])
        if not call.query.local:
            try:  # Faust's router: the worker owning the SKU's partition answers
                return await app.router.route_req(stock_by_sku.table.name, sku, app.web, call.request)
            except SameNode:
                pass
            except (ServiceUnavailable, aiohttp.ClientError, TimeoutError):  # no owner yet, or it is gone
                raise rebalancing() from None
        stock = stock_by_sku.get(sku)
        if stock is None:
            raise Problem(404, "sku", f"unknown SKU {sku!r}")
        return Reply(200, StockLevel(**stock.view()))

    @api.operation("POST", "/stock/{sku}/receipts", summary="Book goods received", path_types={"sku": Sku},
                   body=Receipt, idempotency_key=True, tag="stock",
                   answers={202: Answer("Booked: orders waiting for the SKU are served first", ReceiptAccepted),
                            404: unknown_sku, 503: busy})
    async def receive_stock(call: Call) -> Reply:
        """Goods arrived; the receipt is booked through the SKU's partition. With an Idempotency-Key
        (it becomes the receipt id) a retried receipt is booked once."""
        sku = known(call.path["sku"])
        receipt_id = call.idempotency_key() or new_id()
        try:
            await asyncio.wait_for(warehouse.receive(sku, call.body.quantity, receipt_id), settings.command_timeout)
        except TimeoutError:
            raise Unavailable("Kafka did not take the receipt in time") from None
        return Reply(202, ReceiptAccepted(sku=sku, quantity=call.body.quantity, receipt_id=receipt_id))

    @api.operation("GET", "/reservations/{order_id}", summary="One order's reservation", tag="stock",
                   path_types={"order_id": OrderId},
                   answers={200: Answer("What the order asked for and what is reserved", OrderReservation),
                            404: Answer("No reservation for this order on this worker", Errors)})
    async def get_reservation(call: Call) -> Reply:
        """One order's reservation as this worker sees it (its partitions); needs the token when set."""
        r = reservations_by_order.get(call.path["order_id"])
        if r is None:
            raise Problem(404, "order_id", "no reservation for this order on this worker")
        return Reply(200, r)


def unstocked_skus(skus: Iterable[str], *, owner_of: Callable[[str], str], me: str,
                   stocked: Callable[[str], bool]) -> list[str]:
    """The SKUs whose owner (owner_of(sku), a worker's URL) is me and whose stock is not stored yet."""
    return [sku for sku in skus if owner_of(sku) == me and not stocked(sku)]


def ready_when_seeded(app: ServiceApp, warehouse: Warehouse, stock_by_sku: StructTable[SkuStock]) -> None:
    """The worker is not ready (/health) before the catalog's stock of every SKU it owns is stored."""
    catalog = warehouse.catalog

    async def stock_ready() -> bool:
        """The seed is in Kafka and every catalog SKU this worker owns is in its stock table."""
        if not warehouse.seed_published:
            return False
        # Faust's router (/stock, table_route) hashes a key with the producer's metadata, which
        # holds the changelog topic only once the producer wrote to it: a restarted worker had not.
        changelog = stock_by_sku.table.changelog_topic.get_topic_name()
        await app.producer._ensure_producer().partitions_for(changelog)
        me = str(app.conf.canonical_url)
        return not unstocked_skus([item.sku for item in catalog.skus],
                                  owner_of=lambda sku: str(app.router.key_store(stock_by_sku.table.name, sku)),
                                  me=me, stocked=lambda sku: stock_by_sku.get(sku) is not None)

    app.ready_when("catalog stock seeded", stock_ready)


def watch_stock(metrics: Metrics, stock_by_sku: Table[SkuStock]) -> None:
    """Stock per SKU of the partitions this worker owns, read from its table at every scrape."""
    gauges = {
        "on_hand": metrics.gauge("edpo_stock_on_hand", "Units on hand per SKU (SKUs this worker owns)", ["sku"]),
        "reserved": metrics.gauge("edpo_stock_reserved", "Units reserved for orders per SKU", ["sku"]),
        "available": metrics.gauge("edpo_stock_available", "Units on hand and not reserved per SKU", ["sku"]),
        "waiting": metrics.gauge("edpo_stock_waiting_orders", "Orders waiting for units of the SKU", ["sku"]),
    }

    async def levels() -> list[Sample]:
        samples: list[Sample] = []
        for sku, stock in stock_by_sku.local_items():
            view = stock.view()
            samples += [(gauge, (sku,), view[field]) for field, gauge in gauges.items()]
        return samples

    metrics.at_scrape("stock", levels, *gauges.values())
