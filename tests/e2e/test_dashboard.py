"""The monitor's dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by infra/setup-system.sh) driven by Selenium (tests/e2e/browser.py).

The browser signs in through the form when the stack has an API token (`make test` sets one),
as a person would. Screenshots go to RUN_DIR (dashboard.png, dashboard-order.png); the page's
first contentful paint, read from the browser's performance API, to RUN_DIR/dashboard-paint.json
(a figure for people, never asserted: timings are the benchmark's business).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from edpo.config import Settings
from edpo.domain.lifecycle import STATUSES
from edpo.runtime.http import request_json
from tests.e2e.browser import chromium, console_errors, until


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def dashboard(stack: Settings, browser: WebDriver) -> WebDriver:
    """The dashboard open and signed in (through the form when the stack has a token)."""
    url = f"http://{stack.host}:{stack.web_port('monitor')}/"
    browser.get(url)
    if stack.api_token:
        assert browser.current_url.endswith("/login"), browser.current_url
        browser.find_element(By.ID, "token").send_keys(stack.api_token)
        browser.find_element(By.ID, "sign-in").click()
    until(lambda: browser.current_url == url and browser.find_element(By.ID, "live").text == "live",
          "the dashboard to be signed in and its live feed connected")
    return browser


def place(stack: Settings, sku: str = "CABLE") -> dict:
    """An order for one unit of sku, received for it first (the stock may be taken by other tests)."""
    status, reply = request_json("POST", f"http://{stack.host}:{stack.web_port('warehouse')}/stock/{sku}/receipts",
                                 {"quantity": 1}, token=stack.api_token)
    assert status == 202, reply
    body = {"customer_id": "browser-test", "delivery_address": "Main Street 1, Bern",
            "items": [{"sku": sku, "quantity": 1}]}
    status, reply = request_json("POST", f"http://{stack.host}:{stack.web_port('order')}/orders", body,
                                 token=stack.api_token)
    assert status == 201, reply
    return reply


def test_a_wrong_token_is_refused_and_the_data_needs_a_session_when_a_token_is_set(stack: Settings) -> None:
    base = f"http://{stack.host}:{stack.web_port('monitor')}"
    status, _ = request_json("GET", f"{base}/overview")  # no token, no cookie
    assert status == (401 if stack.api_token else 200)
    form = urllib.request.Request(f"{base}/login", data=b"token=wrong", method="POST",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(form, timeout=10) as r:
            answered, cookie = r.status, r.headers.get("Set-Cookie")
    except urllib.error.HTTPError as e:
        answered, cookie = e.code, e.headers.get("Set-Cookie")
    if stack.api_token:
        assert (answered, cookie) == (401, None)
    status, overview = request_json("GET", f"{base}/overview", token=stack.api_token)
    # Every status of the lifecycle, then those of orders known only from later events ("UNKNOWN"):
    # a stack that served other tests may hold some.
    assert status == 200 and list(overview["counts"])[:len(STATUSES)] == list(STATUSES), overview


def test_the_dashboard_loads_with_no_console_errors(stack: Settings, dashboard: WebDriver) -> None:
    tiles = until(lambda: dashboard.find_elements(By.CSS_SELECTOR, "#counts .tile"), "the status tiles")
    assert [t.get_attribute("data-status") for t in tiles][:3] == ["PLACED", "ACCEPTED", "AWAITING_STOCK"]
    assert until(lambda: dashboard.find_elements(By.CSS_SELECTOR, "#stock .bar"), "the stock bars")
    assert until(lambda: dashboard.find_elements(By.CSS_SELECTOR, "#lag tr[data-group='edpo-order']"),
                 "the order service's consumer lag")
    assert dashboard.find_elements(By.CSS_SELECTOR, "#chart polyline[data-series='delivered']")
    assert console_errors(dashboard) == []
    # The first contentful paint of a fresh load, for the record (not asserted).
    dashboard.refresh()
    until(lambda: dashboard.find_elements(By.CSS_SELECTOR, "#counts .tile"), "the reloaded page")
    # The browser records a paint entry a moment after the paint, not always before the page's
    # elements can be found: wait for it.
    def painted() -> dict[str, float] | None:
        entries = dashboard.execute_script(
            "return Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))")
        return entries if "first-contentful-paint" in entries else None

    paints = until(painted, "the first contentful paint entry", timeout=10)
    nav = dashboard.execute_script("const n = performance.getEntriesByType('navigation')[0]; "
                                   "return {dom_content_loaded: n.domContentLoadedEventEnd, load: n.loadEventEnd}")
    (stack.run_dir / "dashboard-paint.json").write_text(json.dumps({**paints, **nav}, indent=1) + "\n")
    assert "first-contentful-paint" in paints, paints
    assert console_errors(dashboard) == []


def test_an_order_placed_through_the_api_reaches_delivered_on_the_page_without_a_reload(
        stack: Settings, dashboard: WebDriver) -> None:
    dashboard.execute_script("window.__sameDocument = true")
    order_id = place(stack)["order_id"]
    row = f"#recent tr[data-order-id='{order_id}']"
    until(lambda: dashboard.find_elements(By.CSS_SELECTOR, row), f"order {order_id} on the page", timeout=60)
    until(lambda: dashboard.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "DELIVERED",
          f"order {order_id} to show DELIVERED", timeout=120)
    assert dashboard.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    dashboard.save_screenshot(str(stack.run_dir / "dashboard.png"))
    assert console_errors(dashboard) == []


def test_searching_by_the_start_of_an_order_id_lists_that_order(stack: Settings, dashboard: WebDriver) -> None:
    order_id = place(stack)["order_id"]
    box = dashboard.find_element(By.ID, "q")
    box.send_keys(order_id[:12])

    def listed() -> list[str]:
        return dashboard.execute_script(
            "return [...document.querySelectorAll('#recent tr[data-order-id]')].map(r => r.dataset.orderId)")

    found = until(lambda: order_id in listed() and listed(), f"order {order_id} among the search results")
    assert all(other.startswith(order_id[:12]) for other in found), found
    box.clear()
    box.send_keys(" ")  # an emptied box (clear() fires no input event) shows the latest orders again
    until(lambda: "found for" not in dashboard.find_element(By.ID, "search-result").text, "the search to be left")
    assert console_errors(dashboard) == []


def test_an_orders_timeline_shows_its_events_and_process_steps_in_order(stack: Settings, dashboard: WebDriver) -> None:
    order = place(stack)
    order_id = order["order_id"]
    row = f"#recent tr[data-order-id='{order_id}']"
    until(lambda: [r for r in dashboard.find_elements(By.CSS_SELECTOR, row)
                   if r.get_attribute("data-status") == "DELIVERED"],
          f"order {order_id} to show DELIVERED", timeout=120)
    dashboard.find_element(By.CSS_SELECTOR, row).click()

    def steps() -> list[tuple[str, str, str]]:
        items = dashboard.find_elements(By.CSS_SELECTOR, "#timeline li")
        found = [(i.get_attribute("data-name"), i.get_attribute("data-kind"), i.get_attribute("data-time"))
                 for i in items]
        names = [name for name, _, _ in found]
        return found if "DeliveryCompleted" in names and "Order delivered" in names else []

    found = until(steps, f"the timeline of {order_id} with its delivery and its end", timeout=60)
    names = [name for name, _, _ in found]
    expected = ["OrderPlaced", "OrderAccepted", "Reserve stock", "StockReserved", "Pack goods", "GoodsPacked",
                "Start delivery", "DeliveryStarted", "DeliveryCompleted", "Order delivered"]
    positions = [names.index(name) for name in expected]
    assert positions == sorted(positions), list(zip(expected, positions, strict=True))
    times = [datetime.fromisoformat(t) for _, _, t in found]
    assert times == sorted(times), "the timeline is not in time order"
    assert {"event", "activity"} <= {kind for _, kind, _ in found}
    _, shown = request_json("GET", f"http://{stack.host}:{stack.web_port('order')}/orders/{order_id}?process=false",
                            token=stack.api_token)
    assert dashboard.find_element(By.ID, "trace").text == shown["trace_id"]
    cockpit = dashboard.find_elements(By.CSS_SELECTOR, "#detail a[href*='/camunda/app/cockpit/']")
    assert cockpit and "/process-instance/" in cockpit[0].get_attribute("href")
    dashboard.save_screenshot(str(stack.run_dir / "dashboard-order.png"))
    assert console_errors(dashboard) == []
