"""One more warehouse worker joins those running and takes SKUs from them; orders spanning the
workers complete; once it stops, the stack is as the test found it."""

from __future__ import annotations

import asyncio

from edpo.config.catalog import load_catalog
from edpo.dev.workers import free_instance, running_instances, start_worker, worker_process

from .conftest import Api, eventually

Owners = dict[int, set[str]]


async def _owned(api: Api, port: int, skus: list[str]) -> set[str]:
    """SKUs whose stock lives in this worker's own store (?local=1 answers only from it)."""
    owned = set()
    for sku in skus:
        status, _ = await api.call("GET", f"http://{api.s.host}:{port}/stock/{sku}?local=1")
        if status == 200:
            owned.add(sku)
    return owned


async def _owners(api: Api, instances: list[int], skus: list[str]) -> Owners:
    return {n: await _owned(api, api.s.web_port("warehouse", n), skus) for n in instances}


def _split(owners: Owners, skus: list[str]) -> bool:
    """Every worker owns SKUs, no SKU has two owners, and together they own the catalog."""
    owned = list(owners.values())
    return all(owned) and sum(map(len, owned)) == len(set().union(*owned)) and set().union(*owned) == set(skus)


async def test_a_warehouse_worker_joining_takes_skus_orders_across_workers_complete_and_leaving_restores_the_stack(
        api: Api) -> None:
    skus = [item.sku for item in load_catalog(api.s.catalog).skus]
    found = running_instances(api.s, "warehouse")
    assert found, "no warehouse worker runs"
    n = free_instance(api.s, "warehouse")  # 2 beside one worker, 3 under `make test-scale`
    assert n not in found
    proc = worker_process(api.s, "warehouse", n)
    try:
        await asyncio.to_thread(start_worker, api.s, "warehouse", n)
        owners = await eventually(lambda: _owners(api, [*found, n], skus), lambda o: _split(o, skus), 90,
                                  f"the SKUs to be split between warehouse workers {[*found, n]}")
        assert owners[n], f"warehouse-{n} owns no SKU"
        # Any worker answers for every SKU, routing to the owner.
        for sku in skus:
            answers = [(await api.call("GET", f"http://{api.s.host}:{api.s.web_port('warehouse', m)}/stock/{sku}"))[1]
                       for m in [*found, n]]
            assert {(a["sku"], a["on_hand"]) for a in answers} == {(sku, answers[0]["on_hand"])}, answers

        # One SKU of the new worker's, one of a worker that was there before: the order spans both.
        pair = [sorted(owners[n])[0], sorted(owners[found[0]])[0]]
        for sku in pair:
            await api.receive(sku, 1)  # its own unit, whatever the stock holds
        order = await api.place([(sku, 1) for sku in pair])
        assert (await api.wait_final(order["order_id"], timeout=180))["status"] == "DELIVERED"
    finally:
        await asyncio.to_thread(proc.stop)  # only the worker this test started

    # As found: the same workers run, and they own every SKU between them again.
    assert running_instances(api.s, "warehouse") == found
    await eventually(lambda: _owners(api, found, skus), lambda o: _split(o, skus), 90,
                     f"warehouse workers {found} to own every SKU again")
    await api.receive("CABLE", 1)
    order = await api.place([("CABLE", 1)])
    assert (await api.wait_final(order["order_id"], timeout=180))["status"] == "DELIVERED"
