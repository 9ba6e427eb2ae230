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
