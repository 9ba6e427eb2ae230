"""Message ids: `caused_by` derives them, so a handler run again on the same input re-emits the
same messages and receivers can drop duplicates by id (replay rule, issue 7)."""

from __future__ import annotations

import re
import time

from edpo.models import (
    DeliveryCompleted,
    FinishDelivery,
    Line,
    LineReserved,
    ReserveLine,
    ReserveStock,
    StockPartiallyReserved,
    StockReserved,
    caused_by,
    new_id,
    stable_id,
)


def line_reserved(cause: ReserveLine, reserved: int) -> LineReserved:
    return caused_by(cause, LineReserved, source="warehouse", order_id="o1", sku="A", requested=2, reserved=reserved)


def test_stable_id_depends_only_on_its_parts() -> None:
    assert stable_id("StockReserved", "o1") == stable_id("StockReserved", "o1")
    assert stable_id("StockReserved", "o1") != stable_id("StockReserved", "o2")
    assert stable_id("StockReserved", "o1") != stable_id("GoodsShipped", "o1")
    assert re.fullmatch(r"[0-9a-f]{32}", stable_id("x")), "same shape as new_id()"
    assert len(new_id()) == len(stable_id("x"))


def test_same_cause_and_content_give_the_same_id() -> None:
    cause = ReserveLine(order_id="o1", sku="A", quantity=2)
    first = line_reserved(cause, 2)
    time.sleep(0.001)
    again = line_reserved(cause, 2)
    assert first.id == again.id
    assert first.time != again.time, "the time is not part of the id"


def test_other_content_or_other_cause_gives_another_id() -> None:
    cause = ReserveLine(order_id="o1", sku="A", quantity=2)
    first = line_reserved(cause, 1)
    assert line_reserved(cause, 2).id != first.id
    assert line_reserved(ReserveLine(order_id="o1", sku="A", quantity=2), 1).id != first.id


def test_field_order_does_not_change_the_id() -> None:
    cause = ReserveLine(order_id="o1", sku="A", quantity=2)
    a = caused_by(cause, LineReserved, source="w", order_id="o1", sku="A", requested=2, reserved=1)
    b = caused_by(cause, LineReserved, source="w", reserved=1, requested=2, sku="A", order_id="o1")
    assert a.id == b.id


def test_once_per_key_is_the_same_fact_whatever_the_cause() -> None:
    one = caused_by(ReserveStock(order_id="o1", lines=[]), StockReserved, source="w", once_per="o1", order_id="o1")
    two = caused_by(FinishDelivery(order_id="o1", attempt=1), StockReserved, source="w", once_per="o1",
                    order_id="o1")
    assert one.id == two.id == stable_id("StockReserved", "o1")
    # The key and the type name the fact; the content does not.
    partial = [caused_by(ReserveStock(order_id="o1", lines=[]), StockPartiallyReserved, source="w", once_per="o1",
                         order_id="o1", missing=[Line(sku="A", quantity=n)]) for n in (1, 2)]
    assert partial[0].id == partial[1].id != one.id
    assert caused_by(one, StockReserved, source="w", once_per="o2", order_id="o2").id != one.id


def test_a_deterministic_id_keeps_the_envelope_rules() -> None:
    cmd = FinishDelivery(order_id="o1", attempt=1, trace_id="t-1", correlation_id="c-0")
    event = caused_by(cmd, DeliveryCompleted, source="delivery", once_per="o1:1", order_id="o1", attempt=1)
    reply = caused_by(cmd, DeliveryCompleted, source="delivery", reply=True, order_id="o1", attempt=1)
    assert (event.source, event.trace_id, event.correlation_id) == ("delivery", "t-1", "c-0")
    assert reply.correlation_id == cmd.id
    untraced = FinishDelivery(order_id="o1", attempt=1)
    assert caused_by(untraced, DeliveryCompleted, source="d", order_id="o1", attempt=1).trace_id == untraced.id
