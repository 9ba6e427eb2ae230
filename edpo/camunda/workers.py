"""External-task workers for the `order_fulfilment` process, one table per service.

Each BPMN service task "Do thing" has the topic `do-thing` served by `do_thing()` below.
Handlers are thin: read variables, send a command (and wait for its acknowledgment where
the step is critical), complete. Technical faults become failures with retries and end as
incidents in Cockpit; business outcomes are BPMN errors (`DELIVERY_REJECTED`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
import httpx
from camunda.client import async_external_task_client as _async_client_module
from camunda.external_task.async_external_task_worker import AsyncExternalTaskWorker
from camunda.external_task.external_task import ExternalTask, TaskResult
from camunda.utils.response_utils import raise_exception_if_not_ok

from edpo.agents.runtime import retrying
from edpo.camunda.commands import CommandClient, CommandUnanswered
from edpo.config import Settings
from edpo.models import (
    DeliveryAccepted,
    DeliveryRejected,
    GoodsPacked,
    Line,
    ManufactureItems,
    PackGoods,
    PackingRejected,
    ReleaseStock,
    ReserveStock,
    StartDelivery,
    StockReleased,
)
from edpo.topics import (
    delivery_commands_topic,
    delivery_events_topic,
    factory_commands_topic,
    warehouse_commands_topic,
    warehouse_events_topic,
)

logger = logging.getLogger(__name__)

PROCESS_KEY = "order_fulfilment"


@dataclass
class TaskContext:
    """What handlers may use: the command client and service-specific callbacks."""

    settings: Settings
    commands: CommandClient
    source: str
    cancel_order: Callable[[str, str], Awaitable[None]] | None = None


Handler = Callable[[ExternalTask, TaskContext], Awaitable[TaskResult]]


def _lines(task: ExternalTask, name: str) -> list[Line]:
    raw = task.get_variable(name)
    return [Line(sku=line["sku"], quantity=int(line["quantity"])) for line in json.loads(raw or "[]")]


def _trace(task: ExternalTask) -> str:
    return task.get_variable("trace_id") or ""


# --- warehouse --------------------------------------------------------------------------------


async def reserve_stock(task: ExternalTask, ctx: TaskContext) -> TaskResult:
    """Ask the warehouse to reserve every line; the outcome arrives as an event the process waits for."""
    order_id = task.get_business_key()
    cmd = ReserveStock(order_id=order_id, lines=_lines(task, "lines"), source=ctx.source, trace_id=_trace(task))
    await ctx.commands.send(warehouse_commands_topic, order_id, cmd)
    return task.complete({})


async def pack_goods(task: ExternalTask, ctx: TaskContext) -> TaskResult:
    """Pick and pack: completes once the warehouse acknowledges GoodsPacked."""
    order_id = task.get_business_key()
    cmd = PackGoods(order_id=order_id, source=ctx.source, trace_id=_trace(task))
    reply = await ctx.commands.request(warehouse_commands_topic, order_id, cmd, replies=(GoodsPacked, PackingRejected))
    if isinstance(reply, PackingRejected):
        raise RuntimeError(f"packing rejected: {reply.reason}")  # a technical fault: incident
    return task.complete({})


async def start_delivery(task: ExternalTask, ctx: TaskContext) -> TaskResult:
    """Warehouse -> Delivery command with acknowledgment; the attempt number makes retries safe."""
    order_id = task.get_business_key()
    # A re-fetched task (worker crash before complete) computes the same attempt again, and
    # the delivery service answers a known attempt with the same acknowledgment.
    attempt = int(task.get_variable("delivery_attempt") or 0) + 1
    cmd = StartDelivery(
        order_id=order_id,
        attempt=attempt,
        delivery_address=task.get_variable("delivery_address") or "",
        lines=_lines(task, "lines"),
        source=ctx.source,
        trace_id=_trace(task),
    )
    reply = await ctx.commands.request(
        delivery_commands_topic, order_id, cmd, replies=(DeliveryAccepted, DeliveryRejected)
    )
    if isinstance(reply, DeliveryRejected):
        return task.bpmn_error("DELIVERY_REJECTED", reply.reason, {"delivery_attempt": attempt})
    return task.complete({"delivery_attempt": attempt})


async def release_stock(task: ExternalTask, ctx: TaskContext) -> TaskResult:
    """Compensation of "Reserve stock": the order's units go back to stock."""
    order_id = task.get_business_key()
    cmd = ReleaseStock(order_id=order_id, source=ctx.source, trace_id=_trace(task))
    await ctx.commands.request(warehouse_commands_topic, order_id, cmd, replies=(StockReleased,))
    return task.complete({})


