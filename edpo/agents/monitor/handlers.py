"""The monitor's handlers: each event goes into the view of its order, SKU or dead-letter key, and
the board over every order is kept with the order table."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from edpo.config import MONITOR
from edpo.domain.monitor import Board, DeadLetterBox, OrderView, ProductionView, SkuView
from edpo.models import (
    DeadLetter,
    DeadLetterReplayed,
    ForgetOrderView,
    ItemsManufactured,
    Message,
    ProductionRequested,
    ProductionStarted,
    StockLevelChanged,
)
from edpo.runtime.consume import Handlers
from edpo.runtime.publish import Publish
from edpo.runtime.tables import Table, TickThrottle
from edpo.topics import TOPIC_OF, delivery_events_topic, order_events_topic, warehouse_events_topic

logger = logging.getLogger(__name__)
SOURCE = MONITOR
RETENTION_SWEEP = 60.0  # seconds between looks for orders to forget
# The topics of the events the monitor follows order by order.
ORDER_EVENTS = (order_events_topic, warehouse_events_topic, delivery_events_topic)


class Monitor:
    """The monitor's handlers over its tables and the board."""

    def __init__(self, orders: Table[OrderView], stock: Table[SkuView], production: Table[ProductionView],
                 letters: Table[DeadLetterBox], board: Board, publish: Publish | None = None,
                 retention: timedelta = timedelta(hours=24),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 settled: Callable[[], bool] = lambda: True) -> None:
        self.orders = orders
        self.stock = stock
        self.production = production
        self.letters = letters
        self.board = board
        self.publish = publish
        self.retention = retention
        self.clock = clock
        # Whether the order table is whole (recovered, no rebalance under way): the board is built then.
        self.settled = settled
        self.board_stale = True
        self.changes = 0  # grows with every change any view took: the feed's cue
        self._ticks = TickThrottle(resend_after=RETENTION_SWEEP * 5, forget_after=RETENTION_SWEEP * 10)

    def order_handlers(self) -> Handlers:
        """The orders agent's messages: every event of the order, warehouse and delivery services,
        and the monitor's own ticks."""
        every_event = {t: self.on_order_event for spec in ORDER_EVENTS for t in spec.types}
        return {**every_event, ForgetOrderView: self.on_forget_order_view}

    def stock_handlers(self) -> Handlers:
        """The stock agent's messages: stock levels and production progress."""
        return {
            StockLevelChanged: self.on_stock_level,
            ProductionRequested: self.on_production,
            ProductionStarted: self.on_production,
            ItemsManufactured: self.on_production,
        }

    def dead_letter_handlers(self) -> Handlers:
        """The dead-letter agent's messages: dead letters and the marks of their replay."""
        return {DeadLetter: self.on_dead_letter, DeadLetterReplayed: self.on_dead_letter}

    def ensure_board(self) -> None:
        """Build the board from the order table if it is stale and the table is whole.

        The board is a cache over the order table: built from it once the table is recovered,
        and again after every rebalance (the table may hold other partitions then)."""
        if self.board_stale and self.settled():
            self.board.rebuild(view for _, view in self.orders.local_items())
            self.board_stale = False
            logger.info("monitor board built from %d orders", len(self.board.briefs))

    async def on_partitions_assigned(self, sender: Any = None, *assigned: Any, **kwargs: Any) -> None:
        """Faust assigned partitions: the board is rebuilt from the order table before it is used."""
        self.board_stale = True

    async def on_order_event(self, msg: Message) -> None:
        """An event of one order (order, warehouse or delivery service) joins its view and timeline."""
        self.ensure_board()
        order_id: str = msg.order_id  # type: ignore[attr-defined]
        view = self.orders.get(order_id) or OrderView(order_id=order_id)
        if view.apply(msg, TOPIC_OF[type(msg)].name):
            self.orders.set(order_id, view)
            self.board.put(view)
            self.changes += 1

    async def on_forget_order_view(self, msg: ForgetOrderView) -> None:
        """Drop an order finished longer than the retention ago."""
        self.ensure_board()
        found = self.orders.get(msg.order_id)
        if found is not None and found.forgettable(self.clock(), self.retention):
            self.orders.delete(msg.order_id)
            self.board.forget(msg.order_id)
            self.changes += 1

    async def on_stock_level(self, msg: StockLevelChanged) -> None:
        """A SKU's stock level as the warehouse announced it."""
        sku = self.stock.get(msg.sku) or SkuView(sku=msg.sku)
        if sku.apply(msg):
            self.stock.set(msg.sku, sku)
            self.changes += 1

    async def on_production(self, msg: ProductionRequested | ProductionStarted | ItemsManufactured) -> None:
        """A SKU's production progress as the factory announced it."""
        line = self.production.get(msg.sku) or ProductionView(sku=msg.sku)
        if line.apply(msg):
            self.production.set(msg.sku, line)
            self.changes += 1

    async def on_dead_letter(self, msg: DeadLetter | DeadLetterReplayed) -> None:
        """A dead letter, or the mark of its replay, joins the box of its key."""
        key = msg.key or ""
        box = self.letters.get(key) or DeadLetterBox(key=key)
        if box.apply(msg):
            self.letters.set(key, box)
            self.changes += 1

    async def forget_finished(self) -> None:
        """Send ForgetOrderView for every order finished longer than the retention ago (once a
        while each: the agent decides from the order's view, a repeated tick changes nothing)."""
        if self.publish is None:
            return
        now = self.clock()
        for order_id in self.board.forgettable(now, self.retention):
            if self._ticks.should_send(order_id, now.timestamp()):
                await self.publish(ForgetOrderView(source=SOURCE, order_id=order_id))
        self._ticks.prune(now.timestamp())
