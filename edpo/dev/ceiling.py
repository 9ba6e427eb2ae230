"""The engine's ceiling: the order process's BPMN shape driven by a client that does nothing.

`edpo bench` deploys edpo/camunda/order_fulfilment.bpmn again under the key `edpo_ceiling`, with
every external-task topic renamed `ceiling-<topic>` (the real workers never fetch those), starts N
instances at once with the variables the order service passes, completes each external task the
moment it is fetched and correlates the messages the services would send (StockReserved after
`reserve-stock`, DeliveryCompleted after `start-delivery`). Instances per second until all N have
ended is what the engine (with its PostgreSQL) can do for this process on this machine; the
system's orders per second divided by it says how close EDPO comes to that limit.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edpo.camunda import ORDER_FULFILMENT, ORDER_FULFILMENT_BPMN
from edpo.camunda.engine import Engine, EngineError, variables
from edpo.config import Settings

CEILING_KEY = "edpo_ceiling"
TOPIC_PREFIX = "ceiling-"
# One delivery attempt is enough: the no-op courier always delivers.
FETCH_VARIABLES = ["delivery_attempt"]

_TOPIC = re.compile(r'camunda:topic="([^"]+)"')


def ceiling_bpmn(text: str, key: str = CEILING_KEY, prefix: str = TOPIC_PREFIX) -> str:
    """The process under another key (its id and the diagram's reference to it), every
    external task on a prefixed topic; nothing else changes."""
    text = text.replace(f'"{ORDER_FULFILMENT}"', f'"{key}"')
    return _TOPIC.sub(lambda m: f'camunda:topic="{prefix}{m.group(1)}"', text)


def start_values(settings: Settings, order_id: str) -> dict[str, Any]:
    """What the order service passes at the start (OrderBackground.start_variables), for a 1 x CABLE order."""
    history = "ACCEPTED"
    return {
        "order_id": order_id,
        "delivery_address": "Bench Street 1",
        "lines": [{"sku": "CABLE", "quantity": 1}],
        "trace_id": uuid.uuid4().hex,
        "order_summary": f"1 x CABLE to Bench Street 1 (customer bench, order {order_id})",
        "order_history": history,
        "missing_summary": "",
        "max_delivery_attempts": settings.delivery_attempts,
        "delivery_attempt": 0,
        "delivery_retry_backoff": f"PT{settings.delivery_retry_backoff:g}S",
        "delivery_timeout": settings.delivery_timeout,
        "stock_timeout": settings.stock_timeout,
        "order_deadline": settings.order_deadline,
    }


@dataclass
class CeilingRun:
    """What one ceiling run saw: per-instance seconds from start to end, and the requests it sent."""

    instances: int
    started_at: float = 0.0
    ended_at: float = 0.0
    started: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    finished_in_history: int | None = None

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def seconds(self) -> float:
        return max(self.ended_at - self.started_at, 1e-9)


class NoOpWorkers:
    """Fetch-and-lock loops on the ceiling topics that complete every task at once and correlate
    the messages the warehouse and the delivery would cause."""

    def __init__(self, engine: Engine, run: CeilingRun, business_keys: set[str], pollers: int = 4,
                 batch: int = 20) -> None:
        self.engine = engine
        self.run = run
        self.keys = business_keys
        self.pollers = pollers
        self.batch = batch
        self.worker_id = f"edpo-bench-{uuid.uuid4().hex[:8]}"
        self.all_done = asyncio.Event()

    def topics(self) -> list[dict[str, Any]]:
        names = sorted({m.group(1) for m in _TOPIC.finditer(ORDER_FULFILMENT_BPMN.read_text())})
        return [{"topicName": TOPIC_PREFIX + t, "lockDuration": 60_000, "variables": FETCH_VARIABLES} for t in names]

    async def serve(self) -> None:
        await asyncio.gather(*(self._poll() for _ in range(self.pollers)))

    async def _poll(self) -> None:
        topics = self.topics()
        while not self.all_done.is_set():
            tasks = await self.engine.request("POST", "/external-task/fetchAndLock", json={
                "workerId": self.worker_id, "maxTasks": self.batch, "asyncResponseTimeout": 1000,
                "topics": topics})
            await asyncio.gather(*(self._handle(t) for t in tasks))

    async def _handle(self, task: dict[str, Any]) -> None:
        topic = task["topicName"].removeprefix(TOPIC_PREFIX)
        key = task.get("businessKey") or ""
        values: dict[str, Any] = {}
        if topic == "start-delivery":
            attempt = int((task.get("variables") or {}).get("delivery_attempt", {}).get("value") or 0) + 1
            values = {"delivery_attempt": attempt}
        try:
            await self.engine.request("POST", f"/external-task/{task['id']}/complete",
                                      json={"workerId": self.worker_id, "variables": variables(values)})
            if topic == "reserve-stock":
                await self._correlate("StockReserved", key, values={"replenish_after_all": False,
                                                                     "order_history": "ACCEPTED, RESERVED"})
            elif topic == "start-delivery":
                await self._correlate("DeliveryCompleted", key, keys=values)
                self._ended(key)
        except EngineError as e:
            self.run.failures.append(f"{key} {topic}: {e}")

    async def _correlate(self, message: str, key: str, values: dict[str, Any] | None = None,
                         keys: dict[str, Any] | None = None) -> None:
        """As the order service's bridge does: the process waits already (the task's completion
        ran it to its next wait state), so a mismatch is a failure after a few tries."""
        for attempt in range(5):
            try:
                await self.engine.correlate(message, key, values, keys)
                return
            except EngineError as e:
                if not e.is_no_match or attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    def _ended(self, key: str) -> None:
        now = time.time()
        self.run.latencies.append(now - self.run.started[key])
        self.run.ended_at = now
        if self.run.done + len(self.run.failures) >= self.run.instances:
            self.all_done.set()


async def deploy_ceiling(engine: Engine, settings: Settings) -> None:
    """Deploy the ceiling's copy of the process (unchanged copies are not deployed twice)."""
    folder = settings.run_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CEILING_KEY}.bpmn"
    path.write_text(ceiling_bpmn(ORDER_FULFILMENT_BPMN.read_text()))
    await engine.deploy("edpo-ceiling", path)


