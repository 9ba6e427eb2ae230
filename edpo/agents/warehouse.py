"""The warehouse service: stock per SKU and reservations per order in RocksDB-backed tables.

Two agents own two kinds of state. `order_desk` (keyed by order id) accepts orders, splits a
reservation into per-SKU lines and gathers their results; `stock_keeper` (keyed by SKU) owns
each SKU's stock on exactly one partition, so an order whose SKUs live on different
partitions is served by several stock keepers and completes when all have answered. A
release of an order the desk does not know yet is kept as a tombstone, so a ReserveStock it
overtook reserves nothing. The warehouse also serves the process's reserve, pack,
start-delivery, withdraw-delivery and release tasks.

Layout, as in every service module: the handlers (a class over the service's state, with
everything it sends passed in), then `create_app`, the composition root that wires them to
Faust, the Camunda worker and the web views.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from faust.app.router import SameNode
from faust.web.exceptions import ServiceUnavailable
import msgspec
from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.camunda.worker import task_lines, task_trace
from edpo.config import Settings
from edpo.config.catalog import Catalog, load_catalog
from edpo.domain.reservation import OrderReservation, accept
from edpo.domain.stock import SkuStock
from edpo.models import (
    AcceptOrder,
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryRejected,
    DeliveryWithdrawn,
    ForgetReservation,
    GoodsPacked,
    ItemsManufactured,
    LineReserved,
    Message,
    PackGoods,
    PackingRejected,
    ReceiveStock,
    ReleaseLine,
    ReleaseStock,
    ReservationAccepted,
    ReserveLine,
    ReserveStock,
    SeedStock,
    ShipLine,
    StartDelivery,
    StockReleased,
    WithdrawDelivery,
    new_id,
)
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
from edpo.runtime.commands import CommandClient, Commands
from edpo.runtime.metrics import Metrics, Sample
from edpo.runtime.publish import Publish
from edpo.runtime.retry import STARTUP
from edpo.runtime.tables import Table, TickThrottle
from edpo.topics import (
    delivery_events_topic,
    factory_events_topic,
    reservation_updates_topic,
    stock_commands_topic,
    warehouse_commands_topic,
    warehouse_events_topic,
)

logger = logging.getLogger(__name__)
SOURCE = "warehouse"
WORKER = "warehouse-worker"  # the source of commands sent by the warehouse's process tasks


class Warehouse:
    """The warehouse's handlers over its two tables."""

    def __init__(self, catalog: Catalog, stock_by_sku: Table[SkuStock],
                 reservations_by_order: Table[OrderReservation], publish: Publish, commands: Commands,
                 clock: Callable[[], float] = time.time, retention: float = 300.0) -> None:
        self.catalog = catalog
        self.clock = clock
        self.retention = retention
        self._ticks = TickThrottle()
        self.stock_by_sku = stock_by_sku
        self.reservations_by_order = reservations_by_order
        self.publish = publish
        self.commands = commands
        self.seed_published = False

    # --- order desk: keyed by order id ------------------------------------------------------------

    async def on_order_message(self, msg: Message) -> None:
        """Accept orders, split reservations into SKU lines, gather results, pack, release, ship."""
        if not isinstance(msg, (AcceptOrder, ReserveStock, LineReserved, PackGoods, ReleaseStock,
                                DeliveryCompleted, ForgetReservation)):
            return  # other delivery events: nothing for the warehouse to do
        order_id = msg.order_id
        current = self.reservations_by_order.get(order_id)
        if isinstance(msg, ForgetReservation):
            if current is not None and current.forgettable(self.clock(), self.retention):
                # Its last words go out (and are on Kafka) before the entry goes: if the worker
                # dies in between, the replayed tick says them again and then drops it.
                await self.publish(*current.last_words(msg), wait=True)
                self.reservations_by_order.delete(order_id)
            return
        events: list[Message]
        match msg:
            case AcceptOrder():
                if current is not None:
                    events = current.reaccept(msg)
                else:
                    current, events = accept(msg, self.catalog.sku_set)
            case ReserveStock():
                if current is None:  # accepted elsewhere before a table loss; the command has the lines
                    current = OrderReservation(order_id=order_id, lines={}, accepted=True)
                events = current.reserve(msg)
            case ReleaseStock() if current is None:
                # Nothing was reserved here yet, but a ReserveStock may still be on its way: keep a
                # tombstone so it reserves nothing, and acknowledge so compensation can finish.
                current = OrderReservation(order_id=order_id, released=True)
                events = current.release(msg)
            case _ if current is None:
                return  # news about an order this warehouse never saw
            case LineReserved():
                events = current.on_line_reserved(msg)
            case PackGoods():
                events = current.pack(msg)
            case ReleaseStock():
                events = current.release(msg)
            case DeliveryCompleted():
                events = current.ship(msg)
        if current is not None:
            current.close_if_final(self.clock())
            self.reservations_by_order.set(order_id, current)
        await self.publish(*events)

    async def forget_closed_orders(self) -> None:
        """Drop reservations shipped or released longer than the retention ago (local partitions),
        through the order desk's own topic: tables are written by their agent only."""
        now = self.clock()
        for order_id, reservation in self.reservations_by_order.local_items():
            if reservation.forgettable(now, self.retention) and self._ticks.should_send(order_id, now):
                await self.publish(ForgetReservation(source=SOURCE, order_id=order_id))
        self._ticks.prune(now)

    # --- stock keeper: keyed by SKU ----------------------------------------------------------------

    async def on_stock_message(self, msg: Message) -> None:
        """Own each SKU's stock: reserve, receive, allocate to waiting orders, release, ship.
        Invariants are checked before the new state is kept."""
        if not isinstance(msg, (SeedStock, ReserveLine, ReceiveStock, ItemsManufactured, ReleaseLine, ShipLine)):
            return  # production progress the stock does not book
        stock = self.stock_by_sku.get(msg.sku) or SkuStock(sku=msg.sku)
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
        stock.check()  # raises before the table is written: the message is retried, then dead-lettered
        self.stock_by_sku.set(msg.sku, stock)
        await self.publish(*events)

    async def seed_stock(self) -> None:
        """Offer the catalog's starting stock; a SKU takes it only once, so restarts do not re-seed.
        Returns once Kafka has every offer (the worker is not ready before)."""
        await self.publish(*(SeedStock(source=SOURCE, sku=item.sku, quantity=item.stock)
                             for item in self.catalog.skus), wait=True)
        self.seed_published = True

    async def receive(self, sku: str, quantity: int, receipt_id: str) -> None:
        """Goods arrived: book them through the SKU's owner partition (returns once Kafka has it)."""
        await self.publish(ReceiveStock(source=SOURCE, sku=sku, quantity=quantity, receipt_id=receipt_id), wait=True)

    # --- external tasks of the order_fulfilment process ---------------------------------------------

    async def reserve_stock(self, task: ExternalTask) -> TaskResult:
        """Ask the warehouse to reserve every line and wait for its acknowledgment; the outcome
        arrives as an event the process waits for."""
        cmd = ReserveStock(order_id=task.get_business_key(), lines=task_lines(task, "lines"), source=WORKER,
                           trace_id=task_trace(task))
        await self.commands.request(cmd, replies=(ReservationAccepted,))
        return task.complete({})

    async def pack_goods(self, task: ExternalTask) -> TaskResult:
        """Pick and pack: completes once the warehouse acknowledges GoodsPacked."""
        cmd = PackGoods(order_id=task.get_business_key(), source=WORKER, trace_id=task_trace(task))
        reply = await self.commands.request(cmd, replies=(GoodsPacked, PackingRejected))
        if isinstance(reply, PackingRejected):
            raise RuntimeError(f"packing rejected: {reply.reason}")  # a technical fault: incident
        return task.complete({})

    async def start_delivery(self, task: ExternalTask) -> TaskResult:
        """Warehouse -> Delivery command with acknowledgment; the attempt number makes retries safe."""
        # A re-fetched task (worker crash before complete) computes the same attempt again, and
        # the delivery service answers a known attempt with the same acknowledgment.
        attempt = int(task.get_variable("delivery_attempt") or 0) + 1
        cmd = StartDelivery(
            order_id=task.get_business_key(),
            attempt=attempt,
            delivery_address=task.get_variable("delivery_address") or "",
            lines=task_lines(task, "lines"),
            source=WORKER,
            trace_id=task_trace(task),
        )
        reply = await self.commands.request(cmd, replies=(DeliveryAccepted, DeliveryRejected))
        if isinstance(reply, DeliveryRejected):
            return task.bpmn_error("DELIVERY_REJECTED", reply.reason, {"delivery_attempt": attempt})
        return task.complete({"delivery_attempt": attempt})

    async def withdraw_delivery(self, task: ExternalTask) -> TaskResult:
        """Call the courier back: the current attempt (withdraw_scope "attempt") or every attempt,
        for good (withdraw_scope "order": the order is being cancelled). ALREADY_DELIVERED when
        the goods had reached the customer."""
        scope = task.get_variable("withdraw_scope")
        cmd = WithdrawDelivery(
            order_id=task.get_business_key(),
            attempt=int(task.get_variable("delivery_attempt") or 0) if scope == "attempt" else 0,
            final=scope == "order",
            source=WORKER,
            trace_id=task_trace(task),
        )
        reply = await self.commands.request(cmd, replies=(DeliveryWithdrawn,))
        assert isinstance(reply, DeliveryWithdrawn)  # request answers with one of `replies`
        if reply.outcome == "delivered":
            return task.bpmn_error("ALREADY_DELIVERED", "the courier had delivered already", {})
        return task.complete({"withdrawn": reply.outcome})

    async def release_stock(self, task: ExternalTask) -> TaskResult:
        """Compensation of "Reserve stock": the order's units go back to stock."""
        cmd = ReleaseStock(order_id=task.get_business_key(), source=WORKER, trace_id=task_trace(task))
        await self.commands.request(cmd, replies=(StockReleased,))
        return task.complete({})


