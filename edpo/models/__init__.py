"""Every event and command of EDPO, grouped by the topic that carries them.

Events are past tense, commands imperative. The msgspec tag of each message is its class
name, which is also the BPMN message name a waiting process correlates to.
"""

from __future__ import annotations

from typing import Union

import msgspec

from edpo.models.base import Line, Message, caused_by, encode, new_id, stable_id, utcnow

# --- order service --------------------------------------------------------------------------


class OrderPlaced(Message, frozen=True):
    order_id: str
    customer_id: str
    delivery_address: str
    lines: list[Line]


class OrderStatusChanged(Message, frozen=True):
    order_id: str
    status: str


class OrderCancelled(Message, frozen=True):
    order_id: str
    reason: str = ""


OrderEvent = Union[OrderPlaced, OrderStatusChanged, OrderCancelled]

# --- warehouse: commands in, events out (keyed by order id) -------------------------------------


class AcceptOrder(Message, frozen=True):
    """Order -> Warehouse: can you serve this order? Answered by OrderAccepted / OrderRejected."""

    order_id: str
    lines: list[Line]
    delivery_address: str = ""


class ReserveStock(Message, frozen=True):
    order_id: str
    lines: list[Line]


class PackGoods(Message, frozen=True):
    order_id: str


class ReleaseStock(Message, frozen=True):
    """Compensation: give the order's reserved (or awaited) units back."""

    order_id: str


class ForgetReservation(Message, frozen=True):
    """Internal tick: a finished order's reservation has been kept long enough; drop it."""

    order_id: str


WarehouseCommand = Union[AcceptOrder, ReserveStock, PackGoods, ReleaseStock, ForgetReservation]


class OrderAccepted(Message, frozen=True):
    order_id: str


class OrderRejected(Message, frozen=True):
    order_id: str
    reason: str


class StockReserved(Message, frozen=True):
    """Every line of the order is reserved. `short`: what the order lacked when it first went
    short (its StockPartiallyReserved's `missing`); empty if it never did. A process that hears
    this before (or without) the partial still knows the factory must replace those units."""

    order_id: str
    short: list[Line] = []


class StockPartiallyReserved(Message, frozen=True):
    """Some units are missing; the order waits for them."""

    order_id: str
    missing: list[Line]


class GoodsPicked(Message, frozen=True):
    order_id: str


class GoodsPacked(Message, frozen=True):
    order_id: str


class PackingRejected(Message, frozen=True):
    order_id: str
    reason: str


class StockReleased(Message, frozen=True):
    order_id: str


class ReservationAccepted(Message, frozen=True):
    """Acknowledges ReserveStock: the warehouse has the request; the outcome follows as
    StockReserved or StockPartiallyReserved."""

    order_id: str


class GoodsShipped(Message, frozen=True):
    """The delivered units left the books: on hand and reserved both fell."""

    order_id: str


WarehouseEvent = Union[
    OrderAccepted,
    OrderRejected,
    StockReserved,
    StockPartiallyReserved,
    GoodsPicked,
    GoodsPacked,
    PackingRejected,
    StockReleased,
    GoodsShipped,
    ReservationAccepted,
]

# --- warehouse internals: per-SKU commands and their results ----------------------------------


class ReserveLine(Message, frozen=True):
    order_id: str
    sku: str
    quantity: int


class ReleaseLine(Message, frozen=True):
    order_id: str
    sku: str


class ShipLine(Message, frozen=True):
    order_id: str
    sku: str


class ReceiveStock(Message, frozen=True):
    """Goods arrived at the warehouse (a receipt booked through the REST API)."""

    sku: str
    quantity: int
    receipt_id: str


class SeedStock(Message, frozen=True):
    """Starting stock from the catalog; applied only if the SKU has never been seeded."""

    sku: str
    quantity: int


StockCommand = Union[ReserveLine, ReleaseLine, ShipLine, ReceiveStock, SeedStock]


class LineReserved(Message, frozen=True):
    """Per-SKU result for one order: how many of the requested units are now reserved."""

    order_id: str
    sku: str
    requested: int
    reserved: int


ReservationUpdate = Union[LineReserved]


class StockLevelChanged(Message, frozen=True):
    sku: str
    on_hand: int
    reserved: int
    reason: str


