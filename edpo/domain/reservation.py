"""One order inside the warehouse: its lines, how much of each is reserved, and what became of it.

The order's SKUs may live on other partitions, so the reservation splits into per-SKU
ReserveLine commands and completes when every SKU has answered with LineReserved.

A cancelled order's ReleaseStock may overtake its ReserveStock, or arrive before the order is
known here at all: the release is then kept as a tombstone (an empty reservation marked
released), and a ReserveStock that meets a released or shipped order is only acknowledged,
so no unit is reserved for an order that has already let go of its stock.

Replay rule (docs/adr/0003): a handler that meets an input whose effect is already stored
emits again what that input emitted the first time, with the same ids (facts that happen
once per order carry `once_per`), because a worker may have died after storing the state and
before its messages reached Kafka. Receivers drop what they already have by id.
"""

from __future__ import annotations

import msgspec

from edpo.models import (
    AcceptOrder,
    DeliveryCompleted,
    GoodsPacked,
    GoodsPicked,
    GoodsShipped,
    Line,
    LineReserved,
    Message,
    OrderAccepted,
    OrderRejected,
    PackGoods,
    PackingRejected,
    ReleaseLine,
    ReleaseStock,
    ReservationAccepted,
    ReserveLine,
    ReserveStock,
    ShipLine,
    StockPartiallyReserved,
    StockReleased,
    StockReserved,
    caused_by,
)

SOURCE = "warehouse"


