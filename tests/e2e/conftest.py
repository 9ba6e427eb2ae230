"""The whole stack through its public APIs: servers plus one worker per service."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.config import Settings
from edpo.runtime.http import bearer

FINAL = {"DELIVERED", "CANCELLED", "REJECTED"}
T = TypeVar("T")


@pytest.fixture(scope="session")
def stack(same_settings_as_running_stack: Settings) -> Settings:
    """Servers and workers up (a no-op when `make test` started them, refused when the workers
    running have other settings: see tests/stack_check.py)."""
    from edpo.cli import stack_up

    settings = same_settings_as_running_stack
    if os.environ.get("EDPO_TEST_NO_START") != "1":
        stack_up(settings, 1)
    return settings


class Api:
    """The public HTTP APIs of the order and warehouse services (and a peek at the others)."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.s = settings
        self.http = session
        host = settings.host
        self.orders = f"http://{host}:{settings.web_ports['order']}"
        self.warehouse = f"http://{host}:{settings.web_ports['warehouse']}"
        self.factory = f"http://{host}:{settings.web_ports['factory']}"
        self.delivery = f"http://{host}:{settings.web_ports['delivery']}"

    async def call(self, method: str, url: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, url, **kw) as r:
            body = await r.json(content_type=None) if r.content_length != 0 else None
            return r.status, body

    async def place(self, items: list[tuple[str, int]], address: str = "Main Street 1, Bern", **kw: Any) -> dict:
        body = {"customer_id": "e2e", "delivery_address": address,
                "items": [{"sku": s, "quantity": q} for s, q in items]}
        status, reply = await self.call("POST", f"{self.orders}/orders", json=body, **kw)
        assert status == 201, reply
        return reply

    async def order(self, order_id: str, process: bool = True) -> dict:
        """GET /orders/{id}; process=False skips the engine lookup (for polling loops)."""
        params = {} if process else {"process": "false"}
        status, reply = await self.call("GET", f"{self.orders}/orders/{order_id}", params=params)
        assert status == 200, reply
        return reply

    async def stock(self, sku: str) -> dict:
        status, reply = await self.call("GET", f"{self.warehouse}/stock/{sku}")
        assert status == 200, reply
        return reply

    async def receive(self, sku: str, quantity: int) -> None:
        status, reply = await self.call("POST", f"{self.warehouse}/stock/{sku}/receipts", json={"quantity": quantity})
        assert status == 202, reply

    async def courier(self, order_id: str) -> dict:
        """The courier's record of the order, from the delivery worker owning its partition (the
        stack may run `--instances N`; each worker's view shows its own partitions)."""
        for n in range(1, 5):
            try:
                status, reply = await self.call(
                    "GET", f"http://{self.s.host}:{self.s.web_port('delivery', n)}/deliveries/{order_id}")
            except aiohttp.ClientConnectionError:
                break
            if status == 200:
                return reply
        raise AssertionError(f"no delivery worker knows {order_id}")

    async def production(self, sku: str) -> list[dict]:
        """sku's production lines over every factory worker (each lists the lines of its own
        partitions, and the stack may run `--instances N`)."""
        lines = []
        for n in range(1, 5):
            try:
                _, reply = await self.call("GET", f"http://{self.s.host}:{self.s.web_port('factory', n)}/production")
            except aiohttp.ClientConnectionError:
                break
            lines += [line for line in reply["lines"] if line["sku"] == sku]
        return lines

    async def produced(self, sku: str) -> int:
        """Units of sku the factory produced so far."""
        return sum(line["produced_total"] for line in await self.production(sku))

    async def factory_idle(self, sku: str, timeout: float = 120) -> None:
        """Wait until the factory makes no more of sku: a batch an earlier test started (the factory
        finishes what it started for a cancelled order) would land in the middle of a count."""
        await eventually(lambda: self.production(sku), lambda lines: all(
            line["pending"] == 0 and line["current_qty"] == 0 for line in lines), timeout,
            f"the factory to finish its {sku} batches")

    async def wait_final(self, order_id: str, timeout: float = 120) -> dict:
        await eventually(lambda: self.order(order_id, process=False), lambda o: o["status"] in FINAL, timeout,
                         f"order {order_id} to reach a final status")
        return await self.order(order_id)


async def eventually(fetch: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float, what: str,
                     interval: float = 0.25) -> T:
    """Poll until ok(value) holds; fail with the last value seen when the deadline passes."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await fetch()
        if ok(last):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


@pytest.fixture
async def api(stack: Settings) -> Api:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=bearer(stack.api_token)) as session:
        yield Api(stack, session)


@pytest.fixture
async def engine(stack: Settings) -> Engine:
    async with Engine.from_settings(stack) as e:
        yield e


async def ended_at(engine: Engine, order_id: str, timeout: float = 30) -> list[str]:
    """The end events the order's process instance reached, once it has ended."""
    history = await eventually(
        lambda: engine.history_instances(ORDER_FULFILMENT, order_id),
        lambda h: len(h) == 1 and h[0]["state"] == "COMPLETED", timeout, f"process of {order_id} to complete",
    )
    acts = await engine.activity_history(history[0]["id"])
    return [a["activityId"] for a in acts if a["activityType"] in ("noneEndEvent", "terminateEndEvent")]
