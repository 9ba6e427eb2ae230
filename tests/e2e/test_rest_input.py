"""Bad REST input gets its 4xx and creates nothing (no order, no outbox message).

Each request carries a marker of its own (as customer or in the address): other tests may place
orders meanwhile, so "nothing stored" means no order and no message holds the marker.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from .conftest import Api, eventually

VALID = {"customer_id": "c1", "delivery_address": "Main Street 1", "items": [{"sku": "CABLE", "quantity": 1}]}

BAD_BODIES = [
    ("not an object", [VALID], "", 422),
    ("missing customer", {k: v for k, v in VALID.items() if k != "customer_id"}, "customer_id", 422),
    ("blank address", {**VALID, "delivery_address": "  "}, "delivery_address", 422),
    ("no items", {**VALID, "items": []}, "items", 422),
    ("unknown sku", {**VALID, "items": [{"sku": "NOPE", "quantity": 1}]}, "items[0].sku", 422),
    ("zero quantity", {**VALID, "items": [{"sku": "CABLE", "quantity": 0}]}, "items[0].quantity", 422),
    ("negative quantity", {**VALID, "items": [{"sku": "CABLE", "quantity": -2}]}, "items[0].quantity", 422),
    ("text quantity", {**VALID, "items": [{"sku": "CABLE", "quantity": "2"}]}, "items[0].quantity", 422),
    ("boolean quantity", {**VALID, "items": [{"sku": "CABLE", "quantity": True}]}, "items[0].quantity", 422),
    # Hostile input: each was a 500, a partial write or an unbounded read somewhere once.
    ("NUL in the address", {**VALID, "delivery_address": "Main\x00Street"}, "delivery_address", 422),
    ("control character", {**VALID, "customer_id": "c\x1b[31m"}, "customer_id", 422),
    ("C1 control character", {**VALID, "customer_id": "c\x9b1"}, "customer_id", 422),
    ("over-long address", {**VALID, "delivery_address": "x" * 501}, "delivery_address", 422),
    ("unknown field", {**VALID, "discount": 100}, "discount", 422),
    ("unknown line field", {**VALID, "items": [{"sku": "CABLE", "quantity": 1, "price": 0}]}, "items[0].price", 422),
    ("absurd quantity", {**VALID, "items": [{"sku": "CABLE", "quantity": 10**40}]}, "items[0].quantity", 422),
    ("float quantity", {**VALID, "items": [{"sku": "CABLE", "quantity": 1.5}]}, "items[0].quantity", 422),
    ("too many lines", {**VALID, "items": [{"sku": "CABLE", "quantity": 1}] * 101}, "items", 422),
    ("nested junk", {**VALID, "items": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}, "items[0]", 422),
]


def _marker() -> str:
    return f"bad-input-{uuid.uuid4().hex[:16]}"


def _marked(body: Any, marker: str) -> Any:
    """body with VALID's customer replaced by the marker and the marker added to VALID's address."""
    if isinstance(body, list):
        return [_marked(item, marker) for item in body]
    if not isinstance(body, dict):
        return body
    marked = {k: _marked(v, marker) for k, v in body.items()}
    if marked.get("customer_id") == VALID["customer_id"]:
        marked["customer_id"] = marker
    if marked.get("delivery_address") == VALID["delivery_address"]:
        marked["delivery_address"] = f"{VALID['delivery_address']}, {marker}"
    return marked


async def _stored(dsn: str, marker: str) -> tuple[int, int]:
    """Orders and outbox messages that hold the marker."""
    conn = await asyncpg.connect(dsn)
    try:
        orders = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE strpos(customer_id, $1) > 0 OR strpos(delivery_address, $1) > 0", marker)
        messages = await conn.fetchval("SELECT count(*) FROM outbox WHERE position($1::bytea in payload) > 0",
                                       marker.encode())
        return orders, messages
    finally:
        await conn.close()


async def test_a_valid_body_with_a_marker_is_stored_with_it(api: Api) -> None:
    """The check the tests below rely on sees an order and its messages when they are stored."""
    marker = _marker()
    status, reply = await api.call("POST", f"{api.orders}/orders", json=_marked(VALID, marker))
    assert status == 201, reply
    orders, messages = await _stored(api.s.database_url, marker)
    assert orders == 1 and messages >= 1, (orders, messages)


@pytest.mark.parametrize(("case", "body", "field", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_invalid_order_body_is_rejected_and_nothing_is_stored(api: Api, case: str, body: object, field: str,
                                                                     status: int) -> None:
    marker = _marker()
    got, reply = await api.call("POST", f"{api.orders}/orders", json=_marked(body, marker))
    assert got == status, reply
    assert field in [e["field"] for e in reply["errors"]], reply
    assert all(e["message"] for e in reply["errors"])
    assert await _stored(api.s.database_url, marker) == (0, 0)


async def test_malformed_json_is_a_400_and_nothing_is_stored(api: Api) -> None:
    marker = _marker()
    got, reply = await api.call("POST", f"{api.orders}/orders", data=f'{{"customer_id": "{marker}", '.encode(),
                                headers={"Content-Type": "application/json"})
    assert got == 400
    assert "malformed JSON" in reply["errors"][0]["message"]
    assert await _stored(api.s.database_url, marker) == (0, 0)


async def test_unknown_ids_are_404(api: Api) -> None:
    assert (await api.call("GET", f"{api.orders}/orders/does-not-exist"))[0] == 404
    assert (await api.call("GET", f"{api.warehouse}/stock/NOPE"))[0] == 404
    assert (await api.call("POST", f"{api.warehouse}/stock/NOPE/receipts", json={"quantity": 1}))[0] == 404


async def test_bad_receipt_is_rejected_and_stock_is_unchanged(api: Api) -> None:
    sku = "LAMP"
    before = await api.own(sku)
    receipts = f"{api.warehouse}/stock/{sku}/receipts"
    assert (await api.call("POST", receipts, json={"quantity": 0}))[0] == 422
    assert (await api.call("POST", receipts, data=b"{", headers={"Content-Type": "application/json"}))[0] == 400
    assert (await api.call("POST", receipts, data=b'{"quantity": 1}',
                           headers={"Content-Type": "text/plain"}))[0] == 415
    assert (await api.call("GET", f"{api.orders}/orders?status=NOPE"))[0] == 422
    # A good receipt after them, on the same partition: once it is booked, a bad one would have been too.
    await api.receive(sku, 1)
    after = await eventually(lambda: api.stock(sku), lambda s: s != before, 30, "the good receipt to be booked")
    assert after["on_hand"] == before["on_hand"] + 1, (before, after)


RAW = [
    ("lone surrogate", b'{"customer_id": "\\ud800", "delivery_address": "MARKER", "items": []}', "application/json",
     400),
    ("deeply nested", b'{"customer_id": "MARKER", "items": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
     "application/json", 422),
    ("huge body", b'{"customer_id": "MARKER' + b"x" * 100_000 + b'"}', "application/json", 413),
    ("not JSON", b"customer_id=MARKER", "application/x-www-form-urlencoded", 415),
    ("no content type", b'{"customer_id": "MARKER"}', "", 415),
]


@pytest.mark.parametrize(("case", "raw", "content_type", "status"), RAW, ids=[c[0] for c in RAW])
async def test_hostile_raw_bodies_get_a_4xx_error_body_and_store_nothing(api: Api, case: str, raw: bytes,
                                                                         content_type: str, status: int) -> None:
    marker = _marker()
    headers = {"Content-Type": content_type} if content_type else {}
    async with api.http.post(f"{api.orders}/orders", data=raw.replace(b"MARKER", marker.encode()), headers=headers,
                             skip_auto_headers=["Content-Type"]) as r:
        assert r.status == status, await r.text()
        body = await r.json(content_type=None)
    assert body["errors"] and all(e["message"] for e in body["errors"]), body
    assert await _stored(api.s.database_url, marker) == (0, 0)


@pytest.mark.parametrize("key", ["k" * 201, "", "caf\u00e9"])
async def test_a_malformed_idempotency_key_is_a_400_and_stores_nothing(api: Api, key: str) -> None:
    marker = _marker()
    async with api.http.post(f"{api.orders}/orders", json=_marked(VALID, marker),
                             headers={"Idempotency-Key": key}) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["errors"][0]["field"] == "Idempotency-Key"
    assert await _stored(api.s.database_url, marker) == (0, 0)


async def test_lists_are_bounded_and_their_cursors_walk_every_entry_once(api: Api) -> None:
    for _ in range(3):
        await api.place([("CABLE", 1)])
    seen: list[str] = []
    after = None
    for _ in range(3):
        params = {"limit": "1", **({"after": after} if after else {})}
        status, page = await api.call("GET", f"{api.orders}/orders", params=params)
        assert status == 200 and len(page["orders"]) == 1, page
        seen.append(page["orders"][0]["order_id"])
        after = page["next"]
        assert after
    assert len(set(seen)) == 3, "a cursor repeated an order"
    created = [(await api.order(o, process=False))["created_at"] for o in seen]
    assert created == sorted(created, reverse=True), "pages are newest first"
    assert (await api.call("GET", f"{api.orders}/orders", params={"limit": "1001"}))[0] == 422
    for url in (f"{api.warehouse}/stock", f"{api.factory}/production", f"{api.delivery}/deliveries"):
        status, page = await api.call("GET", url, params={"limit": "2"})
        assert status == 200, (url, page)
        entries = next(v for k, v in page.items() if isinstance(v, list))
        assert len(entries) <= 2 and "next" in page, (url, page)
