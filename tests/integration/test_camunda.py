"""Camunda 7: deploy through REST, run a process whose external task a Python worker completes."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from camunda.external_task.async_external_task_worker import AsyncExternalTaskWorker
from camunda.external_task.external_task import ExternalTask, TaskResult

from edpo.camunda.engine import Engine
from edpo.config import Settings

BPMN = Path(__file__).parent / "bpmn" / "echo_test.bpmn"


async def test_external_task_worker_round_trips_a_json_variable(servers: Settings, tmp_path: Path) -> None:
    # A process key of its own, so the engine's persistent history cannot make this pass by accident.
    key = f"echo_test_{uuid.uuid4().hex[:8]}"
    bpmn = tmp_path / f"{key}.bpmn"
    topic = f"echo-payload-{key}"
    bpmn.write_text(BPMN.read_text().replace('id="echo_test"', f'id="{key}"').replace('"echo-payload"', f'"{topic}"'))
    async with Engine(servers.camunda_url) as engine:
        first = await engine.deploy(key, bpmn)
        again = await engine.deploy(key, bpmn)
        assert first["deployedProcessDefinitions"], "first deployment defines the process"
        assert not again.get("deployedProcessDefinitions"), "duplicate filtering deploys nothing new"

        business_key = f"echo-{uuid.uuid4().hex[:8]}"
        payload = {"order_id": business_key, "items": [{"sku": "A", "quantity": 2}]}
        started = await engine.start_process(key, business_key, {"payload": payload})

        seen: list[dict] = []

        async def handle(task: ExternalTask) -> TaskResult:
            raw = task.get_variable("payload")
            got = json.loads(raw)
            seen.append(got)
            reply = {"echo": got, "lines": len(got["items"])}
            return task.complete({"reply": {"value": json.dumps(reply), "type": "Json"}})

        worker = AsyncExternalTaskWorker(
            worker_id=f"test-{business_key}",
            base_url=servers.camunda_url,
            config={"asyncResponseTimeout": 1000, "lockDuration": 10000, "sleepSeconds": 0.2,
                    "deserializeValues": False},  # Json arrives as its JSON text
        )
        run = asyncio.create_task(worker.subscribe({topic: handle}))
        try:
            deadline = asyncio.get_running_loop().time() + 30
            history: list = []
            while asyncio.get_running_loop().time() < deadline:
                history = await engine.history_instances(key, business_key)
                if history and history[0]["state"] == "COMPLETED":
                    break
                await asyncio.sleep(0.2)
        finally:
            await worker.stop()
            run.cancel()

        assert seen == [payload]
        assert history and history[0]["id"] == started["id"]
        assert history[0]["state"] == "COMPLETED"
        ended = [a["activityId"] for a in await engine.activity_history(started["id"]) if a["activityType"] == "noneEndEvent"]
        assert ended == ["done"]
        variables = await engine.request(
            "GET", "/history/variable-instance",
            params={"processInstanceId": started["id"], "variableName": "reply", "deserializeValues": "false"},
        )
        assert variables[0]["type"] == "Json"
        assert json.loads(variables[0]["value"]) == {"echo": payload, "lines": 1}


async def test_a_waiting_handler_keeps_its_task_locked_past_the_lock_duration(servers: Settings, tmp_path: Path) -> None:
    """keep_locked renews a short lock, so no other worker gets the task while its handler waits."""
    from edpo.camunda.worker import EngineTaskClient, keep_locked

    key = f"echo_test_{uuid.uuid4().hex[:8]}"
    topic = f"echo-payload-{key}"
    bpmn = tmp_path / f"{key}.bpmn"
    bpmn.write_text(BPMN.read_text().replace('id="echo_test"', f'id="{key}"').replace('"echo-payload"', f'"{topic}"'))
    async with Engine(servers.camunda_url) as engine:
        await engine.deploy(key, bpmn)
        await engine.start_process(key, "lock-test", {"payload": {"n": 1}})
        fetch = {"maxTasks": 1, "topics": [{"topicName": topic, "lockDuration": 1000}]}
        [locked] = await engine.request("POST", "/external-task/fetchAndLock", json={"workerId": "holder", **fetch})
        client = EngineTaskClient("holder", engine, {}, batch=1)
        keeper = asyncio.create_task(keep_locked(client, locked["id"], 1000))
        try:
            for _ in range(6):  # three lock durations, checked twice each
                await asyncio.sleep(0.5)
                stolen = await engine.request("POST", "/external-task/fetchAndLock", json={"workerId": "thief", **fetch})
                assert stolen == [], "the task was handed to another worker while its handler waited"
        finally:
            keeper.cancel()
        await asyncio.sleep(1.5)  # no renewal any more: the lock runs out
        [taken] = await engine.request("POST", "/external-task/fetchAndLock", json={"workerId": "next", **fetch})
        assert taken["id"] == locked["id"]
        await engine.request("POST", f"/external-task/{taken['id']}/complete", json={"workerId": "next"})


async def test_task_worker_runs_a_whole_batch_and_a_failing_handler_ends_as_an_incident(
    servers: Settings, tmp_path: Path
) -> None:
    """EDPO's TaskWorker (batch fetch over the shared aiohttp session): every task of a batch is
    completed, and a handler that keeps raising is retried, then becomes an incident."""
    from edpo.camunda.worker import TASK_RETRIES, TaskWorker

    key = f"echo_test_{uuid.uuid4().hex[:8]}"
    topic = f"echo-payload-{key}"
    bpmn = tmp_path / f"{key}.bpmn"
    bpmn.write_text(BPMN.read_text().replace('id="echo_test"', f'id="{key}"').replace('"echo-payload"', f'"{topic}"'))
    calls: dict[str, int] = {}

    async def handle(task: ExternalTask) -> TaskResult:
        payload = json.loads(task.get_variable("payload"))
        calls[payload["name"]] = calls.get(payload["name"], 0) + 1
        if payload["fail"]:
            raise ValueError("no such thing")
        return task.complete({"reply": {"value": json.dumps({"echo": payload}), "type": "Json"}})

    async with Engine(servers.camunda_url) as engine:
        await engine.deploy(key, bpmn)
        started = {name: await engine.start_process(key, name, {"payload": {"name": name, "fail": name == "bad"}})
                   for name in ("a", "b", "c", "bad")}
        worker = TaskWorker(engine, f"it-{key}", {topic: handle}, lock_seconds=5, batch=10, pollers=1,
                            retry_timeout_ms=100)
        await worker.start()
        try:
            deadline = asyncio.get_running_loop().time() + 30
            done: list = []
            incidents: list = []
            while asyncio.get_running_loop().time() < deadline:
                done = [h for h in await engine.request("GET", "/history/process-instance",
                                                        params={"processDefinitionKey": key})
                        if h["state"] == "COMPLETED"]
                incidents = await engine.request("GET", "/incident",
                                                 params={"processInstanceId": started["bad"]["id"]})
                if len(done) == 3 and incidents:
                    break
                await asyncio.sleep(0.2)
        finally:
            await worker.stop()
    assert sorted(h["businessKey"] for h in done) == ["a", "b", "c"]
    assert calls["a"] == calls["b"] == calls["c"] == 1, "each task ran once"
    assert calls["bad"] == TASK_RETRIES, "a failing handler is tried TASK_RETRIES times"
    assert incidents and incidents[0]["incidentType"] == "failedExternalTask"
    assert incidents[0]["incidentMessage"] == "ValueError", "the error's type names the incident"
