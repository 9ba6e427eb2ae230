"""Runs a service's external-task handlers with camunda-external-task-client-python3.

Every adaptation of the client library lives here, each for a measured reason:

- `EngineTaskClient`: the library opens a new httpx client (and builds a new TLS context) for
  every fetch and every completion, which was most of a worker's CPU under load. This client
  sends the same requests through the project's one aiohttp session (`Engine`) instead, and
  fetches up to `EDPO_TASK_BATCH` tasks per request instead of one: under load the fetch round
  trip, not the work, limited throughput (tasks queued for seconds).
- `extend_lock` and `keep_locked`: locks are short (`EDPO_TASK_LOCK`), so the tasks of a worker
  that died are handed out again within seconds; a handler that is still waiting (for a
  command's acknowledgment, say) keeps its task by renewing the lock. The library has no call
  for that.
- `BatchWorker`: the library's worker runs the one task a fetch returns; this one runs every
  task of a batch, each under its own permit of the worker's concurrency limit.
- `_QuietCamundaLogs`: the library logs every poll at INFO on the root logger.
- `OutageLog` (edpo/logs.py): while the engine is away (restarting, say) the library logs an error with its
  traceback for every topic every 0.1 s (10 MB a minute per worker); a worker now says once that
  the engine is away, once a minute that it still is, and once that it is back, and polls slower.

Handlers stay plain: a service passes `{topic: handler}`, each handler takes the library's
`ExternalTask` and returns its `TaskResult`. A handler that raises becomes a failure with
retries, then an incident in Cockpit; business outcomes are BPMN errors the handler returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import mode

from camunda.client.async_external_task_client import AsyncExternalTaskClient
from camunda.external_task.async_external_task_executor import AsyncExternalTaskExecutor
from camunda.external_task.async_external_task_worker import AsyncExternalTaskWorker
from camunda.external_task.external_task import ExternalTask, TaskResult
from camunda.variables.variables import Variables
from edpo.camunda.engine import Engine, EngineError, engine_away
from edpo.logs import OutageLog, log_context
from edpo.models import Line

logger = logging.getLogger(__name__)

TaskHandler = Callable[[ExternalTask], Awaitable[TaskResult]]
# Told of every task a handler finished: (BPMN topic, outcome, seconds); outcome is completed,
# bpmn_error or failed (the metrics of edpo/runtime/metrics.py).
TaskObserver = Callable[[str, str, float], None]
# Tries before a task becomes an incident, and the pause between them (EDPO_TASK_RETRIES,
# EDPO_TASK_RETRY_BACKOFF).
TASK_RETRIES = 3
TASK_RETRY_TIMEOUT_MS = 5000


def task_lines(task: ExternalTask, name: str) -> list[Line]:
    """A Json list variable of order lines ({"sku", "quantity"})."""
    raw = task.get_variable(name)
    return [Line(sku=line["sku"], quantity=int(line["quantity"])) for line in json.loads(raw or "[]")]


def task_trace(task: ExternalTask) -> str:
    return task.get_variable("trace_id") or ""


def task_outcome(result: TaskResult) -> str:
    """completed, bpmn_error or failed: what a handler's result tells the engine."""
    if result.is_bpmn_error():
        return "bpmn_error"
    if result.is_failure():
        return "failed"
    return "completed"


