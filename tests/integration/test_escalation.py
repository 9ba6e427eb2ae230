"""Deadlines and people in the loop of `order_fulfilment` (issue 8), against the real engine.

Timers run in seconds (stock_timeout, delivery_timeout, order_deadline are start variables);
the ones a test does not exercise are an hour long so they stay out of its way. The test plays
every external-task worker (own_process.py: a private copy of the model, its own key and task
topics), the Kafka bridge (message correlation) and the dispatcher in Tasklist (task REST API).
Timers fire through the job executor, so every expectation is polled for with a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from edpo.camunda.engine import Engine, EngineError, variable, variables
from tests.integration.own_process import OwnProcess, own_process

TIMEOUT = 20.0
NEVER = "PT1H"
DISPATCHERS = "dispatchers"


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = TIMEOUT) -> Any:
    """The first truthy result of `check`, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if value := await check():
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.1)


class Order:
    """One process instance of the test's own model; the test is its workers and its dispatcher."""

    def __init__(self, process: OwnProcess) -> None:
        self.process = process
        self.engine: Engine = process.engine
        self.order_id = uuid.uuid4().hex
        self.worker = f"test-{uuid.uuid4().hex[:8]}"
        self.instance_id = ""

    async def start(self, stock_timeout: str = NEVER, delivery_timeout: str = NEVER,
                    order_deadline: str = NEVER) -> Order:
        values = await self.process.start_variables(self.order_id)
        values |= {"stock_timeout": stock_timeout, "delivery_timeout": delivery_timeout,
                   "order_deadline": order_deadline,
                   "order_summary": f"1 x A to Main Street 1 (order {self.order_id})",
                   "order_history": "accepted", "missing_summary": ""}
        started = await self.engine.start_process(self.process.key, self.order_id, values)
        self.instance_id = started["id"]
        return self

    # -- the workers --

    async def complete(self, topic: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.process.complete(topic, self.order_id, values, timeout=TIMEOUT)

    async def lock(self, topic: str) -> dict[str, Any]:
        """Lock this order's one task of `topic`, with its local variables (input mappings)."""
        async def fetch() -> dict[str, Any] | None:
            tasks = await self.engine.request("POST", "/external-task/fetchAndLock", json={
                "workerId": self.worker, "maxTasks": 2, "asyncResponseTimeout": 500,
                "topics": [{"topicName": self.process.topic_prefix + topic, "lockDuration": 30000,
                            "businessKey": self.order_id, "localVariables": True}]})
            assert len(tasks) <= 1, f"expected one {topic} task, got {len(tasks)}"
            return tasks[0] if tasks else None
        return await _until(fetch, f"{topic} task")

    async def finish(self, task: dict[str, Any], values: dict[str, Any] | None = None) -> None:
        await self.engine.request("POST", f"/external-task/{task['id']}/complete",
                                  json={"workerId": self.worker, "variables": variables(values or {})})

    async def bpmn_error(self, task: dict[str, Any], code: str) -> None:
        await self.engine.request("POST", f"/external-task/{task['id']}/bpmnError",
                                  json={"workerId": self.worker, "errorCode": code})

    async def withdraw(self, scope: str) -> dict[str, Any]:
        """The courier worker's withdraw-delivery task, checked for its scope (attempt or order)."""
        task = await self.lock("withdraw-delivery")
        assert task["variables"]["withdraw_scope"]["value"] == scope, task["variables"]
        return task

    # -- the bridge --

    async def correlate(self, message: str, values: dict[str, Any] | None = None, **keys: Any) -> None:
        """Correlate, retrying while the instance has not reached the catch event yet."""
        async def attempt() -> bool:
            try:
                await self.engine.correlate(message, self.order_id, values, keys or None)
            except EngineError as e:
                if not e.is_no_match:
                    raise
                return False
            return True
        await _until(attempt, f"{message} correlation for {self.order_id}")

    async def reserve_partially(self) -> None:
        """Reserve what there is; the rest is missing, replenishment is requested."""
        await self.complete("reserve-stock")
        await self.correlate("StockPartiallyReserved", {"missing": [{"sku": "A", "quantity": 1}],
                                                        "missing_summary": "1 x A"})
        await self.complete("request-replenishment")

    async def send_out(self) -> None:
        """Reserve, pack and start the first delivery attempt: the order waits for the courier."""
        await self.complete("reserve-stock")
        await self.correlate("StockReserved")
        await self.complete("pack-goods")
        await self.complete("start-delivery", {"delivery_attempt": 1})

    async def set(self, name: str, value: Any) -> None:
        await self.engine.request("PUT", f"/process-instance/{self.instance_id}/variables/{name}", json=variable(value))

    # -- the dispatcher (Tasklist) --

    async def open_tasks(self) -> list[dict[str, Any]]:
        return await self.engine.request("GET", "/task", params={"processInstanceId": self.instance_id})

    async def user_task(self, key: str, other_than: str = "") -> dict[str, Any]:
        """The open user task `key` (a new one when `other_than` names the previous one)."""
        async def find() -> dict[str, Any] | None:
            found = [t for t in await self.open_tasks() if t["taskDefinitionKey"] == key and t["id"] != other_than]
            assert len(found) <= 1, found
            return found[0] if found else None
        return await _until(find, f"open {key} task")

    async def candidate_groups(self, task: dict[str, Any]) -> list[str]:
        links = await self.engine.request("GET", f"/task/{task['id']}/identity-links")
        return [link["groupId"] for link in links if link["type"] == "candidate"]

    async def form(self, task: dict[str, Any]) -> dict[str, Any]:
        return await self.engine.request("GET", f"/task/{task['id']}/form-variables")

    async def rendered_form(self, task: dict[str, Any]) -> str:
        return await self.engine.request("GET", f"/task/{task['id']}/rendered-form")

    async def decide(self, task: dict[str, Any], decision: str) -> None:
        await self.engine.request("POST", f"/task/{task['id']}/complete",
                                  json={"variables": {"decision": {"value": decision, "type": "String"}}})

    async def no_open_task(self) -> None:
        async def none_open() -> bool:
            return not await self.open_tasks()
        await _until(none_open, f"withdrawal of the open tasks of {self.order_id}")

    # -- the record --

    async def ended_at(self) -> list[str]:
        """Wait for the instance to complete; the end events it reached."""
        async def ended() -> dict[str, Any] | None:
            h = await self.engine.request("GET", f"/history/process-instance/{self.instance_id}")
            return h if h["state"] != "ACTIVE" else None
        history = await _until(ended, f"end of {self.order_id}")
        assert history["state"] == "COMPLETED", history
        return [a["activityId"] for a in await self.activities()
                if a["activityType"].endswith("EndEvent") and not a["canceled"]]

    async def activities(self) -> list[dict[str, Any]]:
        return await self.engine.activity_history(self.instance_id)

    async def ran(self, activity_id: str) -> int:
        return sum(1 for a in await self.activities() if a["activityId"] == activity_id)

    async def path(self) -> list[str]:
        return [a["activityId"] for a in await self.activities()]

    async def cancel_reason(self) -> str:
        found = await self.engine.request("GET", "/history/variable-instance", params={
            "processInstanceId": self.instance_id, "variableName": "cancel_reason", "deserializeValues": "false"})
        assert len(found) == 1, found
        return found[0]["value"]


@pytest.fixture
async def process(engine: Engine) -> AsyncIterator[OwnProcess]:
    async with own_process(engine, "escalation") as p:
        yield p


@pytest.fixture
def order(process: OwnProcess) -> Order:
    return Order(process)


# -- 1, 2: stock that does not come --

async def test_late_stock_asks_a_dispatcher_and_waiting_asks_again_until_the_stock_withdraws_the_task(
        order: Order) -> None:
    await order.start(stock_timeout="PT1S")
    await order.reserve_partially()

    first = await order.user_task("decide-delayed-order")
    assert first["name"] == "Decide on delayed order"
    assert await order.candidate_groups(first) == [DISPATCHERS]
    form = await order.form(first)
    assert {"decision", "order_summary", "missing_summary", "order_history"} <= form.keys(), form
    assert order.order_id in form["order_summary"]["value"]
    assert form["missing_summary"]["value"] == "1 x A"
    await order.decide(first, "wait")

    second = await order.user_task("decide-delayed-order", other_than=first["id"])
    await order.correlate("StockReserved")
    await order.no_open_task()

    await order.complete("pack-goods")
    await order.complete("start-delivery", {"delivery_attempt": 1})
    await order.correlate("DeliveryCompleted", delivery_attempt=1)

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Timer_StockOverdue") == 2
    assert await order.ran("decide-delayed-order") == 2
    assert await order.ran("Boundary_StockArrived") == 1
    assert await order.ran("Catch_WaitForStock") == 0
    assert await order.ran("Task_ReleaseStock") == 0
    assert second["id"] != first["id"]


async def test_dispatcher_cancelling_late_stock_returns_the_reserved_goods_and_cancels(order: Order) -> None:
    await order.start(stock_timeout="PT1S")
    await order.reserve_partially()

    await order.decide(await order.user_task("decide-delayed-order"), "cancel")
    await order.complete("release-stock")  # the compensation of "Reserve stock"
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_OrderCancelled"]
    assert "dispatcher" in await order.cancel_reason()
    path = await order.path()
    assert path.index("Task_ReleaseStock") < path.index("Task_CancelOrder"), "compensated before cancelling"
    assert "Task_PackGoods" not in path


# -- 3 to 7: a courier without news --

async def test_overdue_delivery_retried_by_a_dispatcher_calls_the_courier_back_and_delivers_again(
        order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    task = await order.user_task("resolve-overdue-delivery")
    assert task["name"] == "Resolve overdue delivery"
    assert await order.candidate_groups(task) == [DISPATCHERS]
    form = await order.form(task)
    assert {"decision", "order_summary", "delivery_attempt", "order_history"} <= form.keys(), form
    assert form["delivery_attempt"]["value"] == 1
    html = await order.rendered_form(task)
    for choice in ("wait", "retry", "cancel"):
        assert f'value="{choice}"' in html, f"no {choice} in the decision field"

    await order.set("delivery_timeout", NEVER)  # the second attempt is not to go overdue
    await order.decide(task, "retry")
    await order.finish(await order.withdraw("attempt"))
    await order.complete("start-delivery", {"delivery_attempt": 2})
    await order.correlate("DeliveryCompleted", delivery_attempt=2)

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Task_WithdrawForRetry") == 1
    assert await order.ran("Task_StartDelivery") == 2
    assert await order.ran("Catch_DeliveryCompleted") == 1
    assert await order.ran("Task_ReleaseStock") == 0


async def test_overdue_delivery_cancelled_by_a_dispatcher_calls_the_courier_back_and_returns_the_goods(
        order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    await order.decide(await order.user_task("resolve-overdue-delivery"), "cancel")
    await order.finish(await order.withdraw("order"))
    await order.complete("release-stock")
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_OrderCancelled"]
    reason = await order.cancel_reason()
    assert "dispatcher" in reason and "overdue" in reason, reason
    path = await order.path()
    assert path.index("Task_WithdrawForCancel") < path.index("Task_ReleaseStock") < path.index("Task_CancelOrder")


async def test_overdue_delivery_cancelled_but_found_delivered_ends_delivered(order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    await order.decide(await order.user_task("resolve-overdue-delivery"), "cancel")
    await order.bpmn_error(await order.withdraw("order"), "ALREADY_DELIVERED")

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Boundary_CancelFoundDelivered") == 1
    assert await order.ran("Task_ReleaseStock") == 0
    assert await order.ran("Task_CancelOrder") == 0


async def test_waiting_on_an_overdue_delivery_asks_again_after_the_timeout(order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    first = await order.user_task("resolve-overdue-delivery")
    await order.decide(first, "wait")
    second = await order.user_task("resolve-overdue-delivery", other_than=first["id"])
    assert await order.candidate_groups(second) == [DISPATCHERS]

    await order.correlate("DeliveryCompleted", delivery_attempt=1)
    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Timer_DeliveryOverdue") == 2
    assert await order.ran("Task_StartDelivery") == 1
    assert await order.ran("Task_WithdrawForRetry") == 0


async def test_courier_delivering_late_withdraws_the_overdue_task(order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    await order.user_task("resolve-overdue-delivery")
    await order.correlate("DeliveryCompleted", delivery_attempt=1)
    await order.no_open_task()

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Boundary_OverdueDelivered") == 1


async def test_courier_failing_late_withdraws_the_overdue_task_and_retries(order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    await order.user_task("resolve-overdue-delivery")
    await order.set("delivery_timeout", NEVER)  # the retry is not to go overdue
    await order.correlate("DeliveryFailed", delivery_attempt=1)
    await order.no_open_task()

    await order.complete("start-delivery", {"delivery_attempt": 2})  # after the backoff
    await order.correlate("DeliveryCompleted", delivery_attempt=2)

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Boundary_OverdueFailed") == 1
    assert await order.ran("Timer_RetryBackoff") == 1
    assert await order.ran("Task_StartDelivery") == 2
    assert await order.ran("Task_WithdrawForRetry") == 0


async def test_retry_that_finds_the_order_delivered_ends_delivered(order: Order) -> None:
    await order.start(delivery_timeout="PT1S")
    await order.send_out()

    await order.decide(await order.user_task("resolve-overdue-delivery"), "retry")
    await order.bpmn_error(await order.withdraw("attempt"), "ALREADY_DELIVERED")

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.ran("Boundary_RetryFoundDelivered") == 1
    assert await order.ran("Task_StartDelivery") == 1


# -- 8: the order deadline --

async def test_late_order_gets_an_investigation_that_goes_away_when_the_order_ends(order: Order) -> None:
    await order.start(order_deadline="PT1S")
    await order.complete("reserve-stock")  # the instance waits for the reservation result

    task = await order.user_task("investigate-order")
    assert task["name"] == "Investigate order"
    assert await order.candidate_groups(task) == [DISPATCHERS]
    assert {"order_summary", "order_history", "investigation_note"} <= (await order.form(task)).keys()

    # the order goes on meanwhile
    await order.correlate("StockReserved")
    await order.complete("pack-goods")
    await order.complete("start-delivery", {"delivery_attempt": 1})
    assert [t["taskDefinitionKey"] for t in await order.open_tasks()] == ["investigate-order"]
    await order.correlate("DeliveryCompleted", delivery_attempt=1)

    assert await order.ended_at() == ["EndEvent_OrderDelivered"]
    assert await order.open_tasks() == []
    investigations = [a for a in await order.activities() if a["activityId"] == "investigate-order"]
    assert len(investigations) == 1 and investigations[0]["canceled"], investigations
    assert await order.ran("EndEvent_Investigated") == 0


# -- 9: the customer cancels --

async def test_customer_cancelling_at_packing_withdraws_releases_and_cancels(order: Order) -> None:
    await order.start()
    await order.complete("reserve-stock")
    await order.correlate("StockReserved")
    await _until(lambda: order.engine.request("GET", "/external-task", params={
        "processInstanceId": order.instance_id, "activityId": "Task_PackGoods"}), "pack-goods task")

    await order.correlate("CancelRequested", {"cancel_reason": "the customer cancelled it"})
    await order.finish(await order.withdraw("order"))
    await order.complete("release-stock")
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_CancelledOnRequest"]
    assert await order.cancel_reason() == "the customer cancelled it"
    path = await order.path()
    assert path.index("Task_WithdrawOnCancel") < path.index("Task_ReleaseOnCancel") < path.index("Task_CancelOnRequest")
    packing = [a for a in await order.activities() if a["activityId"] == "Task_PackGoods"]
    assert len(packing) == 1 and packing[0]["canceled"], packing
    assert await order.ran("Task_StartDelivery") == 0


async def test_customer_cancelling_while_the_courier_is_out_withdraws_releases_and_cancels(order: Order) -> None:
    await order.start()
    await order.send_out()

    await order.correlate("CancelRequested", {"cancel_reason": "the customer cancelled it"})
    await order.finish(await order.withdraw("order"))
    await order.complete("release-stock")
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_CancelledOnRequest"]
    assert await order.ran("Task_ReleaseOnCancel") == 1
    assert await order.ran("Task_ReleaseStock") == 0, "the reservation is released once, not compensated too"


async def test_customer_cancelling_an_order_already_delivered_ends_delivered(order: Order) -> None:
    await order.start()
    await order.send_out()

    await order.correlate("CancelRequested", {"cancel_reason": "the customer cancelled it"})
    await order.bpmn_error(await order.withdraw("order"), "ALREADY_DELIVERED")

    assert await order.ended_at() == ["EndEvent_DeliveredBeforeCancel"]
    assert await order.ran("Task_ReleaseOnCancel") == 0
    assert await order.ran("Task_CancelOnRequest") == 0


async def test_customer_cancelling_a_late_order_withdraws_its_investigation(order: Order) -> None:
    await order.start(order_deadline="PT1S")
    await order.complete("reserve-stock")
    await order.user_task("investigate-order")

    await order.correlate("CancelRequested", {"cancel_reason": "the customer cancelled it"})
    await order.no_open_task()
    await order.finish(await order.withdraw("order"))
    await order.complete("release-stock")
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_CancelledOnRequest"]


async def test_order_deadline_passing_during_the_customer_cancellation_does_not_hold_the_order_open(
        order: Order) -> None:
    await order.start(order_deadline="PT2S")
    await order.complete("reserve-stock")
    await order.correlate("CancelRequested", {"cancel_reason": "the customer cancelled it"})
    withdrawal = await order.withdraw("order")

    async def deadline_gone() -> bool:  # removed by the interruption, or fired
        return not await order.engine.request("GET", "/job", params={
            "processInstanceId": order.instance_id, "activityId": "StartEvent_OrderDeadline"})
    await _until(deadline_gone, "order deadline timer to go")
    await order.finish(withdrawal)  # the courier answers after the order deadline
    await order.complete("release-stock")
    await order.complete("cancel-order")

    assert await order.ended_at() == ["EndEvent_CancelledOnRequest"]
    assert await order.ran("investigate-order") == 0
