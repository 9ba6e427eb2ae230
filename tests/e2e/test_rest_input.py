"""Bad REST input gets its 4xx and creates nothing (no order, no outbox message)."""

from __future__ import annotations

import asyncpg
import pytest

from .conftest import Api

VALID = {"customer_id": "c1", "delivery_address": "Main Street 1", "items": [{"sku": "CABLE", "quantity": 1}]}

BAD_BODIES = [
    ("not an object", [1, 2], "", 422),
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


async def _counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM orders"), await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()


@pytest.mark.parametrize(("case", "body", "field", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_invalid_order_body_is_rejected_and_nothing_is_stored(api: Api, case: str, body: object, field: str,
                                                                     status: int) -> None:
    before = await _counts(api.s.database_url)
    got, reply = await api.call("POST", f"{api.orders}/orders", json=body)
    assert got == status, reply
    assert field in [e["field"] for e in reply["errors"]], reply
    assert all(e["message"] for e in reply["errors"])
    assert await _counts(api.s.database_url) == before


async def test_malformed_json_is_a_400_and_nothing_is_stored(api: Api) -> None:
    before = await _counts(api.s.database_url)
    got, reply = await api.call("POST", f"{api.orders}/orders", data=b'{"customer_id": ',
                                headers={"Content-Type": "application/json"})
    assert got == 400
    assert "malformed JSON" in reply["errors"][0]["message"]
    assert await _counts(api.s.database_url) == before


async def test_unknown_ids_are_404(api: Api) -> None:
    assert (await api.call("GET", f"{api.orders}/orders/does-not-exist"))[0] == 404
    assert (await api.call("GET", f"{api.warehouse}/stock/NOPE"))[0] == 404
    assert (await api.call("POST", f"{api.warehouse}/stock/NOPE/receipts", json={"quantity": 1}))[0] == 404


async def test_bad_receipt_is_rejected_and_stock_is_unchanged(api: Api) -> None:
    before = await api.stock("CABLE")
    assert (await api.call("POST", f"{api.warehouse}/stock/CABLE/receipts", json={"quantity": 0}))[0] == 422
    assert (await api.call("POST", f"{api.warehouse}/stock/CABLE/receipts", data=b"{",
                           headers={"Content-Type": "application/json"}))[0] == 400
    assert (await api.call("POST", f"{api.warehouse}/stock/CABLE/receipts", data=b'{"quantity": 1}',
                           headers={"Content-Type": "text/plain"}))[0] == 415
    assert (await api.call("GET", f"{api.orders}/orders?status=NOPE"))[0] == 422
    assert (await api.stock("CABLE"))["on_hand"] == before["on_hand"]


RAW = [
    ("lone surrogate", b'{"customer_id": "\\ud800", "delivery_address": "x", "items": []}', "application/json", 400),
    ("deeply nested", b'{"items": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "application/json", 422),
    ("huge body", b'{"customer_id": "' + b"x" * 100_000 + b'"}', "application/json", 413),
    ("not JSON", b"customer_id=c1", "application/x-www-form-urlencoded", 415),
    ("no content type", b'{"customer_id": "c1"}', "", 415),
]


@pytest.mark.parametrize(("case", "raw", "content_type", "status"), RAW, ids=[c[0] for c in RAW])
async def test_hostile_raw_bodies_get_a_4xx_error_body_and_store_nothing(api: Api, case: str, raw: bytes,
                                                                         content_type: str, status: int) -> None:
    before = await _counts(api.s.database_url)
    headers = {"Content-Type": content_type} if content_type else {}
    async with api.http.post(f"{api.orders}/orders", data=raw, headers=headers,
                             skip_auto_headers=["Content-Type"]) as r:
        assert r.status == status, await r.text()
        body = await r.json(content_type=None)
    assert body["errors"] and all(e["message"] for e in body["errors"]), body
    assert await _counts(api.s.database_url) == before


@pytest.mark.parametrize("key", ["k" * 201, "", "caf\u00e9"])
async def test_a_malformed_idempotency_key_is_a_400_and_stores_nothing(api: Api, key: str) -> None:
    before = await _counts(api.s.database_url)
    async with api.http.post(f"{api.orders}/orders", json=VALID, headers={"Idempotency-Key": key}) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["errors"][0]["field"] == "Idempotency-Key"
    assert await _counts(api.s.database_url) == before


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