# --- factory ----------------------------------------------------------------------------------


async def request_replenishment(task: ExternalTask, ctx: TaskContext) -> TaskResult:
    """One ManufactureItems per missing SKU; the request id makes a retried task harmless."""
    order_id = task.get_business_key()
    for line in _lines(task, "missing"):
        cmd = ManufactureItems(
            sku=line.sku,
            quantity=line.quantity,
            request_id=f"{order_id}:{line.sku}",
            order_id=order_id,
            source=ctx.source,
            trace_id=_trace(task),
        )
        await ctx.commands.send(factory_commands_topic, line.sku, cmd)
    return task.complete({})


# --- order ------------------------------------------------------------------------------------


async def cancel_order(task: ExternalTask, ctx: TaskContext) -> TaskResult:
    """Record the cancellation (the order service publishes OrderCancelled)."""
    assert ctx.cancel_order is not None, "cancel-order is served by the order service"
    await ctx.cancel_order(task.get_business_key(), "every delivery attempt failed")
    return task.complete({})


# The registry: which service serves which BPMN task topic.
TASKS_BY_SERVICE: dict[str, dict[str, Handler]] = {
    "order": {"cancel-order": cancel_order},
    "warehouse": {
        "reserve-stock": reserve_stock,
        "pack-goods": pack_goods,
        "start-delivery": start_delivery,
        "release-stock": release_stock,
    },
    "factory": {"request-replenishment": request_replenishment},
    "delivery": {},
}


async def keep_locked(task: ExternalTask, camunda_url: str, lock_ms: int) -> None:
    """Renew the task's lock every third of its duration until cancelled.

    Locks are short, so the tasks of a worker that died are handed out again soon; a handler
    that is still waiting (for an acknowledgment, say) keeps its task by renewing the lock.
    """
    url = f"{camunda_url}/external-task/{task.get_task_id()}/extendLock"
    while True:
        await asyncio.sleep(lock_ms / 3000)
        try:
            async with _shared_httpx as http:
                r = await http.post(url, json={"workerId": task.get_worker_id(), "newDuration": lock_ms})
            if r.status_code >= 300:
                logger.warning("could not extend the lock of %s: %s", task.get_task_id(), r.text[:200])
        except httpx.HTTPError as e:
            logger.warning("could not extend the lock of %s: %s", task.get_task_id(), e)


def _bind(handler: Handler, ctx: TaskContext) -> Callable[[ExternalTask], Awaitable[TaskResult]]:
    async def run(task: ExternalTask) -> TaskResult:
        lock_ms = int(ctx.settings.task_lock * 1000)
        keeper = asyncio.create_task(keep_locked(task, ctx.settings.camunda_url, lock_ms))
        try:
            return await handler(task, ctx)
        except (CommandUnanswered, Exception) as e:  # noqa: BLE001 - becomes a retry, then an incident
            logger.warning("task %s for %s failed: %s", task.get_topic_name(), task.get_business_key(), e)
            retries = task._context.get("retries")  # noqa: SLF001
            left = 2 if retries is None else max(int(retries) - 1, 0)
            return task.failure(type(e).__name__, str(e), max_retries=left, retry_timeout=5000)
        finally:
            keeper.cancel()

    return run


