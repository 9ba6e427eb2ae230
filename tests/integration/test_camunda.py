"""Camunda 7: deploy through REST, run a process whose external task a Python worker completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
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
    async with Engine.from_settings(servers) as engine:
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
                    "deserializeValues": False,  # Json arrives as its JSON text
                    "auth_basic": {"username": servers.camunda_user, "password": servers.camunda_password}},
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


def _lock_expiry(task: dict) -> datetime | None:
    text = task.get("lockExpirationTime")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z") if text else None


async def test_a_waiting_handler_keeps_its_task_locked_past_the_lock_duration(servers: Settings, tmp_path: Path) -> None:
    """keep_locked moves the lock's expiry forward, so no other worker gets the task while its
    handler waits; once it stops, the lock runs out and the task is handed out again."""
    from edpo.camunda.worker import EngineTaskClient, keep_locked

    key = f"echo_test_{uuid.uuid4().hex[:8]}"
    topic = f"echo-payload-{key}"
    bpmn = tmp_path / f"{key}.bpmn"
    bpmn.write_text(BPMN.read_text().replace('id="echo_test"', f'id="{key}"').replace('"echo-payload"', f'"{topic}"'))
    lock_ms = 1000
    async with Engine.from_settings(servers) as engine:
        await engine.deploy(key, bpmn)
        await engine.start_process(key, f"lock-{key}", {"payload": {"n": 1}})
        fetch = {"maxTasks": 1, "topics": [{"topicName": topic, "lockDuration": lock_ms}]}
        [locked] = await engine.request("POST", "/external-task/fetchAndLock", json={"workerId": "holder", **fetch})
        task_path = f"/external-task/{locked['id']}"
        first = _lock_expiry(await engine.request("GET", task_path))
        assert first is not None

        client = EngineTaskClient("holder", engine, {}, batch=1)
        keeper = asyncio.create_task(keep_locked(client, locked["id"], lock_ms))
        expiries = [first]
        try:
            # Until the first lock is long over: the expiry keeps moving forward, the holder keeps the task.
            deadline = asyncio.get_running_loop().time() + 15
            while datetime.now(UTC) < first + timedelta(milliseconds=2 * lock_ms) or len(expiries) < 4:
                assert asyncio.get_running_loop().time() < deadline, f"the lock was not renewed: {expiries}"
                task = await engine.request("GET", task_path)
                assert task["workerId"] == "holder", task
                expiry = _lock_expiry(task)
                assert expiry is not None and expiry >= expiries[-1], f"the lock moved back: {expiries + [expiry]}"
                assert expiry > datetime.now(UTC) - timedelta(milliseconds=100), \
                    f"the lock ran out while its handler waited: {expiry}"
                if expiry > expiries[-1]:
                    expiries.append(expiry)
                stolen = await engine.request("POST", "/external-task/fetchAndLock", json={"workerId": "thief", **fetch})
                assert stolen == [], "the task was handed to another worker while its handler waited"
                await asyncio.sleep(0.1)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        assert expiries[-1] > first + timedelta(milliseconds=lock_ms), f"renewals did not outlast the first lock: {expiries}"

        # No renewal any more: the lock runs out where the last renewal put it, and the task is free.
        last = _lock_expiry(await engine.request("GET", task_path))
        assert last is not None
        taken: list = []
        deadline = asyncio.get_running_loop().time() + 15
        while not taken:
            assert asyncio.get_running_loop().time() < deadline, "the lock never ran out"
            taken = await engine.request("POST", "/external-task/fetchAndLock", json={"workerId": "next", **fetch})
            if not taken:
                await asyncio.sleep(0.1)
        assert datetime.now(UTC) >= last - timedelta(milliseconds=100), "the task was free before its lock ran out"
        assert taken[0]["id"] == locked["id"]
        await engine.request("POST", f"/external-task/{taken[0]['id']}/complete", json={"workerId": "next"})


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

    async with Engine.from_settings(servers) as engine:
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
    assert incidents[0]["incidentMessage"] == "ValueError: no such thing", "the error's type and text name the incident"
