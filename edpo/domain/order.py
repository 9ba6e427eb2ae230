"""A new order as the order service accepts it: the request's text tidied, its SKUs known.

The shape of a request (types, lengths, printable text, 1..100 lines, quantities 1..10000) is
checked when it is decoded into `PlaceOrder` (edpo/models/api.py); what needs the catalog is
checked here.
"""

from __future__ import annotations

import msgspec

from edpo.models import Line
from edpo.models.api import PlaceOrder


class NewOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A valid order request: who orders, where it goes, what is in it."""

    customer_id: str
    delivery_address: str
    items: list[Line]


class InvalidOrder(ValueError):
    """What is wrong with an order request, field by field ([{"field", "message"}])."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def new_order(request: PlaceOrder, catalog: set[str]) -> NewOrder:
    """The order a decoded request asks for, text stripped; InvalidOrder names every unknown SKU."""
    unknown = [{"field": f"items[{i}].sku", "message": f"unknown SKU {line.sku!r}"}
               for i, line in enumerate(request.items) if line.sku not in catalog]
    if unknown:
        raise InvalidOrder(unknown)
    return NewOrder(customer_id=request.customer_id.strip(), delivery_address=request.delivery_address.strip(),
                    items=[Line(sku=line.sku, quantity=line.quantity) for line in request.items])
