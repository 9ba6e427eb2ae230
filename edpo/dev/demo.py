"""`edpo demo` (the main job of `make demo`): sample orders for each path, followed live."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from edpo.config import Settings

FINAL = {"DELIVERED", "CANCELLED", "REJECTED"}

SAMPLES = [
    ("in stock", {"customer_id": "ada", "delivery_address": "Bahnhofstrasse 1, 8001 Zurich",
                  "items": [{"sku": "KEYBOARD", "quantity": 1}, {"sku": "MOUSE", "quantity": 2}]}),
    # DOCK's quantity is raised at run time to more than is available, so it always waits.
    ("partly missing, the factory replenishes", {"customer_id": "grace", "delivery_address": "Rue du Rhone 5, Geneva",
                                                 "items": [{"sku": "DOCK", "quantity": 3}, {"sku": "CABLE", "quantity": 1}]}),
    ("unreachable address: retried, then compensated", {"customer_id": "linus",
                                                        "delivery_address": "Unreachable Alley 13",
                                                        "items": [{"sku": "HEADSET", "quantity": 1}]}),
]


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_demo(settings: Settings, timeout: float = 300.0) -> int:
    """Place the samples, print every status change until all are final, then the URLs."""
    api = f"http://{settings.host}:{settings.web_ports['order']}"
    orders: dict[str, tuple[str, list[str]]] = {}
    _, dock = _call("GET", f"http://{settings.host}:{settings.web_ports['warehouse']}/stock/DOCK")
    short = dock["available"] + 2 if isinstance(dock, dict) and "available" in dock else 3
    for label, body in SAMPLES:
        body = {**body, "items": [{**i, "quantity": short} if i["sku"] == "DOCK" else i for i in body["items"]]}
        status, reply = _call("POST", f"{api}/orders", body)
        if status != 201:
            _out(f"could not place the '{label}' order: {status} {reply}")
            return 1
        orders[reply["order_id"]] = (label, [])
        _out(f"placed {reply['order_id'][:8]}  {label}")
    _out("")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = 0
        for order_id, (label, seen) in orders.items():
            _, order = _call("GET", f"{api}/orders/{order_id}")
            for entry in order["history"][len(seen):]:
                seen.append(entry["status"])
                detail = f"  ({entry['detail']})" if entry.get("detail") else ""
                _out(f"{time.monotonic() - t0:6.1f}s  {order_id[:8]}  {entry['status']:16}{detail}")
            done += order["status"] in FINAL
        if done == len(orders):
            break
        time.sleep(0.3)
    _out("")
    for order_id, (label, seen) in orders.items():
        _out(f"{order_id[:8]}  {label:48} -> {' > '.join(seen)}")
    h = settings.host
    _out(f"""
Look around:
  Order API         {api}/orders
  Stock             http://{h}:{settings.web_ports['warehouse']}/stock
  Table views       http://{h}:{settings.web_ports['warehouse']}/table/   (also on :{settings.web_ports['factory']} and :{settings.web_ports['delivery']})
  Production        http://{h}:{settings.web_ports['factory']}/production
  Deliveries        http://{h}:{settings.web_ports['delivery']}/deliveries
  Camunda Cockpit   http://{h}:{settings.camunda_port}/camunda/app/cockpit/  (demo/demo)
The stack keeps running; `make down` stops it.""")
    unfinished = [o for o, (_, seen) in orders.items() if not seen or seen[-1] not in FINAL]
    return 1 if unfinished else 0
