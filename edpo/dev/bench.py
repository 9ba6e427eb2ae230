"""`edpo bench`: end-to-end latency of one order and throughput of a burst, through the public API.

Run it against a stack whose simulated durations are zero (`make bench` does that) so the
figures measure EDPO's own overhead: Kafka hops, Faust agents, PostgreSQL, Camunda.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import aiohttp

from edpo.config import Settings
from edpo.runtime.http import bearer

SKU = "CABLE"


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Client:
    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.orders = f"http://{settings.host}:{settings.web_ports['order']}"
        self.warehouse = f"http://{settings.host}:{settings.web_ports['warehouse']}"

    async def place(self, quantity: int = 1) -> str:
        body = {"customer_id": "bench", "delivery_address": "Bench Street 1", "items": [{"sku": SKU, "quantity": quantity}]}
        async with self.http.post(f"{self.orders}/orders", json=body) as r:
            reply = await r.json()
            if r.status != 201:
                raise RuntimeError(f"POST /orders: {r.status} {reply}")
            return reply["order_id"]

    async def status(self, order_id: str) -> str:
        async with self.http.get(f"{self.orders}/orders/{order_id}", params={"process": "false"}) as r:
            return (await r.json())["status"]

    async def delivered(self) -> set[str]:
        async with self.http.get(f"{self.orders}/orders", params={"status": "DELIVERED", "limit": "1000"}) as r:
            return {o["order_id"] for o in (await r.json())["orders"]}

    async def stock_up(self, quantity: int) -> None:
        async with self.http.get(f"{self.warehouse}/stock/{SKU}") as r:
            available = (await r.json())["available"]
        if available < quantity:
            async with self.http.post(f"{self.warehouse}/stock/{SKU}/receipts",
                                      json={"quantity": quantity - available}) as r:
                assert r.status == 202
            while True:
                async with self.http.get(f"{self.warehouse}/stock/{SKU}") as r:
                    if (await r.json())["available"] >= quantity:
                        return
                await asyncio.sleep(0.1)


async def latency(c: Client, runs: int, timeout: float = 60) -> list[float]:
    """Seconds from POST to DELIVERED for single orders placed one after another."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        order_id = await c.place()
        while (status := await c.status(order_id)) not in {"DELIVERED", "CANCELLED", "REJECTED"}:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"order {order_id} stuck in {status}")
            await asyncio.sleep(0.01)
        if status != "DELIVERED":
            raise RuntimeError(f"order {order_id} ended {status}")
        out.append(time.perf_counter() - t0)
    return out


async def burst(c: Client, n: int, timeout: float = 600) -> tuple[float, float]:
    """Place n orders at once; returns (seconds to accept all POSTs, seconds until all DELIVERED)."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(50)

    async def one() -> str:
        async with sem:
            return await c.place()

    ids = set(await asyncio.gather(*(one() for _ in range(n))))
    placed = time.perf_counter() - t0
    while not ids <= await c.delivered():
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError("burst did not complete in time")
        await asyncio.sleep(0.1)
    return placed, time.perf_counter() - t0


async def _run(settings: Settings, orders: int, runs: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=bearer(settings.api_token)) as http:
        c = Client(settings, http)
        await c.stock_up(runs + orders + 1)
        await latency(c, 1)  # warm-up: connections, JIT of the engine
        lat = await latency(c, runs)
        placed, total = await burst(c, orders)
    return {"latency": lat, "placed": placed, "total": total, "orders": orders}


def run_bench(settings: Settings, orders: int = 200, runs: int = 10) -> int:
    r = asyncio.run(_run(settings, orders, runs))
    lat = sorted(r["latency"])
    _out(f"single order, POST -> DELIVERED ({runs} runs): median {statistics.median(lat):.3f}s, "
         f"min {lat[0]:.3f}s, max {lat[-1]:.3f}s")
    _out(f"burst of {r['orders']} orders: all POSTs answered in {r['placed']:.2f}s, all DELIVERED after "
         f"{r['total']:.2f}s -> {r['orders'] / r['total']:.1f} orders/s")
    return 0
