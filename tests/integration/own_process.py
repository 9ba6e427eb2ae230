"""A copy of the order_fulfilment model with a process key and task topics of one test run.

Like isolated_process.py, but unique per run and deleted afterwards (with its instances and
history): the Reconciler acts on every running instance of its process key, so tests of it
must not share a key with the running order worker, other test modules or another run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine, variables
from tests.integration.isolated_process import QUIET_DEADLINES, model_copy


@dataclass
class OwnProcess:
    engine: Engine
    key: str
    topic_prefix: str
    deployment: str
    bpmn: Path

    async def deploy(self) -> None:
        await self.engine.deploy(self.deployment, self.bpmn)

    async def start_variables(self, order_id: str) -> dict[str, Any]:
        return {"order_id": order_id, "delivery_address": "Main Street 1", "lines": [{"sku": "A", "quantity": 1}],
                "max_delivery_attempts": 3, "delivery_retry_backoff": "PT0S", "delivery_attempt": 0,
                **QUIET_DEADLINES}

    async def complete(self, topic: str, order_id: str, values: dict[str, Any] | None = None,
                       timeout: float = 30) -> dict[str, Any]:
        """Play the worker of `topic` for this order: lock its one task (polling) and complete it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        worker = f"test-{uuid.uuid4().hex[:8]}"
        while loop.time() < deadline:
            tasks = await self.engine.request("POST", "/external-task/fetchAndLock", json={
                "workerId": worker, "maxTasks": 2, "asyncResponseTimeout": 500,
                "topics": [{"topicName": self.topic_prefix + topic, "lockDuration": 10000, "businessKey": order_id}]})
            if tasks:
                assert len(tasks) == 1, f"expected one {topic} task for {order_id}, got {len(tasks)}"
                await self.engine.request("POST", f"/external-task/{tasks[0]['id']}/complete",
                                          json={"workerId": worker, "variables": variables(values or {})})
                return tasks[0]
        raise AssertionError(f"no {topic} task for {order_id} within {timeout}s")


@asynccontextmanager
async def own_process(engine: Engine, name: str) -> AsyncIterator[OwnProcess]:
    run = uuid.uuid4().hex[:8]
    key = f"{ORDER_FULFILMENT}_{name}_{run}"
    topic_prefix = f"{name}-{run}-"
    path = model_copy(key, topic_prefix)
    process = OwnProcess(engine, key, topic_prefix, f"edpo-test-{name}-{run}", path)
    await process.deploy()
    try:
        yield process
    finally:
        for d in await engine.request("GET", "/deployment", params={"name": process.deployment}):
            await engine.request("DELETE", f"/deployment/{d['id']}", params={"cascade": "true"})
        path.unlink(missing_ok=True)
