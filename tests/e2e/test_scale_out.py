"""Several warehouse workers share the SKU partitions; orders spanning both still complete."""

from __future__ import annotations

import asyncio

from edpo.config.catalog import load_catalog
from edpo.dev.workers import start_worker, worker_process

from .conftest import Api, eventually


async def _owned(api: Api, port: int, skus: list[str]) -> set[str]:
    """SKUs whose stock lives in this worker's own store (?local=1 answers only from it)."""
    owned = set()
    for sku in skus:
        status, _ = await api.call("GET", f"http://{api.s.host}:{port}/stock/{sku}?local=1")
        if status == 200:
            owned.add(sku)
    return owned


async def test_two_warehouse_workers_split_the_skus_and_orders_across_them_complete(api: Api) -> None:
    skus = [item.sku for item in load_catalog(api.s.catalog).skus]
    first, second = api.s.web_port("warehouse", 1), api.s.web_port("warehouse", 2)
    proc = worker_process(api.s, "warehouse", 2)
    await asyncio.to_thread(start_worker, api.s, "warehouse", 2)
    try:
        async def split() -> tuple[set[str], set[str]]:
            return await _owned(api, first, skus), await _owned(api, second, skus)

        a, b = await eventually(split, lambda ab: ab[0] and ab[1] and not ab[0] & ab[1] and ab[0] | ab[1] == set(skus),
                                90, "the SKUs to be split between the two workers")
        # Either worker answers for every SKU, routing to the owner.
        for sku in skus:
            _, one = await api.call("GET", f"http://{api.s.host}:{first}/stock/{sku}")
            _, two = await api.call("GET", f"http://{api.s.host}:{second}/stock/{sku}")
            assert one["sku"] == two["sku"] == sku and one["on_hand"] == two["on_hand"]

        pair = [sorted(a)[0], sorted(b)[0]]
        for sku in pair:
            if (await api.stock(sku))["available"] < 1:
                await api.receive(sku, 1)
        order = await api.place([(sku, 1) for sku in pair])
        assert (await api.wait_final(order["order_id"], timeout=180))["status"] == "DELIVERED"
    finally:
        await asyncio.to_thread(proc.stop)

    # Back to one worker: it takes over every partition and keeps serving.
    await eventually(lambda: _owned(api, first, skus), lambda owned: owned == set(skus), 90,
                     "worker 1 to own every SKU again")
    order = await api.place([("CABLE", 1)])
    assert (await api.wait_final(order["order_id"], timeout=180))["status"] == "DELIVERED"