class EngineTaskClient(AsyncExternalTaskClient):
    """The library's client, speaking through the shared aiohttp `Engine` and fetching in batches."""

    def __init__(self, worker_id: str, engine: Engine, config: dict[str, Any], batch: int) -> None:
        super().__init__(worker_id, engine.base_url, config)
        self.engine = engine
        self.batch = batch

    async def fetch_and_lock(self, topic_names: Any, process_variables: Any = None, variables: Any = None) -> Any:
        topics = [topic_names] if isinstance(topic_names, str) else list(topic_names)
        return await self.engine.request("POST", "/external-task/fetchAndLock", json={
            "workerId": str(self.worker_id),
            "maxTasks": self.batch,
            "asyncResponseTimeout": self.config["asyncResponseTimeout"],
            "usePriority": self.config["usePriority"],
            "topics": [{
                "topicName": t,
                "lockDuration": self.config["lockDuration"],
                "deserializeValues": self.config["deserializeValues"],
                **({"processVariables": process_variables} if process_variables else {}),
                **({"variables": variables} if variables else {}),
            } for t in topics],
        })

    async def complete(self, task_id: str, global_variables: Any, local_variables: Any = None) -> bool:
        await self.engine.request("POST", f"/external-task/{task_id}/complete", json={
            "workerId": self.worker_id,
            "variables": Variables.format(global_variables),
            "localVariables": Variables.format(local_variables),
        })
        return True

    async def failure(self, task_id: str, error_message: str, error_details: Any, retries: int,
                      retry_timeout: int) -> bool:
        body = {"workerId": self.worker_id, "errorMessage": error_message, "retries": retries,
                "retryTimeout": retry_timeout}
        if error_details:
            body["errorDetails"] = error_details
        await self.engine.request("POST", f"/external-task/{task_id}/failure", json=body)
        return True

    async def bpmn_failure(self, task_id: str, error_code: str, error_message: str, variables: Any = None) -> bool:
        await self.engine.request("POST", f"/external-task/{task_id}/bpmnError", json={
            "workerId": self.worker_id,
            "errorCode": error_code,
            "errorMessage": error_message,
            "variables": Variables.format(variables),
        })
        return True

    async def extend_lock(self, task_id: str, duration_ms: int) -> bool:
        """Keep the task locked for duration_ms more (the library has no call for this)."""
        await self.engine.request("POST", f"/external-task/{task_id}/extendLock",
                                  json={"workerId": self.worker_id, "newDuration": duration_ms})
        return True


class BatchWorker(AsyncExternalTaskWorker):
    """The library's worker, running every task of a batch fetch through the library's executor."""

    def __init__(self, worker_id: str, client: EngineTaskClient, config: dict[str, Any],
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 ) -> None:
        super().__init__(worker_id, client.engine.base_url, config)
        self.client = client
        self.executor = AsyncExternalTaskExecutor(worker_id, client)
        self.outage = OutageLog(logger, f"{worker_id}: fetching tasks from the engine", clock)
        self._sleep = sleep

    async def fetch_and_execute(self, topic_name: str, action: Any, process_variables: Any = None,
                                variables: Any = None) -> bool:
        try:
            contexts = await self.client.fetch_and_lock([topic_name], process_variables, variables)
        except Exception as e:
            if not engine_away(e):
                raise  # the library logs it with its traceback and polls again
            # The library would log a traceback per topic every 0.1 s while the engine is away
            # (10 MB a minute); one line when it goes, one when it is back, and slower polls meanwhile.
            await self._sleep(outage_pause(self.outage.failed(e)))
            return False
        self.outage.passed()
        for n, context in enumerate(contexts):
            if n:  # the polling loop took one permit for the fetch; each further task takes its own
                await self.semaphore.acquire()
            running = asyncio.create_task(self._run(ExternalTask(context), action))
            self.running_tasks.add(running)
            running.add_done_callback(lambda _: self.semaphore.release())
            running.add_done_callback(self.running_tasks.discard)
        return bool(contexts)

    async def _run(self, task: ExternalTask, action: Any) -> None:
        # Whatever is logged while the task runs and is reported names its order and trace.
        with log_context(order_id=task.get_business_key(), trace_id=task_trace(task)):
            try:
                await self.executor.execute_task(task, action)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the engine did not take the result: the lock expires, the task returns
                # A completion racing a lock renewal or another worker (the engine answers 500, the task
                # comes back and runs again), or the task gone because a cancellation interrupted it:
                # expected, not a warning.
                level = logging.INFO if _expected_refusal(e) else logging.WARNING
                logger.log(level, "could not report %s of %s to the engine: %s", task.get_topic_name(),
                           task.get_business_key(), e)


def outage_pause(failures: int) -> float:
    """Seconds before the next fetch while the engine is away: 0.1 doubling up to 2."""
    return min(0.1 * 2 ** min(failures - 1, 5), 2.0)