def unstocked_skus(skus: Iterable[str], *, owner_of: Callable[[str], str], me: str,
                   stocked: Callable[[str], bool]) -> list[str]:
    """The SKUs whose owner (owner_of(sku), a worker's URL) is me and whose stock is not stored yet."""
    return [sku for sku in skus if owner_of(sku) == me and not stocked(sku)]


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


def create_app(settings: Settings) -> ServiceApp:
    """The warehouse worker: tables, agents, process tasks and web views."""
    app = ServiceApp(SOURCE, settings)
    catalog = load_catalog(settings.catalog)
    stock_by_sku = app.struct_table("stock_by_sku", SkuStock, help="Stock per SKU: on hand, reserved, waiting orders")
    reservations_by_order = app.struct_table(
        "reservations_by_order", OrderReservation, help="Each order's lines and how much of each is reserved"
    )
    commands = CommandClient(settings.kafka_bootstrap, app.publisher.publish,
                             [warehouse_events_topic, delivery_events_topic],
                             timeout=settings.command_timeout, attempts=settings.command_attempts)
    app.start_with(commands)
    warehouse = Warehouse(catalog, stock_by_sku, reservations_by_order, app.publisher.publish, commands,
                          retention=settings.table_retention)

    watch_stock(app.metrics, stock_by_sku)
    app.agent_over("order_desk", warehouse.on_order_message,
                 warehouse_commands_topic, reservation_updates_topic, delivery_events_topic)
    app.agent_over("stock_keeper", warehouse.on_stock_message, stock_commands_topic, factory_events_topic)

    async def seed_stock() -> None:
        """Seed the catalog's starting stock, retried while Kafka is not reachable."""
        await STARTUP.retry("stock seed", warehouse.seed_stock)

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

    app.task(seed_stock)
    app.every(max(1.0, settings.table_retention / 10), warehouse.forget_closed_orders)
    app.ready_when("catalog stock seeded", stock_ready)
    app.serve_tasks({
        "reserve-stock": warehouse.reserve_stock,
        "pack-goods": warehouse.pack_goods,
        "start-delivery": warehouse.start_delivery,
        "withdraw-delivery": warehouse.withdraw_delivery,
        "release-stock": warehouse.release_stock,
    })

    # --- web API (the contract: edpo/models/api.py; served and described by edpo/runtime/http.py) ---

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

    return app
