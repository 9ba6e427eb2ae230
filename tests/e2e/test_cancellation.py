"""Customers cancel orders (POST /orders/{id}/cancel, `edpo order cancel`), and a service that
stops answering becomes an incident that a retry resolves: the whole stack, public APIs."""

from __future__ import annotations

import asyncio
import random

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.config import Settings
from tests.e2e.conftest import FINAL, Api, ended_at, eventually, lines


async def _cancel(api: Api, order_id: str) -> tuple[int, dict]:
    return await api.call("POST", f"{api.orders}/orders/{order_id}/cancel")


async def test_a_waiting_order_is_cancelled_its_units_go_back_and_its_place_in_the_queue_is_freed(
        api: Api, engine: Engine) -> None:
    before = await api.own("DOCK")
    # More DOCKs than the factory makes before the cancellation: the order waits until then.
    order = await api.place(lines("DOCK", before["available"] + 500))
    waiting = await eventually(lambda: api.order(order["order_id"]), lambda o: o["status"] == "AWAITING_STOCK", 60,
                               "the order to wait for stock")
    assert waiting["process"]["state"] == "active" and waiting["process"]["incidents"] == 0, waiting["process"]
    assert waiting["cancel_requested_at"] is None

    status, reply = await _cancel(api, order["order_id"])
    assert status == 202, reply
    assert reply["cancel_requested_at"] and reply["status"] not in FINAL
    again, reply2 = await _cancel(api, order["order_id"])  # twice is harmless
    assert again == 202 and reply2["cancel_requested_at"] == reply["cancel_requested_at"], reply2

    final = await api.wait_final(order["order_id"], timeout=60)
    assert final["status"] == "CANCELLED", final
    assert [h.get("detail") for h in final["history"] if h["status"] == "CANCELLED"] == ["the customer cancelled it"]
    assert await ended_at(engine, order["order_id"]) == ["EndEvent_CancelledOnRequest"]
    assert (await api.order(order["order_id"]))["process"]["state"] == "ended"
    # Its units are back and it no longer waits in the queue (the factory's batches for it
    # arrive later as surplus: on hand only grows).
    stock = await eventually(lambda: api.stock("DOCK"), lambda s: s["waiting"] == before["waiting"], 30,
                             "the order to leave the DOCK queue")
    assert stock["reserved"] == before["reserved"] and stock["on_hand"] >= before["on_hand"], (before, stock)

    status, reply = await _cancel(api, order["order_id"])
    assert status == 409 and reply["status"] == "CANCELLED", reply
    assert "cancelled already" in reply["errors"][0]["message"]


async def test_cancel_answers_404_for_an_unknown_order_and_409_once_delivered(api: Api) -> None:
    status, reply = await _cancel(api, "no-such-order")
    assert status == 404 and reply["errors"][0]["field"] == "order_id", reply

    await api.receive("CABLE", 1)  # its own cable
    order = await api.place([("CABLE", 1)])
    assert (await api.wait_final(order["order_id"]))["status"] == "DELIVERED"
    status, reply = await _cancel(api, order["order_id"])
    assert status == 409 and reply["status"] == "DELIVERED", reply
    assert "delivered" in reply["errors"][0]["message"]
    assert (await api.order(order["order_id"]))["cancel_requested_at"] is None


async def test_cancellations_racing_the_courier_end_cancelled_or_delivered_never_both(api: Api) -> None:
    """100 orders, each cancelled at a random moment: every one ends CANCELLED with its unit back
    or DELIVERED with it shipped, never both and never neither; the books add up. The first ten
    are cancelled at once and the last ten after delivery, so both outcomes occur. (A cancellation
    accepted at once can still lose its race: with the suite's 0.5 s courier and a busy engine, the
    process may reach the courier before it hears the cancellation; DELIVERED is then right.)"""
    sku, n = "KEYBOARD", 100
    settled = await api.own(sku)
    await api.receive(sku, n)  # a unit of its own for every order
    before = await eventually(lambda: api.stock(sku), lambda s: s["on_hand"] == settled["on_hand"] + n, 30,
                              f"{n} {sku} received")
    rng = random.Random(8)

    async def one(i: int) -> tuple[str, int]:
        order = await api.place([(sku, 1)], address=f"Race Street {i}, Bern")
        oid = order["order_id"]
        if i < 10:
            pass
        elif i >= n - 10:
            await api.wait_final(oid, timeout=180)
        else:
            await asyncio.sleep(rng.uniform(0, 3))
        status, reply = await _cancel(api, oid)
        assert status in (202, 409), reply
        final = await api.wait_final(oid, timeout=240)
        finals = [h["status"] for h in final["history"] if h["status"] in FINAL]
        assert finals == [final["status"]], final["history"]
        assert final["status"] in ("CANCELLED", "DELIVERED"), final
        if status == 409:
            assert final["status"] == "DELIVERED", (reply, final)
        return final["status"], status

    results = await asyncio.gather(*(one(i) for i in range(n)))
    outcomes = [r[0] for r in results]
    assert "CANCELLED" in outcomes[:10] and outcomes[-10:] == ["DELIVERED"] * 10, outcomes
    delivered = outcomes.count("DELIVERED")
    after = await eventually(lambda: api.stock(sku), lambda s: s["reserved"] == before["reserved"], 60,
                             f"every {sku} to be shipped or back in stock")
    assert after["on_hand"] == before["on_hand"] - delivered, (before, after, delivered)
    assert after["waiting"] == before["waiting"] == 0 and after["reserved"] == before["reserved"]


