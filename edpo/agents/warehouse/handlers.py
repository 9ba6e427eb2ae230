"""The warehouse's handlers over its two tables: the order desk's and the stock keeper's Kafka
messages, the retention timer, and the process's reserve, pack, start-delivery, withdraw-delivery
and release tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.camunda.worker import task_lines, task_trace
from edpo.config.catalog import Catalog
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
)
from edpo.runtime.commands import Commands
from edpo.runtime.consume import Handlers
from edpo.runtime.publish import Publish
from edpo.runtime.tables import Table, TickThrottle

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
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

    def order_desk_handlers(self) -> Handlers:
        """The order desk's messages (keyed by order id) and who handles each; other delivery events
        are nothing for the warehouse to do."""
        return {
            AcceptOrder: self.on_accept_order,
            ReserveStock: self.on_reserve_stock,
            LineReserved: self.on_line_reserved,
            PackGoods: self.on_pack_goods,
            ReleaseStock: self.on_release_stock,
            DeliveryCompleted: self.on_delivery_completed,
            ForgetReservation: self.on_forget_reservation,
        }

    def stock_keeper_handlers(self) -> Handlers:
        """The stock keeper's messages (keyed by SKU) and who handles each; production progress is
        not booked."""
        return {
            SeedStock: self.on_seed_stock,
            ReserveLine: self.on_reserve_line,
            ReceiveStock: self.on_goods_arrived,
            ItemsManufactured: self.on_goods_arrived,
            ReleaseLine: self.on_release_line,
            ShipLine: self.on_ship_line,
        }

    # --- order desk: keyed by order id ------------------------------------------------------------

    async def on_accept_order(self, msg: AcceptOrder) -> None:
        """Accept a new order, its lines split by SKU, or reject it; a known order is acknowledged again."""
        current = self.reservations_by_order.get(msg.order_id)
        if current is not None:
            await self._keep(current, current.reaccept(msg))
        else:
            await self._keep(*accept(msg, self.catalog.sku_set))

    async def on_reserve_stock(self, msg: ReserveStock) -> None:
        """Acknowledge, and ask every SKU's stock keeper for the order's units."""
        # Accepted elsewhere before a table loss: the command has the lines.
        current = (self.reservations_by_order.get(msg.order_id)
                   or OrderReservation(order_id=msg.order_id, lines={}, accepted=True))
        await self._keep(current, current.reserve(msg))

    async def on_release_stock(self, msg: ReleaseStock) -> None:
        """Compensation: the order's units go back to stock; always acknowledged."""
        # Nothing was reserved here yet, but a ReserveStock may still be on its way: keep a
        # tombstone so it reserves nothing, and acknowledge so compensation can finish.
        current = (self.reservations_by_order.get(msg.order_id)
                   or OrderReservation(order_id=msg.order_id, released=True))
        await self._keep(current, current.release(msg))

    async def on_line_reserved(self, msg: LineReserved) -> None:
        """Gather one SKU's answer; the order's outcome goes out once every SKU has answered."""
        current = self.reservations_by_order.get(msg.order_id)
        if current is not None:  # else news about an order this warehouse never saw
            await self._keep(current, current.on_line_reserved(msg))

    async def on_pack_goods(self, msg: PackGoods) -> None:
        """Pick and pack a fully reserved order, or say why not."""
        current = self.reservations_by_order.get(msg.order_id)
        if current is not None:
            await self._keep(current, current.pack(msg))

    async def on_delivery_completed(self, msg: DeliveryCompleted) -> None:
        """The goods reached the customer: every SKU takes them off its books."""
        current = self.reservations_by_order.get(msg.order_id)
        if current is not None:
            await self._keep(current, current.ship(msg))

    async def on_forget_reservation(self, msg: ForgetReservation) -> None:
        """Drop a reservation shipped or released longer than the retention ago."""
        current = self.reservations_by_order.get(msg.order_id)
        if current is not None and current.forgettable(self.clock(), self.retention):
            # Its last words go out (and are on Kafka) before the entry goes: if the worker
            # dies in between, the replayed tick says them again and then drops it.
            await self.publish(*current.last_words(msg), wait=True)
            self.reservations_by_order.delete(msg.order_id)

    async def _keep(self, reservation: OrderReservation | None, events: list[Message]) -> None:
        """Store the order's reservation (none: the order was rejected), then send what it said."""
        if reservation is not None:
            reservation.close_if_final(self.clock())
            self.reservations_by_order.set(reservation.order_id, reservation)
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

    async def on_seed_stock(self, msg: SeedStock) -> None:
        """Take the catalog's starting stock, once per SKU."""
        await self._book(msg, SkuStock.seed)

    async def on_reserve_line(self, msg: ReserveLine) -> None:
        """Reserve what is available of one order line; the rest waits, first come first served."""
        await self._book(msg, SkuStock.reserve)

    async def on_goods_arrived(self, msg: ReceiveStock | ItemsManufactured) -> None:
        """Book goods received or manufactured, once, and hand them to waiting orders first."""
        await self._book(msg, SkuStock.receive)

    async def on_release_line(self, msg: ReleaseLine) -> None:
        """Give an order's units back, to the orders still waiting first."""
        await self._book(msg, SkuStock.release)

    async def on_ship_line(self, msg: ShipLine) -> None:
        """A delivered order's units leave the books."""
        await self._book(msg, SkuStock.ship)

    async def _book(self, msg: M, rule: Callable[[SkuStock, M], list[Message]]) -> None:
        """Apply the rule to the SKU's stock, keep the result (its invariants checked first), send what it said."""
        sku: str = msg.sku  # type: ignore[attr-defined]  # every stock keeper message names its SKU
        stock = self.stock_by_sku.get(sku) or SkuStock(sku=sku)
        events = rule(stock, msg)
        stock.check()  # raises before the table is written: the message is retried, then dead-lettered
        self.stock_by_sku.set(sku, stock)
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