def _expected_refusal(e: Exception) -> bool:
    """The engine refused a result because another transaction changed the task first (ENGINE-03005),
    or because the task or its execution no longer exists."""
    if not isinstance(e, EngineError):
        return False
    text = str(e.body)
    return ("OptimisticLockingException" in text or (e.status == 404 and "does not exist" in text)
            or "Cannot find execution with id" in text)


async def keep_locked(client: EngineTaskClient, task_id: str, lock_ms: int) -> None:
    """Renew the task's lock every third of its duration until cancelled."""
    while True:
        await asyncio.sleep(lock_ms / 3000)
        try:
            await client.extend_lock(task_id, lock_ms)
        except Exception as e:  # noqa: BLE001 - the next renewal tries again
            # The engine away (its poller says so once) or the task gone: nothing to warn about per task.
            level = logging.DEBUG if engine_away(e) or _expected_refusal(e) else logging.WARNING
            logger.log(level, "could not extend the lock of %s: %s", task_id, e)


class _QuietCamundaLogs(logging.Filter):
    """The client logs every poll at INFO on the root logger; keep warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.endswith("log_utils.py")


class TaskWorker(mode.Service):
    """Polls the engine for one service's external-task topics and runs their handlers concurrently."""

    def __init__(self, engine: Engine, worker_id: str, handlers: dict[str, TaskHandler], *, lock_seconds: float,
                 batch: int, pollers: int, concurrency: int = 256, retries: int = TASK_RETRIES, retry_timeout_ms: int = TASK_RETRY_TIMEOUT_MS,
                 failpoint: Callable[[str], None] = lambda point: None,
                 observe: TaskObserver = lambda topic, outcome, seconds: None) -> None:
        super().__init__()
        self.failpoint = failpoint
        self.observe = observe
        self.engine = engine
        self.worker_id = worker_id
        self.handlers = handlers
        self.lock_ms = int(lock_seconds * 1000)
        self.batch = batch
        self.pollers = pollers
        self.concurrency = concurrency
        self.retries = retries
        self.retry_timeout_ms = retry_timeout_ms
        self._workers: list[BatchWorker] = []

    @mode.Service.task
    async def _poll(self) -> None:
        for h in logging.getLogger().handlers:
            h.addFilter(_QuietCamundaLogs())
        config = {
            # Tasks mostly wait for a command's acknowledgment: with 64 at once (20 per fetch), reserve-stock
            # tasks queued for 15 s (avg) in a burst of 600; with 256 (50 per fetch), 1.3 s (docs/benchmarks.md).
            "maxConcurrentTasks": self.concurrency,
            "lockDuration": self.lock_ms,
            "asyncResponseTimeout": 5000,
            "sleepSeconds": 0.1,  # after an empty long poll; keeps latency low
            "deserializeValues": False,  # Json variables arrive as JSON text
        }
        for n in range(self.pollers):
            worker_id = f"{self.worker_id}-{n}"
            client = EngineTaskClient(worker_id, self.engine, config, self.batch)
            self._workers.append(BatchWorker(worker_id, client, config))
        await asyncio.gather(*(w.subscribe({topic: self._guarded(w.client, topic, handler)
                                            for topic, handler in self.handlers.items()})
                               for w in self._workers))

    async def on_stop(self) -> None:
        for w in self._workers:
            await w.stop()

    def _guarded(self, client: EngineTaskClient, topic: str, handler: TaskHandler) -> TaskHandler:
        async def run(task: ExternalTask) -> TaskResult:
            keeper = asyncio.create_task(keep_locked(client, task.get_task_id(), self.lock_ms))
            started = time.perf_counter()
            try:
                result = await handler(task)
                self.failpoint("before_complete")
                self.observe(topic, task_outcome(result), time.perf_counter() - started)
                return result
            except Exception as e:  # noqa: BLE001 - becomes a retry, then an incident
                logger.warning("task %s for %s failed: %s", task.get_topic_name(), task.get_business_key(), e)
                self.observe(topic, "failed", time.perf_counter() - started)
                # The message is what Cockpit lists with the incident; the details hold the trace.
                return task.failure(f"{type(e).__name__}: {e}"[:500], traceback.format_exc(),
                                    max_retries=self.retries - 1, retry_timeout=self.retry_timeout_ms)
            finally:
                keeper.cancel()

        return run
