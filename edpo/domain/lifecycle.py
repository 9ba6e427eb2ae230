"""The order's status as the order service records it, built from the other services' events.

Events arrive late, twice and out of order (different topics, partitions and retries), so
each status has a rank and an order only ever moves to a higher rank; see TRANSITIONS.
"""

from __future__ import annotations

from typing import get_args

from edpo.models.api import Status
from edpo.models import (
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryStarted,
    GoodsPacked,
    Message,
    OrderAccepted,
    OrderCancelled,
    OrderRejected,
    StockPartiallyReserved,
    StockReserved,
)

PLACED = "PLACED"
ACCEPTED = "ACCEPTED"
AWAITING_STOCK = "AWAITING_STOCK"
RESERVED = "RESERVED"
PACKED = "PACKED"
SHIPPED = "SHIPPED"
DELIVERY_FAILED = "DELIVERY_FAILED"
DELIVERED = "DELIVERED"
CANCELLED = "CANCELLED"
REJECTED = "REJECTED"

# The order of the statuses is the API's (edpo/models/api.py), which documents them.
STATUSES: tuple[str, ...] = get_args(Status)
assert STATUSES == (
    PLACED, ACCEPTED, AWAITING_STOCK, RESERVED, PACKED, SHIPPED, DELIVERY_FAILED, DELIVERED, CANCELLED, REJECTED,
)

TRANSITIONS = """\
PLACED          -> ACCEPTED (OrderAccepted) | REJECTED (OrderRejected)
ACCEPTED        -> AWAITING_STOCK (StockPartiallyReserved) | RESERVED (StockReserved)
AWAITING_STOCK  -> RESERVED (StockReserved, once the missing units arrived)
RESERVED        -> PACKED (GoodsPacked)
PACKED          -> SHIPPED (DeliveryStarted, attempt 1)
SHIPPED n       -> DELIVERED (DeliveryCompleted) | DELIVERY_FAILED n (DeliveryFailed)
DELIVERY_FAILED n -> SHIPPED n+1 (DeliveryStarted, the retry)
any non-terminal -> CANCELLED (OrderCancelled: out of attempts, a dispatcher's or the customer's
                   cancellation, once the goods are back; customers only before SHIPPED)

Every status has a rank; an event moves an order only to a higher rank, so a late or
repeated event never moves it back (a DeliveryStarted of attempt 1 arriving after its
DeliveryFailed is ignored). Ranks: PLACED 0 < ACCEPTED 100 < AWAITING_STOCK 200 <
RESERVED 300 < PACKED 400 < SHIPPED n = 1000+10n < DELIVERY_FAILED n = 1000+10n+5 <
DELIVERED 9000 < CANCELLED = REJECTED 9500.
DELIVERED, CANCELLED and REJECTED are terminal: nothing moves an order out of them, so a
delivered order is never cancelled and a cancelled order is never delivered, whichever of
the two events the order service happens to read first.
"""

_RANKS: dict[str, int] = {
    PLACED: 0,
    ACCEPTED: 100,
    AWAITING_STOCK: 200,
    RESERVED: 300,
    PACKED: 400,
    DELIVERED: 9000,
    CANCELLED: 9500,
    REJECTED: 9500,
}
TERMINAL_RANK = _RANKS[DELIVERED]
# Attempts beyond this would rank a failed delivery above DELIVERED; far more than any retry policy uses.
MAX_ATTEMPT = (TERMINAL_RANK - 1 - 1000 - 5) // 10


def rank(status: str, attempt: int = 0) -> int:
    """The status's place in the total order; SHIPPED and DELIVERY_FAILED rank by attempt."""
    n = max(0, min(attempt, MAX_ATTEMPT))
    if status == SHIPPED:
        return 1000 + 10 * n
    if status == DELIVERY_FAILED:
        return 1000 + 10 * n + 5
    try:
        return _RANKS[status]
    except KeyError:
        raise ValueError(f"unknown order status {status!r}") from None


# The status each event puts an order in; SHIPPED and DELIVERY_FAILED rank by the event's attempt.
STATUS_OF: dict[type[Message], str] = {
    OrderAccepted: ACCEPTED,
    OrderRejected: REJECTED,
    StockPartiallyReserved: AWAITING_STOCK,
    StockReserved: RESERVED,
    GoodsPacked: PACKED,
    DeliveryStarted: SHIPPED,
    DeliveryFailed: DELIVERY_FAILED,
    DeliveryCompleted: DELIVERED,
    OrderCancelled: CANCELLED,
}


def status_for(event: object) -> tuple[str, int] | None:
    """The status an event puts the order in, with its rank; None for events that do not."""
    status = STATUS_OF.get(type(event))
    if status is None:
        return None
    return status, rank(status, getattr(event, "attempt", 0))


def advances(current_rank: int, new_rank: int) -> bool:
    """Whether a status of new_rank replaces one of current_rank: higher, and not out of a terminal status."""
    return current_rank < TERMINAL_RANK and new_rank > current_rank