def _summed(lines: list[Line]) -> dict[str, int]:
    """Units per SKU; an order may name one SKU on several lines."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return totals


def _problems(lines: list[Line], catalog: set[str]) -> list[str]:
    if not lines:
        return ["the order has no lines"]
    problems: list[str] = []
    for i, line in enumerate(lines):
        if line.sku not in catalog:
            problems.append(f"line {i + 1}: unknown SKU {line.sku!r}")
        if line.quantity <= 0:
            problems.append(f"line {i + 1}: quantity of {line.sku!r} must be positive, got {line.quantity}")
    return problems


def accept(cmd: AcceptOrder, catalog: set[str]) -> tuple[OrderReservation | None, list[Message]]:
    """Accept a new order whose lines the warehouse can serve, or reject it with the reason."""
    problems = _problems(cmd.lines, catalog)
    if problems:
        reason = "; ".join(problems)
        return None, [caused_by(cmd, OrderRejected, source=SOURCE, reply=True, once_per=cmd.order_id,
                                order_id=cmd.order_id, reason=reason)]
    reservation = OrderReservation(
        order_id=cmd.order_id, lines=_summed(cmd.lines), accepted=True, delivery_address=cmd.delivery_address
    )
    return reservation, reservation.reaccept(cmd)


class OrderReservation(msgspec.Struct, kw_only=True):
    """An order's reservation across SKUs, and whether it was packed, released or shipped."""

    order_id: str
    lines: dict[str, int] = {}
    reserved: dict[str, int] = {}
    reported: list[str] = []
    outcome: str = ""  # "", "partial" or "full"
    packed: bool = False
    released: bool = False
    shipped: bool = False
    accepted: bool = False
    delivery_address: str = ""
    reserve_requested: bool = False
    # What the order lacked when it first went short (announced again with StockReserved).
    short: dict[str, int] = {}
    # When the order was shipped or released (clock seconds); its entry is dropped later.
    closed_at: float = 0.0

    def close_if_final(self, now: float) -> None:
        """Remember when the order left the warehouse (shipped or released), once."""
        if (self.shipped or self.released) and not self.closed_at:
            self.closed_at = now

    def forgettable(self, now: float, retention: float) -> bool:
        """Shipped or released at least retention seconds ago: the entry may be dropped."""
        return self.closed_at > 0 and now - self.closed_at >= retention

    def last_words(self, cause: Message) -> list[Message]:
        """What the order's end sent to the SKUs, once more before the entry is dropped: a record
        that never got its messages out (and is replayed later, when the entry is gone) must
        not leave units reserved. Same ids as the first time; the SKUs act on them once."""
        if self.shipped:
            return self._shipping(cause)
        if self.released:
            return self._releasing(cause)
        return []

    def reaccept(self, cmd: AcceptOrder) -> list[Message]:
        """Answer a (resent) AcceptOrder for a known order: it was accepted."""
        # One OrderAccepted per order, whatever the number of AcceptOrder resends: the order
        # service starts the order's process once per event id.
        return [caused_by(cmd, OrderAccepted, source=SOURCE, reply=True, once_per=self.order_id,
                          order_id=self.order_id)]

    def reserve(self, cmd: ReserveStock) -> list[Message]:
        """Acknowledge, and ask every SKU's stock for its units; a resent or replayed command asks
        the SKUs that have not answered again and re-announces the outcome so far. A released or
        shipped order is only acknowledged: it asks nothing."""
        ack = caused_by(cmd, ReservationAccepted, source=SOURCE, reply=True, order_id=self.order_id)
        if self.released or self.shipped:
            # A release that overtook the reservation: the units would never be given back.
            return [ack]
        if not self.lines:
            self.lines = _summed(cmd.lines)
        first = not self.reserve_requested
        self.reserve_requested = True
        asks: list[Message] = [
            caused_by(cmd, ReserveLine, source=SOURCE, once_per=f"{self.order_id}:{sku}", order_id=self.order_id,
                      sku=sku, quantity=qty)
            for sku, qty in self.lines.items()
            if first or sku not in self.reported
        ]
        outcome = None if first else self._outcome_event(cmd)
        return [ack, *asks, *([outcome] if outcome is not None else [])]

    def on_line_reserved(self, evt: LineReserved) -> list[Message]:
        """Take one SKU's answer; report the outcome once every SKU has answered."""
        if self.released or self.shipped or evt.sku not in self.lines:
            return []
        if evt.sku in self.reported and evt.reserved <= self.reserved.get(evt.sku, 0):
            # Nothing new: a replay or duplicate. Its first run may have reported the outcome
            # that never reached Kafka; announce it again (same id, receivers drop duplicates).
            outcome = self._outcome_event(evt)
            return [outcome] if outcome is not None else []
        # Reservations of an open order only grow, so the larger count is the newer one.
        self.reserved[evt.sku] = max(self.reserved.get(evt.sku, 0), evt.reserved)
        if evt.sku not in self.reported:
            self.reported.append(evt.sku)
        if len(self.reported) < len(self.lines):
            return []
        if not self._missing():
            if self.outcome == "full":
                return []
            self.outcome = "full"
        elif self.outcome == "":
            self.outcome = "partial"
            self.short = {line.sku: line.quantity for line in self._missing()}
        else:
            return []  # still short: the process already waits for StockReserved
        outcome = self._outcome_event(evt)
        return [outcome] if outcome is not None else []

    def pack(self, cmd: PackGoods) -> list[Message]:
        """Pick and pack a fully reserved order, once; a resent command gets the same answer."""
        if self.released or self.outcome != "full":
            reason = "stock was released" if self.released else "stock is not fully reserved"
            return [caused_by(cmd, PackingRejected, source=SOURCE, reply=True, order_id=self.order_id, reason=reason)]
        self.packed = True
        return [
            caused_by(cmd, GoodsPicked, source=SOURCE, once_per=self.order_id, order_id=self.order_id),
            caused_by(cmd, GoodsPacked, source=SOURCE, reply=True, once_per=self.order_id, order_id=self.order_id),
        ]

    def release(self, cmd: ReleaseStock) -> list[Message]:
        """Compensation: give every SKU's units back, once; always acknowledge."""
        events: list[Message] = []
        # Once shipped the goods are gone and there is nothing to give back; the
        # acknowledgment still lets the compensating process finish.
        if not self.shipped:
            self.released = True
            events += self._releasing(cmd)
        events.append(caused_by(cmd, StockReleased, source=SOURCE, reply=True, order_id=self.order_id))
        return events

    def ship(self, evt: DeliveryCompleted) -> list[Message]:
        """The goods were delivered: take them off every SKU's books (the SKUs do it once)."""
        if self.released:
            return []
        self.shipped = True
        return self._shipping(evt)

    def _shipping(self, cause: Message) -> list[Message]:
        """ShipLine per SKU and GoodsShipped: the same ids whatever the cause."""
        return [*(caused_by(cause, ShipLine, source=SOURCE, once_per=f"{self.order_id}:{sku}", order_id=self.order_id,
                            sku=sku) for sku in self.lines),
                caused_by(cause, GoodsShipped, source=SOURCE, once_per=self.order_id, order_id=self.order_id)]

    def _releasing(self, cause: Message) -> list[Message]:
        """ReleaseLine per SKU: the same ids whatever the cause."""
        return [caused_by(cause, ReleaseLine, source=SOURCE, once_per=f"{self.order_id}:{sku}",
                          order_id=self.order_id, sku=sku) for sku in self.lines]

    def _missing(self) -> list[Line]:
        return [
            Line(sku=sku, quantity=qty - self.reserved.get(sku, 0))
            for sku, qty in self.lines.items()
            if self.reserved.get(sku, 0) < qty
        ]

    def _outcome_event(self, cause: Message) -> Message | None:
        if self.outcome == "full":
            return caused_by(cause, StockReserved, source=SOURCE, once_per=self.order_id, order_id=self.order_id,
                             short=[Line(sku=sku, quantity=qty) for sku, qty in self.short.items()])
        if self.outcome == "partial":
            # Once per order: the first shortfall is what the process acts on.
            return caused_by(cause, StockPartiallyReserved, source=SOURCE, once_per=self.order_id,
                             order_id=self.order_id, missing=self._missing())
        return None
