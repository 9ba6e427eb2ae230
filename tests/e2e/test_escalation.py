"""Deadlines bring a dispatcher in, with the whole stack: a courier that never reports and stock
that does not come raise user tasks in Tasklist; the decisions made there (through the engine's
REST API, as Tasklist does) move the real order, its stock and its courier.

`make test` runs the stack with short deadlines (EDPO_DELIVERY_TIMEOUT, EDPO_STOCK_TIMEOUT:
seconds, see the Makefile); an address matching EDPO_SILENT_PATTERN ("no news") gets a courier
that never reports back.
"""

from __future__ import annotations

from typing import Any

from edpo.camunda.engine import Engine
from tests.e2e.conftest import Api, ended_at, eventually, lines

SILENT = "No News Lane 7, Bern"
SKU = "MOUSE"  # the silent courier's; owned while the test runs (SkuLocks)


async def _task(api: Api, engine: Engine, order_id: str, key: str, timeout: float = 60) -> dict[str, Any]:
    """The order's open user task with this key, as the order API shows it, checked against the engine."""
    order = await eventually(lambda: api.order(order_id), lambda o: any(
        t["key"] == key for t in (o["process"] or {}).get("user_tasks", [])), timeout, f"task {key} for {order_id}")
    [task] = [t for t in order["process"]["user_tasks"] if t["key"] == key]
    links = await engine.request("GET", f"/task/{task['id']}/identity-links")
    assert {"type": "candidate", "groupId": "dispatchers"} in [{"type": link["type"], "groupId": link["groupId"]}
                                                                for link in links], links
    return task


async def _decide(engine: Engine, task: dict[str, Any], decision: str) -> None:
    await engine.request("POST", f"/task/{task['id']}/complete",
                         json={"variables": {"decision": {"value": decision, "type": "String"}}})


async def _attempts(api: Api, order_id: str) -> dict[str, str]:
    return {n: a["status"] for n, a in (await api.courier(order_id))["attempts"].items()}


async def test_a_silent_courier_is_escalated_and_the_dispatcher_waits_retries_then_cancels(
        api: Api, engine: Engine) -> None:
    settled = await api.own(SKU)
    await api.receive(SKU, 2)  # its own two units
    before = await eventually(lambda: api.stock(SKU), lambda s: s["on_hand"] == settled["on_hand"] + 2, 30,
                              f"the {SKU} receipt to be booked")
    order = await api.place([(SKU, 2)], address=SILENT)
    oid = order["order_id"]

    task = await _task(api, engine, oid, "resolve-overdue-delivery")
    assert task["name"] == "Resolve overdue delivery"
    assert (await api.order(oid))["status"] == "SHIPPED"
    await _decide(engine, task, "wait")
    again = await _task(api, engine, oid, "resolve-overdue-delivery")  # the timer started again
    assert again["id"] != task["id"]
    assert await _attempts(api, oid) == {"1": "in_transit"}

    await _decide(engine, again, "retry")  # courier 1 called back, courier 2 sent
    third = await _task(api, engine, oid, "resolve-overdue-delivery")
    assert await _attempts(api, oid) == {"1": "withdrawn", "2": "in_transit"}
    shipped = [h for h in (await api.order(oid))["history"] if h["status"] == "SHIPPED"]
    assert len(shipped) == 2, "attempt 2 started"

    await _decide(engine, third, "cancel")
    final = await api.wait_final(oid, timeout=60)
    assert final["status"] == "CANCELLED", final
    assert "overdue" in [h for h in final["history"] if h["status"] == "CANCELLED"][0]["detail"]
    assert await _attempts(api, oid) == {"1": "withdrawn", "2": "withdrawn"}
    assert await ended_at(engine, oid) == ["EndEvent_OrderCancelled"]
    after = await eventually(lambda: api.stock(SKU), lambda s: s["reserved"] == before["reserved"], 30,
                             f"the {SKU} units back in stock")
    assert after == before, "the books are as before the order"


async def test_stock_that_does_not_come_is_escalated_and_cancelling_frees_the_units_and_the_queue(
        api: Api, engine: Engine) -> None:
    sku = "MONITOR"
    settled = await api.own(sku)
    await api.receive(sku, 5)  # units the order takes at once, before it waits for the rest
    before = await eventually(lambda: api.stock(sku), lambda s: s["on_hand"] == settled["on_hand"] + 5, 30,
                              f"the {sku} receipt to be booked")
    wanted = before["available"] + 2000  # 20 s of factory batches: longer than two stock timeouts
    order = await api.place(lines(sku, wanted))
    oid = order["order_id"]
    task = await _task(api, engine, oid, "decide-delayed-order")
    assert task["name"] == "Decide on delayed order"
    waiting = await api.stock(sku)
    assert waiting["waiting"] == before["waiting"] + 1, waiting
    # It took every unit there was, and the factory's first batches too.
    assert waiting["available"] == 0 and waiting["reserved"] >= before["reserved"] + before["available"], waiting
    await _decide(engine, task, "wait")
    again = await _task(api, engine, oid, "decide-delayed-order")
    assert again["id"] != task["id"] and (await api.order(oid))["status"] == "AWAITING_STOCK"

    await _decide(engine, again, "cancel")
    final = await api.wait_final(oid, timeout=60)
    assert final["status"] == "CANCELLED", final
    assert "stock" in [h for h in final["history"] if h["status"] == "CANCELLED"][0]["detail"]
    assert await ended_at(engine, oid) == ["EndEvent_OrderCancelled"]
    after = await eventually(lambda: api.stock(sku), lambda s: s["waiting"] == before["waiting"], 30,
                             f"the order to leave the {sku} queue")
    assert after["reserved"] == before["reserved"], (before, after)
    assert after["on_hand"] >= before["on_hand"], "only the factory's batches for it come in afterwards"
