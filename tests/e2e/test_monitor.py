"""The monitor's read models against the whole stack, through its JSON API (the browser tests,
test_dashboard.py, look at the page): escalations with their Tasklist links, an order's process
steps, dead letters, stock as the warehouse has it, and every service's consumer lag."""

from __future__ import annotations

import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from edpo.camunda.engine import Engine
from tests.e2e.conftest import Api, eventually

SILENT = "No News Lane 7, Bern"


class Monitor:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.base = f"http://{api.s.host}:{api.s.web_port('monitor')}"

    async def get(self, path: str) -> Any:
        status, body = await self.api.call("GET", f"{self.base}{path}")
        assert status == 200, (path, status, body)
        return body

    async def overview(self) -> dict[str, Any]:
        return await self.get("/overview")


async def test_an_escalated_order_shows_with_its_tasklist_link_until_a_dispatcher_decides(
        api: Api, engine: Engine) -> None:
    monitor = Monitor(api)
    await api.receive("CABLE", 1)  # its own cable
    oid = (await api.place([("CABLE", 1)], address=SILENT))["order_id"]

    def escalation_of(o: dict[str, Any]) -> list[dict[str, Any]]:
        return [i for i in o["escalations"]["items"] if i["order_id"] == oid]

    overview = await eventually(monitor.overview, escalation_of, 90, f"the escalation of {oid} on the overview")
    [task] = escalation_of(overview)
    assert task["name"] == "Resolve overdue delivery" and "/camunda/app/tasklist/" in task["url"], task
    assert task["url"].endswith(f"?task={task['id']}") and overview["escalations"]["count"] >= 1

    detail = await monitor.get(f"/orders/{oid}")
    assert [t["id"] for t in detail["open_tasks"]] == [task["id"]]
    steps = [(s["kind"], s["name"]) for s in detail["steps"]]
    assert ("user task", "Resolve overdue delivery") in steps
    assert steps.index(("event", "DeliveryStarted")) < steps.index(("user task", "Resolve overdue delivery"))
    assert detail["order"]["status"] == "SHIPPED" and detail["order"]["in_transit"] is True
    [instance] = detail["instances"]
    assert instance["state"] == "ACTIVE" and instance["url"].endswith(f"/process-instance/{instance['id']}/runtime")

    await engine.request("POST", f"/task/{task['id']}/complete",
                         json={"variables": {"decision": {"value": "cancel", "type": "String"}}})

    async def found() -> dict[str, Any]:
        return await monitor.get(f"/orders?q={oid}")

    listed = await eventually(found, lambda r: r["orders"] and r["orders"][0]["status"] == "CANCELLED", 60,
                              f"{oid} to show CANCELLED")
    assert listed["orders"][0]["order_id"] == oid and not listed["orders"][0]["in_transit"]
    await eventually(monitor.overview, lambda o: not escalation_of(o), 30, f"the escalation of {oid} to go")


async def test_a_record_the_warehouse_dead_letters_shows_with_its_position(api: Api) -> None:
    monitor = Monitor(api)
    before = await monitor.get("/dead-letters")
    producer = AIOKafkaProducer(bootstrap_servers=api.s.kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait("warehouse-commands", key=uuid.uuid4().hex.encode(),
                                            value=b"not json, for the monitor's test")
    finally:
        await producer.stop()

    def letter(letters: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in letters["items"] if (r["letter"]["topic"], r["letter"]["partition"], r["letter"]["offset"])
                == ("warehouse-commands", sent.partition, sent.offset)]

    after = await eventually(lambda: monitor.get("/dead-letters"), letter, 30, "the dead letter on the monitor")
    [row] = letter(after)
    assert row["letter"]["reason"].startswith("undecodable") and not row["letter"]["replayed"]
    # Other tests may dead-letter records meanwhile: this one is among the letters counted.
    assert after["total"] >= before["total"] + 1 and after["count"] >= 1, (before, after)
    assert (await monitor.overview())["dead_letters"]["count"] >= 1


async def test_stock_on_the_dashboard_is_the_warehouses_and_every_service_has_its_lag(api: Api) -> None:
    monitor = Monitor(api)
    await api.receive("MOUSE", 3)  # a change the monitor must follow

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        rows = {r["sku"]: r for r in (await monitor.overview())["stock"]}
        return rows.get("MOUSE", {}), await api.stock("MOUSE")

    shown, held = await eventually(both, lambda pair: pair[0] and all(
        pair[0][k] == pair[1][k] for k in ("on_hand", "reserved", "available")), 30, "MOUSE as the warehouse holds it")
    assert shown["waiting"] >= 0 and shown["in_production"] >= 0

    overview = await eventually(monitor.overview, lambda o: {g["group"] for g in o["lag"]} >= {
        "edpo-order", "edpo-warehouse", "edpo-factory", "edpo-delivery", "edpo-monitor"}, 30, "every service's lag")
    assert all(g["lag"] >= 0 for g in overview["lag"]), overview["lag"]
    assert overview["problems"] == [], overview["problems"]
    assert sum(overview["counts"].values()) == overview["orders"]
