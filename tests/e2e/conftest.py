"""The whole stack through its public APIs: servers plus one worker per service."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import pytest

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.config import Settings
from edpo.runtime.http import bearer

FINAL = {"DELIVERED", "CANCELLED", "REJECTED"}
T = TypeVar("T")
# Most units one order line may ask for (POST /orders): larger quantities are spread over lines.
MAX_LINE = 10_000
# How long a test waits for the tests that use its SKU (a 100-order race runs for minutes).
LOCK_TIMEOUT = 600


@pytest.fixture(scope="session")
def stack(same_settings_as_running_stack: Settings) -> Settings:
    """Servers and workers up (a no-op when `make test` started them, refused when the workers
    running have other settings: see tests/stack_check.py)."""
    from edpo.cli import stack_up

    settings = same_settings_as_running_stack
    if os.environ.get("EDPO_TEST_NO_START") != "1":
        stack_up(settings, 1)
    return settings


class SkuLocks:
    """Locks on SKUs, shared by every test run against one stack (several pytest processes may
    run at once, and the stack has served any number of orders before).

    A test that compares a SKU's books before and after (on hand, reserved, waiting) owns the
    SKU: an exclusive lock, held until the test ends. Every order and receipt made through Api
    takes its SKUs' locks shared, also until the test ends, so no other test's orders move the
    books an owner compares. An owner orders only what it owns and takes its lock before any
    other, so two tests never wait for each other in a circle. CABLE is never owned: the
    browser tests order it through a client of their own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.held: dict[str, tuple[IO[bytes], int]] = {}

    async def own(self, sku: str) -> None:
        """This test alone changes sku from now on (waits for the tests using it to end)."""
        assert not self.held, f"a test owns a SKU before it orders anything; it holds {sorted(self.held)}"
        assert sku != "CABLE", "CABLE is ordered by tests that take no lock: own another SKU"
        await self._take(sku, fcntl.LOCK_EX)

    async def share(self, skus: Iterable[str]) -> None:
        """This test changes these SKUs; no owner of one compares its books meanwhile."""
        owned = {sku for sku, (_, mode) in self.held.items() if mode == fcntl.LOCK_EX}
        for sku in sorted(set(skus)):
            if owned:
                assert sku in owned, f"a test owning {sorted(owned)} orders only those, not {sku}"
            elif sku not in self.held:
                await self._take(sku, fcntl.LOCK_SH)

    async def _take(self, sku: str, mode: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        file = open(self.folder / f"{sku}.lock", "ab")  # noqa: SIM115 (held until release())
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(file, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    file.close()
                    raise AssertionError(f"{sku} stayed in use by other tests for {LOCK_TIMEOUT}s") from None
                await asyncio.sleep(0.25)
        self.held[sku] = (file, mode)

    def release(self) -> None:
        for file, _ in self.held.values():
            file.close()  # closing the file drops its lock
        self.held.clear()


def lines(sku: str, quantity: int) -> list[tuple[str, int]]:
    """quantity units of sku as order lines of at most MAX_LINE units each."""
    return [(sku, min(MAX_LINE, quantity - start)) for start in range(0, quantity, MAX_LINE)]


class Api:
    """The public HTTP APIs of the order and warehouse services (and a peek at the others)."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.s = settings
        self.http = session
        self.locks = SkuLocks(settings.run_dir / "e2e-locks")
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
        await self.locks.share(sku for sku, _ in items)
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
        """The SKU's stock; a 503 (the warehouse's partitions move: another test started or stopped a
        worker) is asked again after its Retry-After, as the API documents, for up to 60 s."""
        deadline = time.monotonic() + 60
        while True:
            async with self.http.get(f"{self.warehouse}/stock/{sku}") as r:
                reply = await r.json(content_type=None)
                if r.status != 503 or time.monotonic() > deadline:
                    assert r.status == 200, reply
                    return reply
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    async def receive(self, sku: str, quantity: int) -> None:
        await self.locks.share([sku])
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

    async def own(self, sku: str) -> dict:
        """Take sku to this test alone (SkuLocks.own) and return its stock once what earlier tests
        left moving has settled: no factory batch of it, no order waiting, the same stock twice."""
        await self.locks.own(sku)
        await self.factory_idle(sku)

        async def two_looks() -> tuple[dict, dict]:
            first = await self.stock(sku)
            await asyncio.sleep(1)
            return first, await self.stock(sku)

        settled = await eventually(two_looks, lambda looks: looks[0] == looks[1] and looks[1]["waiting"] == 0, 120,
                                   f"the {sku} stock to settle")
        return settled[1]

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
async def api(stack: Settings) -> AsyncIterator[Api]:
    """The stack's APIs for one test; the SKU locks it took are let go when it ends."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, headers=bearer(stack.api_token)) as session:
        api = Api(stack, session)
        try:
            yield api
        finally:
            api.locks.release()


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
