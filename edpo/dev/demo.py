"""`edpo demo` (the main job of `make demo`): sample orders for each path, followed live."""

from __future__ import annotations

import sys
import time

from edpo.config import Settings
from edpo.runtime.http import request_json

FINAL = {"DELIVERED", "CANCELLED", "REJECTED"}
ESCALATED = "courier silent: escalated to a dispatcher"
CANCELLED_BY_CUSTOMER = "cancelled by the customer while it waits"
OVERDUE_TASK = "resolve-overdue-delivery"

SAMPLES = [
    ("in stock", {"customer_id": "ada", "delivery_address": "Bahnhofstrasse 1, 8001 Zurich",
                  "items": [{"sku": "KEYBOARD", "quantity": 1}, {"sku": "MOUSE", "quantity": 2}]}),
    # DOCK's quantity is raised at run time to more than is available, so it always waits.
    ("partly missing, the factory replenishes", {"customer_id": "grace", "delivery_address": "Rue du Rhone 5, Geneva",
                                                 "items": [{"sku": "DOCK", "quantity": 3}, {"sku": "CABLE", "quantity": 1}]}),
    ("unreachable address: retried, then compensated", {"customer_id": "linus",
                                                        "delivery_address": "Unreachable Alley 13",
                                                        "items": [{"sku": "HEADSET", "quantity": 1}]}),
    # EDPO_SILENT_PATTERN matches: the courier never reports, the delivery becomes overdue.
    (ESCALATED, {"customer_id": "barbara", "delivery_address": "No News Lane 4, Basel",
                 "items": [{"sku": "CABLE", "quantity": 1}]}),
    # Waits for the factory (DOCK is short), and the customer cancels meanwhile.
    (CANCELLED_BY_CUSTOMER, {"customer_id": "edsger", "delivery_address": "Seefeldstrasse 9, Zurich",
                             "items": [{"sku": "DOCK", "quantity": 3}]}),
]


def _admin_password(settings: Settings) -> str:
    """The Cockpit password to show: a generated dev value is shown; one set by variable is only named."""
    origin = settings.secret_origin("camunda_admin_password")
    if settings.generated("camunda_admin_password"):
        return f"{settings.camunda_admin_password}  (generated for this checkout, kept in {origin})"
    return f"in {origin}"


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_demo(settings: Settings, timeout: float = 300.0) -> int:
    """Place the samples, print every status change until all are final, then the URLs."""
    api = f"http://{settings.host}:{settings.web_ports['order']}"
    orders: dict[str, tuple[str, list[str]]] = {}
    _out(f"Dashboard: http://{settings.host}:{settings.web_port('monitor')}/  (open it to watch the orders move)")
    _, dock = request_json("GET", f"http://{settings.host}:{settings.web_ports['warehouse']}/stock/DOCK", token=settings.api_token)
    short = dock["available"] + 2 if isinstance(dock, dict) and "available" in dock else 3
    for label, body in SAMPLES:
        body = {**body, "items": [{**i, "quantity": short} if i["sku"] == "DOCK" else i for i in body["items"]]}
        status, reply = request_json("POST", f"{api}/orders", body, token=settings.api_token)
        if status == 401:
            _out("the running workers require an API token (a stack `make test` started has one): set "
                 "EDPO_API_TOKEN, or restart them without one: `make down && make demo`")
            return 1
        if status != 201:
            _out(f"could not place the '{label}' order: {status} {reply}")
            return 1
        orders[reply["order_id"]] = (label, [])
        _out(f"placed {reply['order_id'][:8]}  {label}")
        if label == CANCELLED_BY_CUSTOMER:
            status, reply = request_json("POST", f"{api}/orders/{reply['order_id']}/cancel", token=settings.api_token)
            _out(f"         POST /orders/{{id}}/cancel -> {status}")
    _out("")
    t0 = time.monotonic()
    escalated: set[str] = set()
    while time.monotonic() - t0 < timeout:
        done = 0
        for order_id, (label, seen) in orders.items():
            _, order = request_json("GET", f"{api}/orders/{order_id}", token=settings.api_token)
            for entry in order["history"][len(seen):]:
                seen.append(entry["status"])
                detail = f"  ({entry['detail']})" if entry.get("detail") else ""
                _out(f"{time.monotonic() - t0:6.1f}s  {order_id[:8]}  {entry['status']:16}{detail}")
            tasks = (order.get("process") or {}).get("user_tasks") or []
            if order_id not in escalated and any(t["key"] == OVERDUE_TASK for t in tasks):
                escalated.add(order_id)
                seen.append("ESCALATED")
                _out(f"{time.monotonic() - t0:6.1f}s  {order_id[:8]}  {'ESCALATED':16}  (task \"Resolve overdue "
                     "delivery\" waits in Tasklist for the group dispatchers)")
            done += order["status"] in FINAL or order_id in escalated
        if done == len(orders):
            break
        time.sleep(0.3)
    _out("")
    for order_id, (label, seen) in orders.items():
        _out(f"{order_id[:8]}  {label:48} -> {' > '.join(seen)}")
    h = settings.host
    _out(f"""
Look around:
  Dashboard         http://{h}:{settings.web_port('monitor')}/   (live: orders, timelines, stock, escalations, lag)
  Order API         {api}/orders   (described at {api}/docs, {api}/openapi.json)
  Warehouse API     http://{h}:{settings.web_ports['warehouse']}/docs
  Stock             http://{h}:{settings.web_ports['warehouse']}/stock
  Table views       http://{h}:{settings.web_ports['warehouse']}/table/   (also on :{settings.web_ports['factory']} and :{settings.web_ports['delivery']})
  Production        http://{h}:{settings.web_ports['factory']}/production
  Deliveries        http://{h}:{settings.web_ports['delivery']}/deliveries
  Camunda Cockpit   http://{h}:{settings.camunda_port}/camunda/app/cockpit/
  Camunda Tasklist  http://{h}:{settings.camunda_port}/camunda/app/tasklist/  (group dispatchers)
  Log in as         {settings.camunda_admin_user}, password {_admin_password(settings)}
  API token         {"none: EDPO_API_TOKEN is not set, the APIs are open (see docs/security.md)" if not settings.api_token
                     else "EDPO_API_TOKEN (send Authorization: Bearer <token>; /health, /docs, /catalog, stock are open)"}
The escalated order waits for you in Tasklist: claim "Resolve overdue delivery" and decide
(retry, cancel or wait). The stack keeps running; `make down` stops it.""")
    unfinished = [o for o, (_, seen) in orders.items() if not seen or seen[-1] not in FINAL | {"ESCALATED"}]
    return 1 if unfinished else 0
