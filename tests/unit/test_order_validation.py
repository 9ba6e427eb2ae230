"""Validating a new order from the REST API: every problem is reported, with its field."""

from __future__ import annotations

from typing import Any

from edpo.domain.order import NewOrder, validate_new_order
from edpo.models import Line

CATALOG = {"BOLT", "NUT"}


def body(**overrides: Any) -> dict[str, Any]:
    valid: dict[str, Any] = {
        "customer_id": "c-1",
        "delivery_address": "Main St 1",
        "items": [{"sku": "BOLT", "quantity": 2}],
    }
    return {**valid, **overrides}


def fields(errors: list[dict[str, str]]) -> list[str]:
    return [e["field"] for e in errors]


def test_valid_order_is_returned_stripped() -> None:
    new, errors = validate_new_order(body(customer_id="  c-1 ", delivery_address=" Main St 1\n"), CATALOG)
    assert errors == []
    assert new == NewOrder(customer_id="c-1", delivery_address="Main St 1", items=[Line(sku="BOLT", quantity=2)])


def test_unknown_extra_fields_are_ignored() -> None:
    new, errors = validate_new_order(body(note="ring twice", items=[{"sku": "NUT", "quantity": 1, "x": 1}]), CATALOG)
    assert errors == [] and new is not None


def test_body_must_be_a_json_object() -> None:
    for bad in (None, [], "order", 3):
        new, errors = validate_new_order(bad, CATALOG)
        assert new is None and fields(errors) == [""]


def test_all_errors_are_collected_not_just_the_first() -> None:
    items = [{"sku": "X", "quantity": 1}, {"sku": "NUT", "quantity": 0}, "nope"]
    new, errors = validate_new_order({"customer_id": "", "items": items}, CATALOG)
    assert new is None
    assert fields(errors) == ["customer_id", "delivery_address", "items[0].sku", "items[1].quantity", "items[2]"]
    assert errors[2]["message"] == "unknown SKU 'X'"


def test_blank_strings_are_missing() -> None:
    _, errors = validate_new_order(body(customer_id="   ", delivery_address=7), CATALOG)
    assert fields(errors) == ["customer_id", "delivery_address"]


def test_overlong_strings_are_rejected() -> None:
    _, errors = validate_new_order(body(customer_id="c" * 201, delivery_address="a" * 501), CATALOG)
    assert fields(errors) == ["customer_id", "delivery_address"]
    _, errors = validate_new_order(body(customer_id="c" * 200, delivery_address="a" * 500), CATALOG)
    assert errors == []


def test_items_must_be_a_non_empty_list() -> None:
    for bad in ([], None, {"sku": "BOLT"}, "BOLT"):
        _, errors = validate_new_order(body(items=bad), CATALOG)
        assert fields(errors) == ["items"], bad


def test_too_many_lines_are_rejected() -> None:
    _, errors = validate_new_order(body(items=[{"sku": "BOLT", "quantity": 1}] * 4), CATALOG, max_lines=3)
    assert fields(errors) == ["items"]
    _, errors = validate_new_order(body(items=[{"sku": "BOLT", "quantity": 1}] * 3), CATALOG, max_lines=3)
    assert errors == []


def test_quantity_must_be_an_integer_in_range() -> None:
    for bad in (0, -1, 11, 1.5, 2.0, "2", True, None):
        _, errors = validate_new_order(body(items=[{"sku": "BOLT", "quantity": bad}]), CATALOG, max_quantity=10)
        assert fields(errors) == ["items[0].quantity"], bad
    new, _ = validate_new_order(body(items=[{"sku": "BOLT", "quantity": 10}]), CATALOG, max_quantity=10)
    assert new is not None


def test_sku_must_be_a_non_empty_string() -> None:
    for bad in ("", "  ", 5, None):
        _, errors = validate_new_order(body(items=[{"sku": bad, "quantity": 1}]), CATALOG)
        assert fields(errors) == ["items[0].sku"], bad


def test_same_sku_on_two_lines_is_kept_as_given() -> None:
    items = [{"sku": "BOLT", "quantity": 1}, {"sku": "BOLT", "quantity": 2}]
    new, _ = validate_new_order(body(items=items), CATALOG)
    assert new is not None and [line.quantity for line in new.items] == [1, 2]