class _SharedHttpx:
    """Stands in for the `httpx` module inside the camunda client, which opens a new
    AsyncClient (and builds a new TLS context) for every fetch and every completion: that
    was most of a worker's CPU under load. Here all calls share one pooled client."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def AsyncClient(self) -> _SharedHttpx:  # noqa: N802 - mirrors httpx.AsyncClient()
        return self

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        return None


_shared_httpx = _SharedHttpx()
_async_client_module.httpx = _shared_httpx  # type: ignore[attr-defined]


class BatchFetchingWorker(AsyncExternalTaskWorker):
    """The client's worker, fetching up to `batch` tasks per request instead of one: under load
    the fetch round trip, not the work, limited throughput (tasks queued for seconds)."""

    def __init__(self, *args: Any, batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch = batch

    async def fetch_and_execute(self, topic_name: str, action: Any, process_variables: Any = None,
                                variables: Any = None) -> bool:
        c = self.client
        body = {
            "workerId": str(self.worker_id),
            "maxTasks": self.batch,
            "topics": c._get_topics([topic_name], process_variables, variables),  # noqa: SLF001
            "asyncResponseTimeout": c.config["asyncResponseTimeout"],
            "usePriority": c.config["usePriority"],
        }
        timeout = (c.config["asyncResponseTimeout"] + c.config["timeoutDeltaMillis"]) / 1000
        async with _shared_httpx as http:
            response = await http.post(c.get_fetch_and_lock_url(), headers=c._get_headers(), json=body,  # noqa: SLF001
                                       timeout=timeout)
        raise_exception_if_not_ok(response)
        tasks = [ExternalTask(context) for context in response.json()]
        for n, task in enumerate(tasks):
            if n:  # the polling loop took one permit for the fetch; each further task takes its own
                await self.semaphore.acquire()
            running = asyncio.create_task(self._execute_task(task, action))
            self.running_tasks.add(running)
            running.add_done_callback(lambda _: self.semaphore.release())
            running.add_done_callback(self.running_tasks.discard)
        return bool(tasks)


class _QuietCamundaLogs(logging.Filter):
    """The client logs every poll at INFO on the root logger; keep warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.endswith("log_utils.py")


def install_task_worker(app: faust.App, service: str, ctx_hook: Callable[[TaskContext], None] | None = None) -> None:
    """Run this service's external-task handlers inside its Faust worker."""
    handlers = TASKS_BY_SERVICE[service]
    if not handlers:
        return
    settings: Settings = app.edpo_settings  # type: ignore[attr-defined]

    @app.task
    async def external_tasks() -> None:
        """Poll Camunda for this service's external tasks and run them concurrently."""
        for h in logging.getLogger().handlers:
            h.addFilter(_QuietCamundaLogs())
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per poll otherwise
        commands = CommandClient(
            settings.kafka_bootstrap,
            [warehouse_events_topic, delivery_events_topic],
            timeout=settings.command_timeout,
            attempts=settings.command_attempts,
        )
        await retrying("command client start", commands.start)
        ctx = TaskContext(settings=settings, commands=commands, source=f"{service}-worker")
        if ctx_hook:
            ctx_hook(ctx)
        # The lock must outlast every resend of a command (timeout doubles each time).
        workers = [
            BatchFetchingWorker(
                worker_id=f"{service}-{os.environ.get('EDPO_INSTANCE', '1')}-{os.getpid()}-{n}",
                base_url=settings.camunda_url,
                config={
                    "maxConcurrentTasks": 64,
                    "lockDuration": int(settings.task_lock * 1000),
                    "asyncResponseTimeout": 5000,
                    "retries": 3,
                    "retryTimeout": 5000,
                    "sleepSeconds": 0.1,  # after an empty long poll; keeps latency low
                    "deserializeValues": False,  # Json variables arrive as JSON text
                },
                batch=settings.task_batch,
            )
            for n in range(settings.task_pollers)
        ]
        try:
            await asyncio.gather(
                *(w.subscribe({topic: _bind(h, ctx) for topic, h in handlers.items()}) for w in workers)
            )
        finally:
            for w in workers:
                await w.stop()
            await commands.stop()
