"""The `order_fulfilment` BPMN against the real Camunda engine, driven purely through REST.

No Kafka and no workers: the test plays every external-task worker (fetchAndLock filtered by
its own business key, so other instances' tasks are never touched) and the Kafka bridge
(message correlation).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from edpo.camunda.engine import Engine, EngineError, variables
from edpo.config import Settings
from tests.integration.isolated_process import BPMN, DEPLOYMENT, KEY, QUIET_DEADLINES, TOPIC_PREFIX

TIMEOUT = 30.0

LINES = [{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-2", "quantity": 1}]


class Order:
    """One process instance and the worker that serves its external tasks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.business_key = f"test-order-{uuid.uuid4().hex[:12]}"
        self.worker_id = f"test-worker-{uuid.uuid4().hex[:12]}"
        self.instance_id = ""

    async def start(self) -> None:
        await self.engine.deploy(DEPLOYMENT, BPMN)
        started = await self.engine.start_process(
            KEY,
            self.business_key,
            {
                "order_id": self.business_key,
                "delivery_address": "Bahnhofstrasse 1, 8001 Zürich",
                "lines": LINES,
                "max_delivery_attempts": 3,
                "delivery_retry_backoff": "PT0S",
                **QUIET_DEADLINES,
            },
        )
        self.instance_id = started["id"]

    async def fetch(self, topic: str, fetch_vars: list[str] | None = None) -> dict[str, Any]:
        """Lock the single task of `topic` for this order, polling until it appears."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        spec: dict[str, Any] = {
            "topicName": TOPIC_PREFIX + topic,
            "lockDuration": 10000,
            "businessKey": self.business_key,
            "deserializeValues": False,
        }
        if fetch_vars is not None:
            spec["variables"] = fetch_vars
        while loop.time() < deadline:
            tasks = await self.engine.request(
                "POST",
                "/external-task/fetchAndLock",
                json={"workerId": self.worker_id, "maxTasks": 2, "asyncResponseTimeout": 500, "topics": [spec]},
            )
            if tasks:
                assert len(tasks) == 1, f"expected one {topic} task, got {len(tasks)}"
                assert tasks[0]["processInstanceId"] == self.instance_id
                return tasks[0]
        raise AssertionError(f"no {topic} task for {self.business_key} within {TIMEOUT}s")

    async def complete(self, topic: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
        task = await self.fetch(topic)
        await self.engine.request(
            "POST",
            f"/external-task/{task['id']}/complete",
            json={"workerId": self.worker_id, "variables": variables(values or {})},
        )
        return task

    async def reject_delivery(self, attempt: int) -> None:
        task = await self.fetch("start-delivery")
        await self.engine.request(
            "POST",
            f"/external-task/{task['id']}/bpmnError",
            json={
                "workerId": self.worker_id,
                "errorCode": "DELIVERY_REJECTED",
                "errorMessage": "no courier",
                "variables": {"delivery_attempt": {"value": attempt, "type": "Integer"}},
            },
        )

    async def correlate(self, message: str, values: dict[str, Any] | None = None, **keys: Any) -> None:
        """Correlate, retrying while the instance has not reached the catch event yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            try:
                await self.engine.correlate(message, self.business_key, values, keys or None)
                return
            except EngineError as e:
                if not e.is_no_match or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.1)

    async def wait_for_message(self, message: str) -> None:
        """Until the instance subscribes to `message`, so a failed correlation fails for the right reason."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while loop.time() < deadline:
            subscriptions = await self.engine.request(
                "GET", "/event-subscription",
                params={"processInstanceId": self.instance_id, "eventType": "message", "eventName": message},
            )
            if subscriptions:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.business_key} never waited for {message}")

    async def ended_at(self) -> list[str]:
        """Wait for the instance to finish; the end events it reached."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while loop.time() < deadline:
            history = await self.engine.history_instances(KEY, self.business_key)
            if history and history[0]["state"] != "ACTIVE":
                assert history[0]["state"] == "COMPLETED", history[0]
                return [a["activityId"] for a in await self.activities() if a["activityType"] in ("noneEndEvent", "terminateEndEvent")]
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.business_key} did not finish within {TIMEOUT}s")

    async def activities(self) -> list[dict[str, Any]]:
        return await self.engine.activity_history(self.instance_id)

    async def ran(self, activity_id: str) -> int:
        return sum(1 for a in await self.activities() if a["activityId"] == activity_id)

    async def deliver(self, attempt: int = 1) -> None:
        await self.complete("start-delivery", {"delivery_attempt": attempt})
        await self.correlate("DeliveryCompleted", delivery_attempt=attempt)


