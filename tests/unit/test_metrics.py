"""Prometheus metrics: what the agent loop, the publisher and the external-task worker count,
the parts read at scrape time (and a scrape that answers when one of them cannot), the services'
gauges over their tables, and GET /metrics behind the token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from edpo.agents.delivery.web import watch_deliveries
from edpo.agents.factory.web import watch_production
from edpo.agents.order.web import watch_orders
from edpo.agents.order.store import OrderStore
from edpo.agents.warehouse.web import watch_stock
from edpo.camunda.worker import TaskWorker
from edpo.config import Settings
from edpo.domain.delivery import Attempt, Delivery
from edpo.domain.factory import ProductionLine
from edpo.domain.stock import SkuStock
from edpo.models import DeadLetter, DeliveryCompleted, Line, ReserveStock, encode
from edpo.runtime import metrics as metrics_module
from edpo.runtime.consume import consume
from edpo.runtime.metrics import Metrics, dead_letter_kind, message_type
from edpo.runtime.publish import Publisher
from edpo.runtime.retry import HANDLER_ATTEMPTS
from edpo.topics import dead_letters_topic, order_events_topic, warehouse_commands_topic
from tests.unit.fakes import MemoryTable, external_task
from tests.unit.test_consume import FakeEvent, FakeRecord, FakeStream, Recorder


async def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value, parsed as Prometheus would."""
    text = (await metrics.exposition()).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def _reserve(order_id: str = "o-1") -> bytes:
    return encode(ReserveStock(order_id=order_id, lines=[Line(sku="A", quantity=1)]))


# --- the agent loop ----------------------------------------------------------------------------


async def test_the_agent_loop_counts_records_by_topic_and_type_and_times_its_handler() -> None:
    m = Metrics("warehouse")
    recorder = Recorder()
    events = [FakeEvent(_reserve("o-1")), FakeEvent(_reserve("o-2")),
              FakeEvent(b'{"type": "SomethingNew"}'), FakeEvent(_reserve(), message=FakeRecord("nobody-declared-it"))]
    await consume(FakeStream(events).events(), {ReserveStock: recorder.handler}, name="order_desk",
                  publish=recorder.publish, sleep=recorder.sleep, metrics=m.agent("order_desk"))
    s = await scrape(m)
    assert value(s, "edpo_events_consumed_total", service="warehouse", topic="warehouse-commands",
                 type="ReserveStock") == 2
    assert value(s, "edpo_events_skipped_total", service="warehouse", topic="warehouse-commands",
                 reason="unknown_type") == 1
    assert value(s, "edpo_events_skipped_total", service="warehouse", topic="nobody-declared-it",
                 reason="undeclared_topic") == 1
    assert value(s, "edpo_handler_seconds_count", service="warehouse", agent="order_desk") == 2
    assert value(s, "edpo_handler_seconds_bucket", service="warehouse", agent="order_desk", le="+Inf") == 2


async def test_handler_retries_are_counted_by_kind() -> None:
    m = Metrics("order")
    recorder = Recorder(failures=[ConnectionRefusedError("db"), ValueError("bug"), ValueError("bug")])
    await consume(FakeStream([FakeEvent(_reserve())]).events(), {ReserveStock: recorder.handler}, name="lifecycle",
                  publish=recorder.publish, sleep=recorder.sleep, metrics=m.agent("lifecycle"))
    s = await scrape(m)
    assert value(s, "edpo_handler_retries_total", service="order", agent="lifecycle", kind="outage") == 1
    assert value(s, "edpo_handler_retries_total", service="order", agent="lifecycle", kind="failure") == 2
    assert value(s, "edpo_handler_seconds_count", service="order", agent="lifecycle") == 1, "one record, retries in it"
    assert len(recorder.handled) == 1


async def test_a_record_that_fails_every_time_is_timed_once_and_not_counted_twice() -> None:
    m = Metrics("order")
    recorder = Recorder(failures=[ValueError("bug")] * HANDLER_ATTEMPTS)
    await consume(FakeStream([FakeEvent(_reserve())]).events(), {ReserveStock: recorder.handler}, name="lifecycle",
                  publish=recorder.publish, sleep=recorder.sleep, metrics=m.agent("lifecycle"))
    s = await scrape(m)
    assert recorder.dead == ["handler failed: ValueError: bug"]
    assert value(s, "edpo_handler_retries_total", service="order", agent="lifecycle", kind="failure") == \
        HANDLER_ATTEMPTS - 1
    assert value(s, "edpo_handler_seconds_count", service="order", agent="lifecycle") == 1


