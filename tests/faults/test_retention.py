"""Finished orders leave the hot state: with short times to live, the engine's history cleanup
removes their process instances, the warehouse and the courier drop their table entries
(EDPO_TABLE_RETENTION, 5 s on the fault stack) and the order service prunes their inbox and
outbox rows (EDPO_RETENTION_HOURS); the order itself stays, final."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import asyncpg

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.runtime.http import bearer
from tests.faults.conftest import FINAL, PATHS, Stack, Traffic, until

RETENTION_S = 20.0  # the order service's EDPO_RETENTION_HOURS for this test


async def _rows(database_url: str, order_ids: list[str]) -> dict[str, int]:
    """The order service's inbox and outbox rows of these orders (outbox rows are keyed by order id)."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        inbox = await conn.fetchval("SELECT count(*) FROM process_inbox WHERE order_id = ANY($1)", order_ids)
        outbox = await conn.fetchval("SELECT count(*) FROM outbox WHERE key = ANY($1)", order_ids)
    finally:
        await conn.close()
    return {"inbox": inbox, "outbox": outbox}


async def _found(http: aiohttp.ClientSession, url: str) -> bool:
    """200: the entry is in the table; 404: it is not; anything else fails."""
    async with http.get(url) as r:
        assert r.status in (200, 404), f"GET {url}: {r.status} {await r.text()}"
        return r.status == 200


async def _delivery_attempts(http: aiohttp.ClientSession, metrics_url: str) -> float:
    """The courier's edpo_delivery_attempts, summed over every status."""
    async with http.get(metrics_url) as r:
        assert r.status == 200, f"GET {metrics_url}: {r.status}"
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edpo_delivery_attempts{"))


async def test_finished_orders_leave_the_engine_history_and_the_hot_tables(stack: Stack) -> None:
    s = stack.s
    host = s.host
    reservation = f"http://{host}:{s.warehouse_port}/reservations/{{}}"
    delivery = f"http://{host}:{s.delivery_port}/deliveries/{{}}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15), headers=bearer(s.api_token)) as http, \
            Engine.from_settings(s) as engine:
        definition = await engine.request("GET", f"/process-definition/key/{ORDER_FULFILMENT}")
        ttl = definition["historyTimeToLive"]
        assert ttl == 7, f"the deployed process keeps its history {ttl} days, not the 7 of the BPMN"
        await stack.stop_worker("order")
        await stack.start_worker("order", env={"EDPO_RETENTION_HOURS": str(RETENTION_S / 3600)})
        # With a time to live of 0 days, an instance may be removed as soon as it ends.
        await engine.request("PUT", f"/process-definition/{definition['id']}/history-time-to-live",
                             json={"historyTimeToLive": 0})
        try:
            await _finish_and_forget(stack, http, engine, reservation, delivery)
        finally:
            await engine.request("PUT", f"/process-definition/{definition['id']}/history-time-to-live",
                                 json={"historyTimeToLive": ttl})
            await stack.stop_worker("order")
            await stack.start_worker("order")


async def _finish_and_forget(stack: Stack, http: aiohttp.ClientSession, engine: Engine, reservation: str,
                             delivery: str) -> None:
    s = stack.s
    traffic = Traffic(s, http)
    placed = [await traffic.place(n, f"retention-{time.time_ns()}") for n in range(len(PATHS))]
    ids = [p.order_id for p in placed]

    # Each order's reservation and delivery are in the tables while it runs (seen at least once),
    # and the orders have inbox and outbox rows.
    seen: dict[str, set[str]] = {"reservation": set(), "delivery": set()}
    most_rows = {"inbox": 0, "outbox": 0}
    statuses: dict[str, str] = {}

    async def all_final() -> bool:
        for table, n in (await _rows(s.database_url, ids)).items():
            most_rows[table] = max(most_rows[table], n)
        for order_id in ids:
            for table, url in (("reservation", reservation), ("delivery", delivery)):
                if order_id not in seen[table] and await _found(http, url.format(order_id)):
                    seen[table].add(order_id)
            order = await traffic.status(order_id)
            if order is not None:
                statuses[order_id] = order["status"]
        return all(statuses.get(o) in FINAL for o in ids)

    await until(all_final, 180, "every order to reach a final status")
    assert seen == {"reservation": set(ids), "delivery": set(ids)}, f"entries never seen in the tables: {seen}"
    assert all(most_rows.values()), f"the orders' rows never seen in PostgreSQL: {most_rows}"

    finished = {o: await engine.history_instances(ORDER_FULFILMENT, o) for o in ids}
    assert all(len(h) == 1 and h[0]["removalTime"] for h in finished.values()), \
        f"not one finished instance with a removal time per order: {finished}"

    # The tables: the warehouse's reservations and the courier's deliveries are dropped
    # EDPO_TABLE_RETENTION after the order ends, and the courier's gauge counts none left.
    async def tables_forgotten() -> bool:
        for order_id in ids:
            if await _found(http, reservation.format(order_id)) or await _found(http, delivery.format(order_id)):
                return False
        return await _delivery_attempts(http, f"http://{s.host}:{s.delivery_port}/metrics") == 0

    await until(tables_forgotten, 60, "the reservations and deliveries to leave the tables")

    # PostgreSQL: done inbox rows and acknowledged outbox rows pruned after EDPO_RETENTION_HOURS.
    rows: dict[str, Any] = {}

    async def rows_pruned() -> bool:
        rows.update(await _rows(s.database_url, ids))
        return not any(rows.values())

    try:
        await until(rows_pruned, RETENTION_S + 60, "the orders' inbox and outbox rows to be pruned")
    except AssertionError:
        raise AssertionError(f"rows left in PostgreSQL: {rows}") from None

    # The engine: its history cleanup, triggered now, removes the finished instances.
    await engine.request("POST", "/history/cleanup", params={"immediatelyDue": "true"})

    async def history_removed() -> bool:
        return not any([await engine.history_instances(ORDER_FULFILMENT, o) for o in ids])

    await until(history_removed, 120, "the history cleanup to remove the finished instances")

    # What stays: the order, final, with its history.
    for order_id in ids:
        order = await traffic.status(order_id)
        assert order is not None and order["status"] == statuses[order_id], (order_id, order)
