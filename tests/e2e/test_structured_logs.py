"""EDPO_LOG_FORMAT=json: a worker logs one JSON object per line, with the order and trace it handles."""

from __future__ import annotations

import asyncio
import json

from edpo.dev.workers import start_worker, worker_process

from .conftest import Api, eventually


async def test_a_worker_started_with_json_logs_writes_json_lines_naming_the_order_it_handles(api: Api) -> None:
    # An order worker of its own, beside those running (the stack may run `--instances N`).
    n = next(n for n in range(2, 10) if not worker_process(api.s, "order", n).running())
    proc = worker_process(api.s, "order", n)
    log = proc.log_file
    start = log.stat().st_size if log.exists() else 0  # earlier runs of this worker may have logged as text
    await api.receive("CABLE", 1)  # its own cable
    await asyncio.to_thread(start_worker, api.s, "order", n, {"EDPO_LOG_FORMAT": "json"})
    try:
        # Placed through this worker's own API: it logs the order it stored.
        second = f"http://{api.s.host}:{api.s.web_port('order', n)}"
        status, order = await api.call("POST", f"{second}/orders", json={
            "customer_id": "e2e-logs", "delivery_address": "Main Street 1, Bern",
            "items": [{"sku": "CABLE", "quantity": 1}]})
        assert status == 201, order
        assert (await api.wait_final(order["order_id"]))["status"] == "DELIVERED"

        def lines() -> list[str]:
            with open(log, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace").splitlines()

        async def logged() -> list[str]:
            return lines()

        await eventually(logged, lambda ls: any(order["order_id"] in line for line in ls), 30,
                         "the second order worker to log the order it placed")
    finally:
        await asyncio.to_thread(proc.stop)

    parsed = [json.loads(line) for line in lines()]  # every line is one JSON object
    assert len(parsed) > 5
    for entry in parsed:
        assert entry["service"] == "order" and entry["instance"] == str(n), entry
        assert entry["time"].endswith("Z") and entry["level"] and entry["logger"] and "message" in entry, entry
    about_order = [e for e in parsed if e.get("order_id") == order["order_id"]]
    assert about_order, "no line names the order"
    assert all(e["trace_id"] == order["trace_id"] for e in about_order), about_order
