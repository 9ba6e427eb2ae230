"""Validating a new order as it arrives at the REST API, before anything is stored or sent."""

from __future__ import annotations

import msgspec

from edpo.models import Line

MAX_CUSTOMER_ID = 200
MAX_ADDRESS = 500


class NewOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A valid order request: who orders, where it goes, what is in it."""

    customer_id: str
    delivery_address: str
    items: list[Line]


def _text(body: dict[str, object], field: str, limit: int, errors: list[dict[str, str]]) -> str:
    """A required string field, stripped; records an error and returns "" when it is unusable."""
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        errors.append({"field": field, "message": f"{field} must be a non-empty string"})
        return ""
    value = value.strip()
    if len(value) > limit:
        errors.append({"field": field, "message": f"{field} must be at most {limit} characters"})
        return ""
    return value


def _line(
    i: int, item: object, catalog: set[str], max_quantity: int, errors: list[dict[str, str]]
) -> Line | None:
    """One item as a Line, or None after recording what is wrong with it."""
    where = f"items[{i}]"
    if not isinstance(item, dict):
        errors.append({"field": where, "message": "each item must be an object with sku and quantity"})
        return None
    ok = True
    sku = item.get("sku")
    if not isinstance(sku, str) or not sku.strip():
        errors.append({"field": f"{where}.sku", "message": "sku must be a non-empty string"})
        ok = False
    elif sku not in catalog:
        errors.append({"field": f"{where}.sku", "message": f"unknown SKU {sku!r}"})
        ok = False
    qty = item.get("quantity")
    # bool is an int in Python, but `true` is not a quantity.
    if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= max_quantity:
        errors.append({"field": f"{where}.quantity", "message": f"quantity must be an integer 1..{max_quantity}"})
        ok = False
    return Line(sku=sku, quantity=qty) if ok else None  # type: ignore[arg-type]


def validate_new_order(
    body: object, catalog: set[str], max_lines: int = 100, max_quantity: int = 10_000
) -> tuple[NewOrder | None, list[dict[str, str]]]:
    """The order in a decoded JSON body, or None and every problem found (field path and message)."""
    if not isinstance(body, dict):
        return None, [{"field": "", "message": "the body must be a JSON object"}]
    errors: list[dict[str, str]] = []
    customer_id = _text(body, "customer_id", MAX_CUSTOMER_ID, errors)
    address = _text(body, "delivery_address", MAX_ADDRESS, errors)
    items = body.get("items")
    lines: list[Line] = []
    if not isinstance(items, list) or not items:
        errors.append({"field": "items", "message": "items must be a non-empty list"})
    elif len(items) > max_lines:
        # Items are not checked one by one then: the error list stays as small as the limit.
        errors.append({"field": "items", "message": f"at most {max_lines} items per order, got {len(items)}"})
    else:
        for i, item in enumerate(items):
            line = _line(i, item, catalog, max_quantity, errors)
            if line is not None:
                lines.append(line)
    if errors:
        return None, errors
    return NewOrder(customer_id=customer_id, delivery_address=address, items=lines), []