InventoryEvent = Union[StockLevelChanged]

# --- factory (keyed by SKU) ---------------------------------------------------------------------


class ManufactureItems(Message, frozen=True):
    sku: str
    quantity: int
    request_id: str
    order_id: str = ""


class CompleteProduction(Message, frozen=True):
    """Internal tick: the batch's lead time is over."""

    sku: str
    production_id: str


FactoryCommand = Union[ManufactureItems, CompleteProduction]


class ProductionStarted(Message, frozen=True):
    sku: str
    production_id: str
    quantity: int


class ItemsManufactured(Message, frozen=True):
    sku: str
    production_id: str
    quantity: int


class ProductionRequested(Message, frozen=True):
    """Acknowledges ManufactureItems: the units are queued for a batch."""

    sku: str
    request_id: str


FactoryEvent = Union[ProductionStarted, ItemsManufactured, ProductionRequested]

# --- delivery (keyed by order id) ----------------------------------------------------------------


class StartDelivery(Message, frozen=True):
    """Warehouse -> Delivery; answered by DeliveryAccepted / DeliveryRejected."""

    order_id: str
    attempt: int
    delivery_address: str
    lines: list[Line] = []


class FinishDelivery(Message, frozen=True):
    """Internal tick: the courier's time is up."""

    order_id: str
    attempt: int


class ForgetDelivery(Message, frozen=True):
    """Internal tick: a finished delivery has been kept long enough; drop it."""

    order_id: str


class WithdrawDelivery(Message, frozen=True):
    """Warehouse -> Delivery: call the courier back; answered by DeliveryWithdrawn.

    attempt 0 withdraws every attempt in transit; `final` also refuses every later
    StartDelivery of the order (the order is being cancelled)."""

    order_id: str
    attempt: int = 0
    final: bool = False


DeliveryCommand = Union[StartDelivery, FinishDelivery, ForgetDelivery, WithdrawDelivery]


class DeliveryAccepted(Message, frozen=True):
    order_id: str
    attempt: int


class DeliveryRejected(Message, frozen=True):
    order_id: str
    attempt: int
    reason: str


class DeliveryStarted(Message, frozen=True):
    order_id: str
    attempt: int


class DeliveryCompleted(Message, frozen=True):
    order_id: str
    attempt: int


class DeliveryFailed(Message, frozen=True):
    order_id: str
    attempt: int
    reason: str


class DeliveryWithdrawn(Message, frozen=True):
    """Reply to WithdrawDelivery. outcome: "withdrawn" (a courier was called back), "none"
    (nothing was in transit), or "delivered" (too late: an attempt already delivered)."""

    order_id: str
    attempt: int
    outcome: str


DeliveryEvent = Union[DeliveryAccepted, DeliveryRejected, DeliveryStarted, DeliveryCompleted, DeliveryFailed,
                      DeliveryWithdrawn]

# --- the monitor's own ticks (keyed by order id) ----------------------------------------------


class ForgetOrderView(Message, frozen=True):
    """Internal tick of the monitor: an order finished longer than EDPO_MONITOR_RETENTION ago
    leaves the dashboard."""

    order_id: str


MonitorTick = Union[ForgetOrderView]

# --- dead letters --------------------------------------------------------------------------------


class DeadLetter(Message, frozen=True):
    """A message no handler could read, kept with the reason for inspection and replay."""

    topic: str
    partition: int
    offset: int
    key: str | None
    reason: str
    payload: str  # the original bytes, decoded as UTF-8 with replacement
    error: str = ""  # the exception's text
    attempts: int = 0  # handler calls made; 0: the record never reached a handler (undecodable)
    truncated: bool = False  # payload (or key) was cut to fit the broker's size limit: not replayable


class DeadLetterReplayed(Message, frozen=True):
    """An operator sent a dead letter's payload back to its original topic (`edpo dlq replay`)."""

    dead_letter_id: str
    key: str | None  # the dead letter's key, so the mark shares its partition
    topic: str  # where the payload went: the dead letter's source topic
    partition: int
    offset: int  # the replayed record's offset there


__all__ = [name for name in dir() if not name.startswith("_")] + [
    "Line",
    "Message",
    "caused_by",
    "encode",
    "msgspec",
    "new_id",
    "stable_id",
    "utcnow",
]
