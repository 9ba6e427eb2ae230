"""The order status state machine: events only ever move an order forward."""

from __future__ import annotations

import pytest

from edpo.domain.lifecycle import STATUSES, TRANSITIONS, advances, rank, status_for
from edpo.models import (
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryStarted,
    GoodsPacked,
    GoodsShipped,
    Line,
    Message,
    OrderAccepted,
    OrderCancelled,
    OrderPlaced,
    OrderRejected,
    StockPartiallyReserved,
    StockReserved,
)

O = "o1"


def apply(events: list[Message]) -> str:
    """Fold events into a status the way the order service does."""
    status, current = "PLACED", rank("PLACED")
    for event in events:
        change = status_for(event)
        if change is not None and advances(current, change[1]):
            status, current = change
    return status


def test_each_event_maps_to_its_status() -> None:
    cases = [
        (OrderAccepted(order_id=O), "ACCEPTED"),
        (OrderRejected(order_id=O, reason="x"), "REJECTED"),
        (StockPartiallyReserved(order_id=O, missing=[Line(sku="A", quantity=1)]), "AWAITING_STOCK"),
        (StockReserved(order_id=O), "RESERVED"),
        (GoodsPacked(order_id=O), "PACKED"),
        (DeliveryStarted(order_id=O, attempt=2), "SHIPPED"),
        (DeliveryFailed(order_id=O, attempt=2, reason="x"), "DELIVERY_FAILED"),
        (DeliveryCompleted(order_id=O, attempt=2), "DELIVERED"),
        (OrderCancelled(order_id=O), "CANCELLED"),
    ]
    for event, status in cases:
        change = status_for(event)
        assert change is not None and change[0] == status, event


def test_events_that_do_not_change_the_status_map_to_none() -> None:
    assert status_for(GoodsShipped(order_id=O)) is None
    assert status_for(OrderPlaced(order_id=O, customer_id="c", delivery_address="a", lines=[])) is None
    assert status_for("not a message") is None


def test_happy_path_ranks_strictly_increase() -> None:
    path = [rank(s) for s in ("PLACED", "ACCEPTED", "AWAITING_STOCK", "RESERVED", "PACKED")]
    path += [rank("SHIPPED", 1), rank("DELIVERY_FAILED", 1), rank("SHIPPED", 2), rank("DELIVERED")]
    assert path == sorted(path) and len(set(path)) == len(path)


def test_out_of_order_status_never_moves_backwards() -> None:
    events: list[Message] = [
        DeliveryFailed(order_id=O, attempt=1, reason="x"),
        DeliveryStarted(order_id=O, attempt=1),  # late
        StockReserved(order_id=O),  # late
        OrderAccepted(order_id=O),  # late
    ]
    assert apply(events) == "DELIVERY_FAILED"


def test_retry_after_failed_delivery_moves_forward() -> None:
    events: list[Message] = [
        DeliveryStarted(order_id=O, attempt=1),
        DeliveryFailed(order_id=O, attempt=1, reason="x"),
        DeliveryStarted(order_id=O, attempt=2),
    ]
    assert apply(events) == "SHIPPED"


def test_backordered_order_moves_from_awaiting_stock_to_reserved() -> None:
    missing = [Line(sku="A", quantity=1)]
    assert apply([OrderAccepted(order_id=O), StockPartiallyReserved(order_id=O, missing=missing),
                  StockReserved(order_id=O)]) == "RESERVED"


def test_delivered_order_is_never_cancelled() -> None:
    assert apply([DeliveryCompleted(order_id=O, attempt=1), OrderCancelled(order_id=O)]) == "DELIVERED"


def test_cancelled_order_is_never_delivered() -> None:
    assert apply([OrderCancelled(order_id=O), DeliveryCompleted(order_id=O, attempt=1)]) == "CANCELLED"


def test_rejected_order_stays_rejected() -> None:
    assert apply([OrderRejected(order_id=O, reason="x"), OrderAccepted(order_id=O),
                  OrderCancelled(order_id=O)]) == "REJECTED"


def test_duplicate_event_does_not_advance() -> None:
    change = status_for(StockReserved(order_id=O))
    assert change is not None
    assert not advances(change[1], change[1])


def test_even_absurd_attempt_numbers_rank_below_delivered() -> None:
    assert rank("SHIPPED", 10_000) < rank("DELIVERY_FAILED", 10_000) < rank("DELIVERED")


def test_unknown_status_has_no_rank() -> None:
    with pytest.raises(ValueError, match="BOGUS"):
        rank("BOGUS")


def test_every_status_has_a_rank_and_is_documented() -> None:
    for status in STATUSES:
        assert rank(status) >= 0
        assert status in TRANSITIONS