@pytest.fixture
async def engine(servers: Settings):
    async with Engine.from_settings(servers) as e:
        yield e


@pytest.fixture
async def order(engine: Engine) -> Order:
    o = Order(engine)
    await o.start()
    return o


async def test_in_stock_order_runs_reserve_pack_deliver_and_ends_delivered(order: Order) -> None:
    reserve = await order.fetch("reserve-stock", ["lines", "order_id"])
    assert json.loads(reserve["variables"]["lines"]["value"]) == LINES
    assert reserve["variables"]["order_id"]["value"] == order.business_key
    await order.engine.request(
        "POST", f"/external-task/{reserve['id']}/complete", json={"workerId": order.worker_id}
    )
    await order.correlate("StockReserved")
    await order.complete("pack-goods")
    await order.deliver(attempt=1)

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Task_ReleaseStock") == 0
    assert await order.ran("Task_CancelOrder") == 0
    assert await order.ran("Task_RequestReplenishment") == 0


async def test_partial_reservation_requests_replenishment_then_waits_for_stock(order: Order) -> None:
    missing = [{"sku": "SKU-2", "quantity": 1}]
    await order.complete("reserve-stock")
    await order.correlate("StockPartiallyReserved", {"missing": missing})

    task = await order.fetch("request-replenishment", ["missing"])
    assert task["variables"]["missing"]["type"] == "Json"
    assert json.loads(task["variables"]["missing"]["value"]) == missing
    await order.engine.request("POST", f"/external-task/{task['id']}/complete", json={"workerId": order.worker_id})

    await order.correlate("StockReserved")
    await order.complete("pack-goods")
    await order.deliver(attempt=1)

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Catch_WaitForStock") == 1
    assert await order.ran("Catch_StockReserved") == 0


async def test_failed_deliveries_are_retried_then_compensated_and_cancelled(order: Order) -> None:
    await order.complete("reserve-stock")
    await order.correlate("StockReserved")
    await order.complete("pack-goods")
    for attempt in (1, 2, 3):
        await order.complete("start-delivery", {"delivery_attempt": attempt})
        await order.correlate("DeliveryFailed", delivery_attempt=attempt)

    await order.complete("release-stock")  # the compensation of "Reserve stock"
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_OrderCancelled"]
    assert await order.ran("Task_StartDelivery") == 3
    assert await order.ran("Timer_RetryBackoff") == 2
    assert await order.ran("Task_ReleaseStock") == 1
    names = [a["activityId"] for a in await order.activities()]
    assert names.index("Task_ReleaseStock") < names.index("Task_CancelOrder"), "compensated before cancelling"


async def test_stale_delivery_outcome_for_an_old_attempt_does_not_correlate(order: Order) -> None:
    await order.complete("reserve-stock")
    await order.correlate("StockReserved")
    await order.complete("pack-goods")
    await order.complete("start-delivery", {"delivery_attempt": 1})
    await order.correlate("DeliveryFailed", delivery_attempt=1)
    await order.complete("start-delivery", {"delivery_attempt": 2})
    await order.wait_for_message("DeliveryFailed")

    with pytest.raises(EngineError) as stale:
        await order.engine.correlate("DeliveryFailed", order.business_key, correlation_keys={"delivery_attempt": 1})
    assert stale.value.is_no_match
    with pytest.raises(EngineError) as stale_completed:
        await order.engine.correlate("DeliveryCompleted", order.business_key, correlation_keys={"delivery_attempt": 1})
    assert stale_completed.value.is_no_match

    await order.correlate("DeliveryCompleted", delivery_attempt=2)
    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Task_StartDelivery") == 2


async def test_rejected_delivery_command_counts_as_a_failed_attempt(order: Order) -> None:
    await order.complete("reserve-stock")
    await order.correlate("StockReserved")
    await order.complete("pack-goods")
    await order.reject_delivery(attempt=1)

    await order.deliver(attempt=2)  # a new start-delivery task appeared after the backoff

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Boundary_DeliveryRejected") == 1
    assert await order.ran("Timer_RetryBackoff") == 1
    assert await order.ran("Task_StartDelivery") == 2
