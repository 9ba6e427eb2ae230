"""GET /metrics on the running stack: an order's way through every service moves the counters,
the histograms and the gauges that describe it."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edpo.camunda import ORDER_FULFILMENT
from edpo.config import Settings
from edpo.config.catalog import load_catalog

from .conftest import Api, eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: Api, service: str) -> Samples:
    """Every sample a service's workers serve, parsed as Prometheus would and summed over the
    workers (the stack may run `--instances N`; each counts what its own partitions handled)."""
    samples: Samples = {}
    for n in range(1, 5):
        try:
            async with api.http.get(f"http://{api.s.host}:{api.s.web_port(service, n)}/metrics") as r:
                text = await r.text()
                assert r.status == 200, text
                assert r.content_type == "text/plain"
        except aiohttp.ClientConnectionError:
            assert n > 1, f"no {service} worker answers"
            break
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def get(samples: Mapping, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


async def test_every_service_serves_its_metrics_only_with_the_token(stack: Settings) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for service in stack.web_ports:
            async with anonymous.get(f"http://{stack.host}:{stack.web_port(service)}/metrics") as r:
                if stack.api_token:
                    assert r.status == 401, service
                else:
                    assert r.status == 200, service


async def test_a_delivered_order_moves_the_counters_histograms_and_gauges_of_every_service(api: Api) -> None:
    await api.receive("LAMP", 1)  # its own lamp
    services = ("order", "warehouse", "factory", "delivery")
    before = {s: await scrape(api, s) for s in services}

    order = await api.place([("LAMP", 1)])
    final = await api.wait_final(order["order_id"])
    assert final["status"] == "DELIVERED"

    def grew(service: str, metric: str, **labels: str) -> bool:
        return get(after[service], metric, service=service, **labels) > get(before[service], metric, service=service,
                                                                             **labels)

    async def scrape_all() -> dict[str, Samples]:
        return {s: await scrape(api, s) for s in services}

    wanted = [
        # The order service: placed it, relayed its command, heard the delivery.
        ("order", "edpo_events_produced_total", {"topic": "order-events", "type": "OrderPlaced"}),
        ("order", "edpo_events_produced_total", {"topic": "warehouse-commands", "type": "AcceptOrder"}),
        ("order", "edpo_events_consumed_total", {"topic": "delivery-events", "type": "DeliveryCompleted"}),
        ("order", "edpo_handler_seconds_count", {"agent": "order_lifecycle"}),
        ("order", "edpo_engine_requests_total", {"kind": f"POST /process-definition/key/{ORDER_FULFILMENT}/start"}),
        # The warehouse: accepted, reserved, packed and shipped it, and ran the process's tasks.
        ("warehouse", "edpo_events_consumed_total", {"topic": "warehouse-commands", "type": "AcceptOrder"}),
        ("warehouse", "edpo_events_produced_total", {"topic": "warehouse-events", "type": "StockReserved"}),
        ("warehouse", "edpo_handler_seconds_count", {"agent": "stock_keeper"}),
        ("warehouse", "edpo_external_task_seconds_count", {"topic": "reserve-stock"}),
        ("warehouse", "edpo_external_task_seconds_count", {"topic": "pack-goods"}),
        ("warehouse", "edpo_external_tasks_total", {"topic": "start-delivery", "outcome": "completed"}),
        # The courier: started and completed the delivery.
        ("delivery", "edpo_events_consumed_total", {"topic": "delivery-commands", "type": "StartDelivery"}),
        ("delivery", "edpo_events_produced_total", {"topic": "delivery-events", "type": "DeliveryCompleted"}),
        ("delivery", "edpo_handler_seconds_count", {"agent": "courier"}),
    ]
    after = await eventually(scrape_all, lambda now: all(
        get(now[s], m, service=s, **labels) > get(before[s], m, service=s, **labels) for s, m, labels in wanted),
        30, "every counter of the order's way to grow")
    assert all(grew(s, m, **labels) for s, m, labels in wanted)

    order_metrics = after["order"]
    assert get(order_metrics, "edpo_orders", service="order", status="DELIVERED") >= 1
    assert ("edpo_orders", frozenset({"service": "order", "status": "CANCELLED"}.items())) in order_metrics
    for state in ("unsent", "awaiting_ack"):
        assert ("edpo_outbox_backlog", frozenset({"service": "order", "state": state}.items())) in order_metrics
    assert get(order_metrics, "edpo_scrape_errors_total", service="order", part="orders") == \
        get(before["order"], "edpo_scrape_errors_total", service="order", part="orders"), "the database answered"

    skus = [item.sku for item in load_catalog(api.s.catalog).skus]
    # The warehouse's workers together own every SKU (once a rebalance after a scale-out test is over).
    warehouse = await eventually(lambda: scrape(api, "warehouse"), lambda w: all(
        ("edpo_stock_on_hand", frozenset({"service": "warehouse", "sku": sku}.items())) in w for sku in skus),
        60, "a stock gauge for every SKU")
    for item in load_catalog(api.s.catalog).skus:
        assert get(warehouse, "edpo_stock_reserved", service="warehouse", sku=item.sku) <= \
            get(warehouse, "edpo_stock_on_hand", service="warehouse", sku=item.sku)
    assert get(after["delivery"], "edpo_delivery_attempts", service="delivery", status="delivered") >= 1
    assert get(after["factory"], "edpo_engine_requests_total", service="factory",
               kind="POST /external-task/fetchAndLock") > 0, "the factory's worker polls the engine"