async def run_ceiling(settings: Settings, instances: int, *, concurrency: int = 50, timeout: float = 600,
                      progress: Callable[[str], None] = lambda line: None) -> CeilingRun:
    """Start `instances` ceiling instances at once (at most `concurrency` starts in flight) and
    drive them to their end with no-op workers; returns when all have ended or failed."""
    run = CeilingRun(instances)
    prefix = f"ceiling-{uuid.uuid4().hex[:8]}-"
    keys = [f"{prefix}{i}" for i in range(instances)]
    async with Engine.from_settings(settings) as engine:
        await deploy_ceiling(engine, settings)
        engine.requests.clear()  # the instances' requests only
        workers = NoOpWorkers(engine, run, set(keys))
        serving = asyncio.create_task(workers.serve())
        sem = asyncio.Semaphore(concurrency)

        async def start(key: str) -> None:
            async with sem:
                run.started[key] = time.time()
                try:
                    await engine.start_process(CEILING_KEY, key, start_values(settings, key))
                except EngineError as e:
                    run.failures.append(f"{key} start: {e}")

        run.started_at = time.time()
        starting = asyncio.gather(*(start(k) for k in keys))
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while not workers.all_done.is_set():
            if serving.done():
                serving.result()  # a poller died: raise its error
            if time.monotonic() > deadline:
                break
            if time.monotonic() - last_report >= 3:
                last_report = time.monotonic()
                progress(f"[ceiling {instances}] started {len(run.started)}/{instances}, ended {run.done}, "
                         f"failed {len(run.failures)}, {time.time() - run.started_at:.1f}s")
            try:
                await asyncio.wait_for(workers.all_done.wait(), timeout=0.5)
            except TimeoutError:
                pass
        await starting
        workers.all_done.set()
        await asyncio.gather(serving, return_exceptions=True)  # pollers end after their current long poll
        run.requests = Counter(engine.requests)
        count = await engine.request("GET", "/history/process-instance/count", params={
            "processDefinitionKey": CEILING_KEY, "processInstanceBusinessKeyLike": f"{prefix}%", "finished": "true"})
        run.finished_in_history = int(count.get("count", 0))
    return run
