"""The bodies of the services' HTTP APIs: what clients send and get back.

These types are the contract: requests are decoded and validated with them (their constraints
are the rules), responses are encoded from them, and /openapi.json is generated from them
(edpo/runtime/http.py). Evolve them as messages are evolved: new fields get defaults and go at
the end; never rename or retype one.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

# Printable text: no control characters (C0, DEL, C1; a NUL cannot even be stored), and not blank.
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f]"
_TEXT = rf"^{_PRINTABLE}*[^\s\x00-\x1f\x7f-\x9f]{_PRINTABLE}*$"

CustomerId = Annotated[str, Meta(min_length=1, max_length=200, pattern=_TEXT,
                                 description="Who orders (printable text, at most 200 characters)")]
Address = Annotated[str, Meta(min_length=1, max_length=500, pattern=_TEXT,
                              description="Where the goods go, on one line (printable text, at most 500 characters)")]
_SKU = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# An order page's cursor: the last order's creation time (microseconds since 1970) and id.
_ORDER_CURSOR = r"^[0-9]{1,17}-[A-Za-z0-9]{1,64}$"
Sku = Annotated[str, Meta(min_length=1, max_length=64, pattern=_SKU,
                          description="A catalog SKU (GET /catalog lists them)")]
Quantity = Annotated[int, Meta(ge=1, le=10_000, description="How many units (1..10000)")]
OrderId = Annotated[str, Meta(min_length=1, max_length=64, description="The order's id, as POST /orders returned it")]
Limit = Annotated[int, Meta(ge=1, le=1000, description="Most entries on one page (1..1000)")]
# An order's status, in lifecycle order (edpo/domain/lifecycle.py says which event moves it where).
OrderCursor = Annotated[str, Meta(pattern=_ORDER_CURSOR, description="Where the page starts: the `next` of the page before")]
Status = Literal["PLACED", "ACCEPTED", "AWAITING_STOCK", "RESERVED", "PACKED", "SHIPPED", "DELIVERY_FAILED",
                 "DELIVERED", "CANCELLED", "REJECTED"]

MAX_LINES = 100
# What a value breaking a pattern is told (msgspec would show the regex).
PATTERN_MESSAGES = {
    _TEXT: "must be printable text: no control characters (NUL, newline, ...), not blank",
    _SKU: "must be a SKU: letters, digits, '.', '_' and '-'",
    _ORDER_CURSOR: "must be the `next` cursor of an earlier page",
}


class ErrorItem(msgspec.Struct, frozen=True):
    """What is wrong, and with which field (a path such as items[0].quantity; "" for the whole request)."""

    field: str
    message: str


class Errors(msgspec.Struct, frozen=True):
    """Every 4xx and 5xx body."""

    errors: list[ErrorItem]


class CancelConflict(msgspec.Struct, frozen=True):
    """A cancellation refused: why, and the order's status."""

    errors: list[ErrorItem]
    status: Status


# --- order service ---------------------------------------------------------------------------


class OrderLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How many of one SKU (the document lists the catalog's SKUs)."""

    sku: Sku
    quantity: Quantity


class OrderedItem(msgspec.Struct, frozen=True):
    """A line of a stored order."""

    sku: str
    quantity: int


class PlaceOrder(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /orders: who orders, where it goes, what is in it (1..100 lines; unknown fields are refused)."""

    customer_id: CustomerId
    delivery_address: Address
    items: Annotated[list[OrderLine], Meta(min_length=1, max_length=MAX_LINES)]


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: Status
    at: str
    detail: str | None = None


class UserTask(msgspec.Struct, frozen=True, kw_only=True):
    """A task waiting for a person in Tasklist."""

    id: str
    key: str
    name: str | None
    created: str | None


class ProcessView(msgspec.Struct, frozen=True, kw_only=True):
    """The order's process instance as the engine sees it."""

    instance_id: str
    state: Literal["active", "ended"]
    waiting_at: list[str]
    user_tasks: list[UserTask]
    incidents: int


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """An order with its lines, status history and (unless ?process=false) its process; process
    is null when the engine could not say in time."""

    order_id: str
    status: Status
    customer_id: str
    delivery_address: str
    items: list[OrderedItem]
    history: list[HistoryEntry]
    created_at: str
    updated_at: str
    trace_id: str | None = None
    cancel_requested_at: str | None = None
    process: ProcessView | None | UnsetType = UNSET


class OrderSummary(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    status: Status
    customer_id: str
    created_at: str
    updated_at: str


class OrderPage(msgspec.Struct, frozen=True, kw_only=True):
    """Orders, newest first; `next` is the cursor of the next page (null on the last)."""

    orders: list[OrderSummary]
    next: str | None


class OrdersQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: Status | None = None
    limit: Limit = 100
    after: OrderCursor | None = None


class OrderQuery(msgspec.Struct, frozen=True, kw_only=True):
    process: bool = True  # false: skip asking the engine (for polling)


# --- warehouse service -----------------------------------------------------------------------


class StockLevel(msgspec.Struct, frozen=True, kw_only=True):
    """One SKU: on hand, reserved for orders, available, and how many orders wait for it."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    waiting: int


class StockPage(msgspec.Struct, frozen=True, kw_only=True):
    """Stock by SKU in SKU order; `next` is the cursor of the next page (null on the last)."""

    stock: list[StockLevel]
    next: str | None = None


class StockQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Limit = 100
    after: Sku | None = None
    local: bool = False  # only this worker's SKUs (how workers ask each other)


class Receipt(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /stock/{sku}/receipts: goods that arrived."""

    quantity: Annotated[int, Meta(ge=1, le=1_000_000, description="Units received (1..1000000)")]


class ReceiptAccepted(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    quantity: int
    receipt_id: str


# --- every service -----------------------------------------------------------------------------


class PageQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Limit = 100
    after: Annotated[str, Meta(min_length=1, max_length=200)] | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A worker's readiness: ok, or starting with what it waits for; named reports besides."""

    service: str
    instance: int
    status: Literal["ok", "starting"]
    waiting_for: list[str] = []
    counters: dict[str, int] = {}
    # Requests this worker sent the Camunda engine since it started, by kind ("POST /message").
    engine_requests: dict[str, int] = {}
