"""Orders through all four services and the Camunda process, on the real stack."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from aiokafka.partitioner import murmur2

from edpo.camunda.engine import Engine
from edpo.config.catalog import load_catalog

from .conftest import Api, ended_at, eventually, lines


def _statuses(order: dict) -> list[str]:
    return [h["status"] for h in order["history"]]


async def _receive(api: Api, sku: str, quantity: int, before: dict) -> dict:
    """Book quantity units of an owned SKU; its stock once they are on hand."""
    await api.receive(sku, quantity)
    return await eventually(lambda: api.stock(sku), lambda s: s["on_hand"] == before["on_hand"] + quantity, 30,
                            f"the {sku} receipt to be booked")


async def test_order_in_stock_is_delivered_and_on_hand_falls_by_exactly_the_quantity(api: Api, engine: Engine) -> None:
    stocked = await _receive(api, "LAMP", 2, await api.own("LAMP"))
    order = await api.place([("LAMP", 2)])
    assert order["status"] == "PLACED"
    final = await api.wait_final(order["order_id"])
    assert final["status"] == "DELIVERED"
    assert _statuses(final) == ["PLACED", "ACCEPTED", "RESERVED", "PACKED", "SHIPPED", "DELIVERED"]
    after = await eventually(lambda: api.stock("LAMP"), lambda s: s["on_hand"] != stocked["on_hand"], 30,
                             "LAMP shipped from the books")
    assert after["on_hand"] == stocked["on_hand"] - 2
    assert after["reserved"] == stocked["reserved"], "nothing stays reserved"
    assert await ended_at(engine, order["order_id"]) == ["EndEvent_OrderDelivered"]


async def test_order_for_more_than_available_awaits_stock_and_factory_replenishes(api: Api, engine: Engine) -> None:
    before = await api.own("DOCK")
    produced_before = await api.produced("DOCK")
    wanted = before["available"] + 3
    order = await api.place(lines("DOCK", wanted))
    final = await api.wait_final(order["order_id"], timeout=180)
    assert final["status"] == "DELIVERED"
    statuses = _statuses(final)
    assert "AWAITING_STOCK" in statuses
    assert statuses.index("AWAITING_STOCK") < statuses.index("RESERVED") < statuses.index("DELIVERED")
    assert await ended_at(engine, order["order_id"]) == ["EndEvent_OrderDelivered"]
    await api.factory_idle("DOCK")
    produced = await api.produced("DOCK") - produced_before
    assert produced >= 3, "the factory made at least the DOCKs missing"
    # The surplus of a minimum batch stays in stock; what the order took has left the books.
    await eventually(lambda: api.stock("DOCK"), lambda s: (s["on_hand"], s["reserved"]) == (
        before["on_hand"] + produced - wanted, before["reserved"]), 30, "DOCK books to add up")


async def test_twenty_concurrent_orders_for_one_sku_never_oversell_and_stock_adds_up(api: Api) -> None:
    sku = "WEBCAM"
    before = await _receive(api, sku, 40, await api.own(sku))
    produced_before = await api.produced(sku)
    per_order = before["available"] // 20 + 1  # stock covers some orders, not all 20
    assert 20 * per_order > before["available"]

    samples: list[dict] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            samples.append(await api.stock(sku))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    orders = await asyncio.gather(*(api.place(lines(sku, per_order)) for _ in range(20)))
    finals = await asyncio.gather(*(api.wait_final(o["order_id"], timeout=240) for o in orders))
    stop.set()
    await watcher

    assert [f["status"] for f in finals] == ["DELIVERED"] * 20
    assert sum("AWAITING_STOCK" in _statuses(f) for f in finals) > 0, "some orders had to wait"
    assert len(samples) > 5
    for s in samples:
        assert 0 <= s["reserved"] <= s["on_hand"], s
        assert s["available"] == s["on_hand"] - s["reserved"] >= 0, s
    await api.factory_idle(sku)
    produced = await api.produced(sku) - produced_before
    after = await eventually(lambda: api.stock(sku), lambda s: s["reserved"] == before["reserved"], 30,
                             "reservations shipped")
    assert after["on_hand"] == before["on_hand"] + produced - 20 * per_order


async def test_order_whose_skus_sit_on_different_partitions_is_delivered(api: Api) -> None:
    partitions = api.s.partitions
    catalog = load_catalog(api.s.catalog)
    by_partition: dict[int, str] = {}
    for item in catalog.skus:
        by_partition.setdefault((murmur2(item.sku.encode()) & 0x7FFFFFFF) % partitions, item.sku)
    assert len(by_partition) >= 2, "the catalog should spread over several partitions"
    skus = list(by_partition.values())[:3]
    for sku in skus:
        await api.receive(sku, 1)  # its own unit (a waiting order takes it first; the factory then makes one)
    order = await api.place([(sku, 1) for sku in skus])
    final = await api.wait_final(order["order_id"], timeout=180)
    assert final["status"] == "DELIVERED"


async def test_unreachable_address_is_retried_then_cancelled_with_goods_back_in_stock(api: Api, engine: Engine) -> None:
    before = await _receive(api, "HEADSET", 2, await api.own("HEADSET"))
    order = await api.place([("HEADSET", 2)], address="Nowhere, UNREACHABLE valley")
    final = await api.wait_final(order["order_id"], timeout=180)
    assert final["status"] == "CANCELLED"
    attempts = api.s.delivery_attempts
    assert _statuses(final).count("DELIVERY_FAILED") == attempts
    assert _statuses(final).count("SHIPPED") == attempts
    deliveries = await api.courier(order["order_id"])
    assert sorted(deliveries["attempts"]) == [str(n) for n in range(1, attempts + 1)]
    assert all(a["status"] == "failed" for a in deliveries["attempts"].values())
    after = await eventually(lambda: api.stock("HEADSET"), lambda s: s["reserved"] == before["reserved"], 30,
                             "goods back in stock")
    assert after["on_hand"] == before["on_hand"]
    assert after["available"] == before["available"]
    assert await ended_at(engine, order["order_id"]) == ["EndEvent_OrderCancelled"]


async def test_concurrent_posts_with_one_idempotency_key_make_one_order_one_command_and_one_process(
    api: Api, engine: Engine
) -> None:
    key = f"e2e-{uuid.uuid4().hex}"
    body = {"customer_id": "e2e", "delivery_address": "Main Street 1, Bern", "items": [{"sku": "CABLE", "quantity": 1}]}
    await api.receive("CABLE", 1)

    async def post() -> tuple[int, dict, str | None]:
        async with api.http.post(f"{api.orders}/orders", json=body, headers={"Idempotency-Key": key}) as r:
            return r.status, await r.json(), r.headers.get("Idempotent-Replayed")

    replies = await asyncio.gather(*(post() for _ in range(10)))
    assert [status for status, _, _ in replies] == [201] * 10, replies
    order_ids = {reply["order_id"] for _, reply, _ in replies}
    assert len(order_ids) == 1, f"one key, several orders: {order_ids}"
    [order_id] = order_ids
    assert sorted(str(replayed) for _, _, replayed in replies) == ["None"] + ["true"] * 9, \
        "exactly the first request creates, every other one is a replay"
    # A retry long after the first request takes the other path (the key is found before inserting).
    status, late, replayed = await post()
    assert (status, late["order_id"], replayed) == (201, order_id, "true")

    conn = await asyncpg.connect(api.s.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE idempotency_key = $1", key) == 1
        payloads = await conn.fetch("SELECT payload, is_command FROM outbox WHERE key = $1", order_id)
        messages = [(json.loads(bytes(p["payload"]))["type"], p["is_command"]) for p in payloads]
        assert messages.count(("AcceptOrder", True)) == 1, messages
        assert messages.count(("OrderPlaced", False)) == 1, messages
    finally:
        await conn.close()

    final = await api.wait_final(order_id)
    assert final["status"] == "DELIVERED"
    assert _statuses(final).count("ACCEPTED") == 1
    # One process instance for the order, ever (running ones included), also after it ended.
    history = await eventually(lambda: engine.request("GET", "/history/process-instance",
                                                      params={"processInstanceBusinessKey": order_id}),
                               lambda h: len(h) >= 1 and all(i["state"] == "COMPLETED" for i in h), 30,
                               f"the process of {order_id} to complete")
    assert len(history) == 1, history
    assert await engine.request("GET", "/process-instance", params={"businessKey": order_id}) == []