async def test_a_service_that_does_not_answer_becomes_an_incident_and_a_retry_finishes_the_order(
        api: Api, engine: Engine, stack: Settings) -> None:
    """The delivery service is stopped for longer than the start-delivery task's tries last
    (the warehouse runs with one command send and two quick tries): an incident with the error
    shows on the order's process; once delivery is back, retrying the task (as Cockpit does)
    lets the order finish DELIVERED."""
    from edpo.dev.workers import running_instances, start_worker, worker_process

    quick = {"EDPO_COMMAND_ATTEMPTS": "1", "EDPO_COMMAND_TIMEOUT": "1", "EDPO_TASK_RETRIES": "2",
             "EDPO_TASK_RETRY_BACKOFF": "1"}

    # Every instance (the stack may run `--instances N`).
    warehouses, deliveries = running_instances(stack, "warehouse"), running_instances(stack, "delivery")
    for n in warehouses:
        await asyncio.to_thread(worker_process(stack, "warehouse", n).stop)
        await asyncio.to_thread(start_worker, stack, "warehouse", n, quick)
    for n in deliveries:
        await asyncio.to_thread(worker_process(stack, "delivery", n).stop)
    try:
        await api.receive("MOUSE", 1)  # its own mouse
        order = await api.place([("MOUSE", 1)])
        oid = order["order_id"]

        async def incidents() -> list[dict]:
            instances = await engine.process_instances(ORDER_FULFILMENT, oid)
            if not instances:
                return []
            return await engine.request("GET", "/incident", params={"processInstanceId": instances[0]["id"]})

        [incident] = await eventually(incidents, lambda found: len(found) == 1, 90, "an incident")
        assert incident["activityId"] == "Task_StartDelivery", incident
        assert "StartDelivery" in incident["incidentMessage"], incident
        view = (await api.order(oid))["process"]
        assert view["incidents"] == 1 and "Start delivery" in view["waiting_at"], view
        assert (await api.order(oid))["status"] == "PACKED"

        for n in deliveries:
            await asyncio.to_thread(start_worker, stack, "delivery", n)
        # Cockpit's "retry": the failed external task gets a try again.
        await engine.request("PUT", f"/external-task/{incident['configuration']}/retries", json={"retries": 1})
        final = await api.wait_final(oid, timeout=60)
        assert final["status"] == "DELIVERED", final
        assert await incidents() == []
    finally:
        for n in deliveries:
            if not worker_process(stack, "delivery", n).running():
                await asyncio.to_thread(start_worker, stack, "delivery", n)
        for n in warehouses:
            await asyncio.to_thread(worker_process(stack, "warehouse", n).stop)
            await asyncio.to_thread(start_worker, stack, "warehouse", n)


async def test_edpo_order_cancel_cancels_a_waiting_order_and_says_why_it_cannot_cancel_twice(api: Api) -> None:
    import subprocess
    import sys

    def edpo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edpo.cli", "order", *args], capture_output=True, text=True,
                              timeout=60)

    order = await api.place(lines("DOCK", (await api.stock("DOCK"))["available"] + 50))
    await eventually(lambda: api.order(order["order_id"], process=False), lambda o: o["status"] == "AWAITING_STOCK",
                     60, "the order to wait for stock")
    done = await asyncio.to_thread(edpo, "cancel", order["order_id"])
    assert done.returncode == 0 and "accepted" in done.stdout, done
    assert (await api.wait_final(order["order_id"], timeout=60))["status"] == "CANCELLED"
    again = await asyncio.to_thread(edpo, "cancel", order["order_id"])
    assert again.returncode == 1 and "cancelled already" in again.stdout, again
    unknown = await asyncio.to_thread(edpo, "cancel", "no-such-order")
    assert unknown.returncode == 1 and "no order" in unknown.stdout, unknown
