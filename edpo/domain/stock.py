"""One SKU's stock: on hand, reserved, and the orders still waiting for units.

A SKU is owned by exactly one partition, so its stock is changed by one agent at a time and
can allocate arriving goods first come, first served without locks. An input whose effect is
already stored (a replay after a crash, or a duplicate) changes nothing and re-announces what
its first run may have announced (docs/adr/0003).
"""

from __future__ import annotations

import msgspec

from edpo.models import (
    ItemsManufactured,
    LineReserved,
    Message,
    ReceiveStock,
    ReleaseLine,
    ReserveLine,
    SeedStock,
    ShipLine,
    StockLevelChanged,
    caused_by,
)

SOURCE = "warehouse"
# Enough to recognise a redelivered receipt or closed order; older ids cannot be replayed any more.
KEEP_IDS = 1000


class InvariantViolation(Exception):
    """The stock's books do not add up; the state must not be stored."""


class SkuStock(msgspec.Struct, kw_only=True):
    """Stock of one SKU and the orders it serves."""

    sku: str
    on_hand: int = 0
    reserved: int = 0
    requested: dict[str, int] = {}
    allocated: dict[str, int] = {}
    waiting: list[str] = []
    seeded: bool = False
    applied: list[str] = []
    # Orders already shipped or released: a late replay of their ReserveLine must not reserve again.
    closed: list[str] = []
    # Each open order's trace, so units allocated later by a receipt still report in the order's trace.
    traces: dict[str, str] = {}

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def seed(self, cmd: SeedStock) -> list[Message]:
        """Take the catalog's starting stock once; a restart offers it again and must not add it twice."""
        if self.seeded:
            return self._reannounce(cmd) + [self._level(cmd, "seeded")]
        self.seeded = True
        self.on_hand += cmd.quantity
        # Seeding may follow receipts booked before the first start; waiting orders come first.
        return self._allocate_waiting(cmd) + [self._level(cmd, "seeded")]

    def reserve(self, cmd: ReserveLine) -> list[Message]:
        """Reserve what is available for an order; the rest waits, first come first served."""
        order = cmd.order_id
        if order in self.requested:
            return [self._line_reserved(cmd, order)]
        if order in self.closed:
            return []
        self.requested[order] = cmd.quantity
        self.traces[order] = cmd.trace_id or cmd.id
        # Units are never handed to a newcomer while earlier orders still wait for them.
        give = 0 if self.waiting else max(0, min(self.available, cmd.quantity))
        self.allocated[order] = give
        self.reserved += give
        if give < cmd.quantity:
            self.waiting.append(order)
        events: list[Message] = [self._line_reserved(cmd, order)]
        if give:
            events.append(self._level(cmd, "reserved"))
        return events

    def receive(self, cmd: ReceiveStock | ItemsManufactured) -> list[Message]:
        """Book arriving goods (once per receipt or batch) and hand them to waiting orders first."""
        key = cmd.receipt_id if isinstance(cmd, ReceiveStock) else cmd.production_id
        if key in self.applied:
            return self._reannounce(cmd) + [self._level(cmd, "received")]
        self.applied = (self.applied + [key])[-KEEP_IDS:]
        self.on_hand += cmd.quantity
        return self._allocate_waiting(cmd) + [self._level(cmd, "received")]

    def release(self, cmd: ReleaseLine) -> list[Message]:
        """Compensation: forget the order and give its units to the orders still waiting."""
        order = cmd.order_id
        if order not in self.requested:
            # Released before (or never here): its first run may have handed units to waiting
            # orders whose news never reached Kafka.
            return self._reannounce(cmd) + [self._level(cmd, "released")] if order in self.closed else []
        self.reserved -= self.allocated[order]
        self._forget(order)
        return self._allocate_waiting(cmd) + [self._level(cmd, "released")]

    def ship(self, cmd: ShipLine) -> list[Message]:
        """The order was delivered: its allocated units leave the books."""
        order = cmd.order_id
        if order not in self.requested:
            return [self._level(cmd, "shipped")] if order in self.closed else []
        # A partly allocated order ships what it has; on hand and reserved fall alike, so
        # nothing becomes available for the waiting orders.
        units = self.allocated[order]
        self.on_hand -= units
        self.reserved -= units
        self._forget(order)
        return [self._level(cmd, "shipped")]

    def check(self) -> None:
        """Raise InvariantViolation unless the books add up."""
        problems: list[str] = []
        if not 0 <= self.reserved <= self.on_hand:
            problems.append(f"reserved {self.reserved} outside 0..on_hand {self.on_hand}")
        if self.reserved != sum(self.allocated.values()):
            problems.append(f"reserved {self.reserved} != sum of allocations {sum(self.allocated.values())}")
        if self.allocated.keys() != self.requested.keys():
            problems.append("allocated and requested name different orders")
        over = [o for o, n in self.allocated.items() if not 0 <= n <= self.requested.get(o, 0)]
        if over:
            problems.append(f"allocations outside 0..requested: {over}")
        short = {o for o, n in self.allocated.items() if n < self.requested.get(o, 0)}
        if set(self.waiting) != short or len(self.waiting) != len(short):
            problems.append(f"waiting {self.waiting} != orders short of units {sorted(short)}")
        if self.waiting and self.available != 0:
            problems.append(f"{self.available} units available while orders wait")
        if problems:
            raise InvariantViolation(f"stock of {self.sku}: " + "; ".join(problems))

    def view(self) -> dict[str, object]:
        """What the REST API shows."""
        return {
            "sku": self.sku,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
            "waiting": len(self.waiting),
        }

    def _allocate_waiting(self, cause: Message) -> list[Message]:
        """Hand available units to waiting orders in arrival order; report each order that gained."""
        events: list[Message] = []
        while self.waiting and self.available > 0:
            order = self.waiting[0]
            give = min(self.available, self.requested[order] - self.allocated[order])
            self.allocated[order] += give
            self.reserved += give
            if self.allocated[order] == self.requested[order]:
                self.waiting.pop(0)
            events.append(self._line_reserved(self._on_behalf_of(cause, order), order))
        return events

    def _reannounce(self, cause: Message) -> list[Message]:
        """A replayed input: tell every open order holding units how many it has (the replayed
        input's first run may have allocated to them and died before that was sent)."""
        return [self._line_reserved(self._on_behalf_of(cause, order), order)
                for order, units in self.allocated.items() if units]

    def _forget(self, order: str) -> None:
        del self.requested[order]
        del self.allocated[order]
        self.traces.pop(order, None)
        if order in self.waiting:
            self.waiting.remove(order)
        self.closed = (self.closed + [order])[-KEEP_IDS:]

    def _on_behalf_of(self, cause: Message, order: str) -> Message:
        """The cause, carrying the order's trace: a receipt serves many orders, each in its own trace."""
        trace = self.traces.get(order)
        return msgspec.structs.replace(cause, trace_id=trace) if trace else cause

    def _line_reserved(self, cause: Message, order: str) -> LineReserved:
        return caused_by(
            cause,
            LineReserved,
            source=SOURCE,
            order_id=order,
            sku=self.sku,
            requested=self.requested[order],
            reserved=self.allocated[order],
        )

    def _level(self, cause: Message, reason: str) -> StockLevelChanged:
        return caused_by(
            cause, StockLevelChanged, source=SOURCE, sku=self.sku, on_hand=self.on_hand, reserved=self.reserved,
            reason=reason,
        )