# --- the publisher -----------------------------------------------------------------------------


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, *, key: bytes, value: bytes) -> Any:
        self.sent.append((key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def fake_publisher(m: Metrics) -> tuple[Publisher, dict[str, FakeChannel]]:
    publisher = Publisher(app=None, metrics=m)  # type: ignore[arg-type] - every channel is given below
    channels = {spec.name: FakeChannel() for spec in (warehouse_commands_topic, dead_letters_topic,
                                                      order_events_topic)}
    publisher._channels.update(channels)  # noqa: SLF001 - the channels stand in for Faust's topics
    return publisher, channels


async def test_messages_sent_are_counted_by_topic_and_type_and_dead_letters_by_origin_and_kind() -> None:
    m = Metrics("warehouse")
    publisher, channels = fake_publisher(m)
    letter = DeadLetter(topic="stock-commands", partition=0, offset=5, key="A", reason="undecodable: x", payload="x")
    await publisher.publish(ReserveStock(order_id="o-1", lines=[Line(sku="A", quantity=1)]),
                            ReserveStock(order_id="o-2", lines=[Line(sku="A", quantity=1)]), letter, wait=True)
    s = await scrape(m)
    assert value(s, "edpo_events_produced_total", service="warehouse", topic="warehouse-commands",
                 type="ReserveStock") == 2
    assert value(s, "edpo_events_produced_total", service="warehouse", topic="dead-letters", type="DeadLetter") == 1
    assert value(s, "edpo_dead_letters_total", service="warehouse", topic="stock-commands", kind="undecodable") == 1
    assert len(channels["warehouse-commands"].sent) == 2


async def test_messages_sent_already_encoded_are_counted_from_their_payload() -> None:
    """The order service's outbox relay sends stored payloads: type and dead letter read from them."""
    m = Metrics("order")
    publisher, _ = fake_publisher(m)
    letter = DeadLetter(source="order", topic="warehouse-events", partition=-1, offset=-1, key="o-1",
                        reason="StockReserved: the order's process instance has ended", payload="{}")
    await publisher.send_encoded(dead_letters_topic, "o-1", encode(letter))
    await publisher.send_encoded(order_events_topic, "o-1", encode(DeliveryCompleted(order_id="o-1", attempt=1)))
    s = await scrape(m)
    assert value(s, "edpo_dead_letters_total", service="order", topic="warehouse-events", kind="uncorrelated") == 1
    assert value(s, "edpo_events_produced_total", service="order", topic="order-events",
                 type="DeliveryCompleted") == 1


def test_the_type_and_the_dead_letter_kind_are_read_without_trusting_the_payload() -> None:
    assert message_type(_reserve()) == "ReserveStock"
    assert message_type(b"not json") == "?"
    assert message_type(b'{"type": 3}') == "?"
    assert [dead_letter_kind(r) for r in ("undecodable: bad", "handler failed: ValueError", "no such order")] == \
        ["undecodable", "handler_failed", "uncorrelated"]


# --- external tasks ----------------------------------------------------------------------------


async def test_external_tasks_are_timed_and_counted_by_topic_and_outcome() -> None:
    m = Metrics("warehouse")
    worker = TaskWorker(engine=None, worker_id="w", handlers={}, lock_seconds=600, batch=1, pollers=1,  # type: ignore[arg-type]
                        observe=m.external_task)

    async def complete(task: Any) -> Any:
        return task.complete({})

    async def refuse(task: Any) -> Any:
        return task.bpmn_error("DELIVERY_REJECTED", "no address", {})

    async def crash(task: Any) -> Any:
        raise RuntimeError("the warehouse never answered")

    for handler in (complete, complete, refuse, crash):
        run = worker._guarded(client=None, topic="start-delivery", handler=handler)  # type: ignore[arg-type]  # noqa: SLF001
        result = await run(external_task("start-delivery"))
        assert result is not None
    s = await scrape(m)
    count = {o: value(s, "edpo_external_tasks_total", service="warehouse", topic="start-delivery", outcome=o)
             for o in ("completed", "bpmn_error", "failed")}
    assert count == {"completed": 2, "bpmn_error": 1, "failed": 1}
    assert value(s, "edpo_external_task_seconds_count", service="warehouse", topic="start-delivery") == 4


# --- parts read at scrape time -----------------------------------------------------------------


async def test_a_part_that_fails_or_hangs_is_left_out_counted_and_the_others_still_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "PART_TIMEOUT", 0.05)
    m = Metrics("order")
    good = m.gauge("edpo_test_good", "a part that answers", ["k"])
    broken = m.gauge("edpo_test_broken", "a part whose server is away", ["k"])
    slow = m.gauge("edpo_test_slow", "a part that never answers")
    state = {"broken": False}

    async def read_good() -> list:
        return [(good, ("a",), 1), (good, ("b",), 2)]

    async def read_broken() -> list:
        if state["broken"]:
            raise ConnectionRefusedError("PostgreSQL is away")
        return [(broken, ("x",), 7)]

    async def read_slow() -> list:
        await asyncio.Event().wait()
        return []

    m.at_scrape("good", read_good, good)
    m.at_scrape("broken", read_broken, broken)
    m.at_scrape("slow", read_slow, slow)
    s = await scrape(m)
    assert value(s, "edpo_test_broken", service="order", k="x") == 7, "served while its server answers"
    state["broken"] = True
    s = await scrape(m)
    assert value(s, "edpo_test_good", service="order", k="b") == 2
    assert value(s, "edpo_test_broken", service="order", k="x") is None, "a stale value is not served"
    assert "edpo_test_slow" not in names(s)
    assert value(s, "edpo_scrape_errors_total", service="order", part="broken") == 1
    assert value(s, "edpo_scrape_errors_total", service="order", part="slow") == 2
    assert value(s, "edpo_scrape_errors_total", service="order", part="good") is None


async def test_a_sample_a_part_cannot_set_leaves_that_part_out_and_the_scrape_answers() -> None:
    m = Metrics("order")
    g = m.gauge("edpo_test_labels", "two labels", ["a"])

    async def wrong_labels() -> list:
        return [(g, ("1",), 1), (g, ("1", "2"), 1)]

    m.at_scrape("wrong", wrong_labels, g)
    s = await scrape(m)
    assert "edpo_test_labels" not in names(s)
    assert value(s, "edpo_scrape_errors_total", service="order", part="wrong") == 1


async def test_dict_counters_are_exposed_as_they_are_now() -> None:
    m = Metrics("order")
    counts: dict[str, int] = {}
    m.collect_counters("edpo_test_things", "counted elsewhere", "name", lambda: counts)
    m.collect_counters("edpo_test_nothing", "not there yet", "name", lambda: None)
    counts["reconcile_missing_instance"] = 2
    s = await scrape(m)
    assert value(s, "edpo_test_things_total", service="order", name="reconcile_missing_instance") == 2
    counts["reconcile_missing_instance"] = 3
    assert value(await scrape(m), "edpo_test_things_total", service="order", name="reconcile_missing_instance") == 3


async def test_two_workers_in_one_process_keep_their_own_metrics() -> None:
    a, b = Metrics("order"), Metrics("order")
    a.sent("order-events", "OrderPlaced")
    assert value(await scrape(a), "edpo_events_produced_total", service="order", topic="order-events",
                 type="OrderPlaced") == 1
    assert value(await scrape(b), "edpo_events_produced_total", service="order", topic="order-events",
                 type="OrderPlaced") is None


# --- the services' gauges ----------------------------------------------------------------------


async def test_stock_gauges_show_each_local_sku() -> None:
    m = Metrics("warehouse")
    table = MemoryTable({"LAMP": SkuStock(sku="LAMP", on_hand=10, reserved=3, waiting=["o-1", "o-2"]),
                         "DOCK": SkuStock(sku="DOCK", on_hand=0)})
    watch_stock(m, table)
    s = await scrape(m)
    assert value(s, "edpo_stock_on_hand", service="warehouse", sku="LAMP") == 10
    assert value(s, "edpo_stock_reserved", service="warehouse", sku="LAMP") == 3
    assert value(s, "edpo_stock_available", service="warehouse", sku="LAMP") == 7
    assert value(s, "edpo_stock_waiting_orders", service="warehouse", sku="LAMP") == 2
    assert value(s, "edpo_stock_on_hand", service="warehouse", sku="DOCK") == 0
    table.delete("DOCK")  # its partition moved to another worker
    assert value(await scrape(m), "edpo_stock_on_hand", service="warehouse", sku="DOCK") is None


async def test_production_gauges_show_batches_in_production_and_units_waiting() -> None:
    m = Metrics("factory")
    watch_production(m, MemoryTable({
        "DOCK": ProductionLine(sku="DOCK", pending=4, current_id="p-1", current_qty=10, due_at=1.0),
        "LAMP": ProductionLine(sku="LAMP")}))
    s = await scrape(m)
    assert value(s, "edpo_factory_batches_in_production", service="factory", sku="DOCK") == 1
    assert value(s, "edpo_factory_units_in_production", service="factory", sku="DOCK") == 10
    assert value(s, "edpo_factory_units_pending", service="factory", sku="DOCK") == 4
    assert value(s, "edpo_factory_batches_in_production", service="factory", sku="LAMP") == 0


async def test_delivery_gauges_count_attempts_by_status_zeros_included() -> None:
    m = Metrics("delivery")
    watch_deliveries(m, MemoryTable({
        "o-1": Delivery(order_id="o-1", attempts={"1": Attempt(status="failed", due_at=1.0),
                                                  "2": Attempt(status="in_transit", due_at=9.0)}),
        "o-2": Delivery(order_id="o-2", attempts={"1": Attempt(status="in_transit", due_at=9.0)})}))
    s = await scrape(m)
    by_status = {st: value(s, "edpo_delivery_attempts", service="delivery", status=st)
                 for st in ("in_transit", "delivered", "failed", "withdrawn")}
    assert by_status == {"in_transit": 2, "delivered": 0, "failed": 1, "withdrawn": 0}


class FakePool:
    """The pool methods the order gauges use: canned rows, or a database that is away."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        if self.down:
            raise ConnectionRefusedError("PostgreSQL is away")
        return [{"status": "DELIVERED", "n": 3}, {"status": "PLACED", "n": 1}]

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any]:
        if self.down:
            raise ConnectionRefusedError("PostgreSQL is away")
        if "FROM process_inbox" in query:
            return {"waiting": 4, "held": 1, "oldest": 0.5}
        return {"unsent": 2, "awaiting_ack": 1, "unanswered": 0, "oldest": 1.5}


async def test_order_gauges_show_every_status_and_the_backlog_and_go_quiet_while_the_database_is_away() -> None:
    m = Metrics("order")
    store = OrderStore("postgresql://nowhere")
    watch_orders(m, store, command_attempts=5)
    s = await scrape(m)
    assert "edpo_orders" not in names(s), "the pool is not open yet: left out at once"
    assert value(s, "edpo_scrape_errors_total", service="order", part="orders") == 1
    store._pool = FakePool()  # type: ignore[assignment]  # noqa: SLF001
    s = await scrape(m)
    assert value(s, "edpo_orders", service="order", status="DELIVERED") == 3
    assert value(s, "edpo_orders", service="order", status="CANCELLED") == 0, "every status, zeros included"
    assert value(s, "edpo_outbox_backlog", service="order", state="unsent") == 2
    assert value(s, "edpo_outbox_backlog", service="order", state="awaiting_ack") == 1
    assert value(s, "edpo_inbox_backlog", service="order", state="held") == 1
    assert value(s, "edpo_inbox_oldest_seconds", service="order") == 0.5
    store._pool = FakePool(down=True)  # type: ignore[assignment]  # noqa: SLF001
    s = await scrape(m)
    assert "edpo_orders" not in names(s) and "edpo_outbox_backlog" not in names(s)
    assert value(s, "edpo_scrape_errors_total", service="order", part="backlog") == 2


# --- GET /metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["secret", ""])
async def test_metrics_are_served_as_prometheus_text_and_need_the_token_when_one_is_set(token: str) -> None:
    from edpo import agents

    app = agents.create_app("factory", Settings(api_token=token))
    app.metrics.sent("factory-events", "ItemsManufactured")
    web_app = web.Application(middlewares=[app.api.guard(())])
    app.api.mount(web_app.router, None)
    async with TestClient(TestServer(web_app)) as client:
        response = await client.get("/metrics")
        if token:
            assert response.status == 401
            response = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["edpo_events_produced_total"].value == 1
    assert samples["edpo_events_produced_total"].labels == {"service": "factory", "topic": "factory-events",
                                                            "type": "ItemsManufactured"}


async def test_a_scrape_while_postgresql_refuses_connections_answers_without_the_database_parts() -> None:
    """A real asyncpg pool to a port nobody listens on: what the order worker meets when
    PostgreSQL is down. The scrape answers, the database parts left out and counted."""
    import socket

    import asyncpg

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: connections to it are refused
    m = Metrics("order")
    m.sent("order-events", "OrderPlaced")
    store = OrderStore(f"postgresql://edpo@127.0.0.1:{port}/edpo")
    store._pool = await asyncpg.create_pool(store.dsn, min_size=0)  # noqa: SLF001 - connects on first use
    try:
        watch_orders(m, store, command_attempts=5)
        s = await scrape(m)
    finally:
        await store._pool.close()  # noqa: SLF001
    assert "edpo_orders" not in names(s) and "edpo_outbox_backlog" not in names(s)
    assert value(s, "edpo_scrape_errors_total", service="order", part="orders") == 1
    assert value(s, "edpo_scrape_errors_total", service="order", part="backlog") == 1
    assert value(s, "edpo_events_produced_total", service="order", topic="order-events", type="OrderPlaced") == 1


@pytest.mark.parametrize("service", ["order", "warehouse", "factory", "delivery"])
async def test_the_readme_lists_every_metric_a_service_serves(service: str) -> None:
    import re
    from pathlib import Path

    from edpo import agents

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    app = agents.create_app(service, Settings())
    served = set(re.findall(r"^# TYPE (\S+) ", (await app.metrics.exposition()).decode(), re.MULTILINE))
    assert "edpo_events_consumed_total" in served
    assert {name for name in served if f"`{name}`" not in section} == set(), "list them in README's Metrics section"
