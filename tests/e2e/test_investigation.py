"""People in the loop with the whole stack: the order deadline's "Investigate order", and a
dispatcher deciding an overdue delivery in Tasklist (headless Chromium, as a person would).

`make test` runs the stack with short deadlines (EDPO_ORDER_DEADLINE=PT30S, EDPO_DELIVERY_TIMEOUT
and EDPO_STOCK_TIMEOUT of seconds: see the Makefile).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.config import Settings
from tests.e2e.browser import chromium
from tests.e2e.conftest import Api, ended_at, eventually, lines

DISPATCHERS = "dispatchers"
SILENT = "No News Lane 7, Bern"  # matches EDPO_SILENT_PATTERN: the courier never reports
LATE = "Late News Road 3, Bern"  # matches EDPO_SILENT_ONCE_PATTERN: only the first courier never reports
TASK_LINKS = "//ol[contains(@class, 'tasks-list')]//h4/a"  # Tasklist's list of tasks
FORM = "form[name=generatedForm]"  # the form Tasklist generates from the BPMN's camunda:formData


def _seconds(duration: str) -> float:
    """Seconds of an ISO 8601 time duration such as PT30S or PT1M30S (the settings' deadlines)."""
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", duration)
    assert match, f"{duration!r}: the test reads only PT..H..M..S durations"
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


async def _dispatcher_tasks(engine: Engine, order_id: str) -> list[dict[str, Any]]:
    """The order's open tasks in the engine's task list of the group dispatchers."""
    return await engine.request("GET", "/task", params={"candidateGroup": DISPATCHERS,
                                                        "processInstanceBusinessKey": order_id})


async def test_an_order_unfinished_at_its_deadline_gets_an_investigation_that_goes_when_it_is_delivered(
        api: Api, engine: Engine, stack: Settings) -> None:
    deadline = _seconds(stack.order_deadline)
    assert deadline <= 120, f"EDPO_ORDER_DEADLINE={stack.order_deadline}: the suite runs with PT30S (Makefile)"
    # The order waits for the factory, which makes one batch of at most factory_capacity units per
    # lead time: ask for so many more than are available that it cannot finish before the deadline
    # (15 s of batches to spare), and the factory ends it afterwards without anyone's help.
    batches = math.ceil((deadline + 15) / max(stack.factory_lead_time, 0.1))
    short = batches * stack.factory_capacity
    sku = "DOCK"
    before = await api.own(sku)  # no batch of an earlier test's lands in the order's wait
    produced_before = await api.produced(sku)
    order = await api.place(lines(sku, before["available"] + short))
    oid = order["order_id"]

    def investigating(o: dict[str, Any]) -> bool:
        return any(t["key"] == "investigate-order" for t in (o["process"] or {}).get("user_tasks", []))

    late = await eventually(lambda: api.order(oid), investigating, deadline + 30, f"an investigation of {oid}")
    assert late["status"] == "AWAITING_STOCK", late
    # The stock timeout's task is open too: nobody decided, the order goes on waiting.
    assert {t["key"] for t in late["process"]["user_tasks"]} == {"investigate-order", "decide-delayed-order"}
    [task] = [t for t in late["process"]["user_tasks"] if t["key"] == "investigate-order"]
    assert task["name"] == "Investigate order"
    listed = await _dispatcher_tasks(engine, oid)
    assert task["id"] in [t["id"] for t in listed], listed

    final = await api.wait_final(oid, timeout=batches * stack.factory_lead_time + 120)
    assert final["status"] == "DELIVERED", final
    assert final["process"]["user_tasks"] == [], final["process"]
    assert await _dispatcher_tasks(engine, oid) == []
    assert await ended_at(engine, oid) == ["EndEvent_OrderDelivered"]
    [instance] = await engine.history_instances(ORDER_FULFILMENT, oid)
    investigations = [a for a in await engine.activity_history(instance["id"])
                      if a["activityId"] == "investigate-order"]
    assert len(investigations) == 1 and investigations[0]["canceled"], investigations
    assert await api.produced(sku) >= produced_before + short, "the factory made what the order lacked"


# -- Tasklist, as the demo dispatcher uses it --

async def _completed_by(engine: Engine, task_id: str) -> str:
    """Who completed the task, from the engine's history (a task that was not completed fails)."""
    [task] = await engine.request("GET", "/history/task", params={"taskId": task_id})
    assert task["deleteReason"] == "completed", task
    return task["assignee"]


class Tasklist:
    """Camunda Tasklist in a browser, driven as a person would: sign in, search, open, claim, decide.
    Tasklist is an AngularJS app: every step waits for what the page shows next."""

    def __init__(self, driver: WebDriver, settings: Settings) -> None:
        self.driver = driver
        self.url = f"{settings.camunda_url.removesuffix('/engine-rest')}/camunda/app/tasklist/"
        self.shots = settings.run_dir
        # The page re-renders its lists as data arrives: an element found a moment ago may be gone.
        self.wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))

    def shot(self, name: str) -> None:
        """A screenshot to RUN_DIR/tasklist-NAME.png, for a person to look at."""
        self.driver.save_screenshot(str(self.shots / f"tasklist-{name}.png"))

    def sign_in(self, user: str, password: str) -> None:
        """Sign in through Tasklist's form; the task list shows."""
        self.driver.get(self.url)
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "input[ng-model=username]"))
                        ).send_keys(user)
        self.driver.find_element(By.CSS_SELECTOR, "input[ng-model=password]").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        try:
            # The first page after signing in loads the filters and counts their tasks: slow on an engine
            # that a loaded machine shares with a stack that has served thousands of orders.
            WebDriverWait(self.driver, 90, ignored_exceptions=(StaleElementReferenceException,)).until(
                EC.element_to_be_clickable((By.CSS_SELECTOR, "input[placeholder='Filter Tasks']")))
        except TimeoutException:
            self.shot("sign-in-failed")
            text = self.driver.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"Tasklist did not show the task list after signing in; it shows: {text[:500]!r}"
                                 ) from None

    def search_order(self, order_id: str) -> None:
        """Narrow the task list to the order: a search on the process instance's business key."""
        self.driver.find_element(By.CSS_SELECTOR, "input[placeholder='Filter Tasks']").click()
        self.wait.until(EC.element_to_be_clickable(
            (By.XPATH, "//a[normalize-space()='Process Instance Business Key']"))).click()
        value = self.wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, ".search-label .value-field input[ng-model='formData.editValue']")))
        value.send_keys(order_id + Keys.ENTER)
        self.wait.until(lambda d: "processInstanceBusinessKey" in d.current_url)

    def listed(self, name: str = "") -> list[str]:
        """Ids of the tasks in the list (those called name, if given)."""
        named = f"[normalize-space()='{name}']" if name else ""
        links = self.driver.find_elements(By.XPATH, f"{TASK_LINKS}{named}")
        return [link.get_attribute("href").rsplit("task=", 1)[-1] for link in links]

    def open(self, name: str, other_than: str = "", timeout: float = 60) -> str:
        """Open the listed task called name (not the one other_than) and return its id; the list is
        loaded again until it shows one (Tasklist lists a task created meanwhile on the next load)."""
        def found(driver: WebDriver) -> str | None:
            tasks = [task for task in self.listed(name) if task != other_than]
            if not tasks:
                driver.refresh()
            return tasks[0] if tasks else None

        task_id = WebDriverWait(self.driver, timeout, poll_frequency=1,
                                ignored_exceptions=(StaleElementReferenceException,)).until(found)
        self.wait.until(EC.element_to_be_clickable((By.XPATH, f"{TASK_LINKS}[contains(@href, '{task_id}')]"))).click()
        self.wait.until(lambda d: d.current_url.endswith(f"task={task_id}"))
        self.wait.until(EC.visibility_of_element_located(
            (By.XPATH, f"//section[contains(@class, 'task-details')]//h2[normalize-space()='{name}']")))
        self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"{FORM} select[name=decision]")))
        return task_id

    def field(self, name: str) -> str:
        """The value the task's form shows in a field."""
        selector = f"{FORM} [name={name}]"
        return self.wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector).get_attribute("value"))

    def groups(self) -> str:
        """The candidate groups the open task shows (their names)."""
        return self.wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "ul.actors li.groups a").text)

    def claim(self) -> None:
        """Claim the open task: the form becomes editable."""
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button.claim"))).click()
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"{FORM} select[name=decision]")))

    def decide(self, decision: str, task_id: str) -> None:
        """Choose the decision in the form and complete the task; it leaves the list."""
        def chosen(driver: WebDriver) -> bool:
            choice = Select(driver.find_element(By.CSS_SELECTOR, f"{FORM} select[name=decision]"))
            choice.select_by_value(decision)
            return choice.first_selected_option.get_attribute("value") == decision

        self.wait.until(chosen)
        self.shot(f"{decision}-chosen")
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[ng-click='complete()']"))).click()
        self.wait.until(lambda _: task_id not in self.listed())


@pytest.fixture(scope="module")
def tasklist(stack: Settings) -> Iterator[Tasklist]:
    with chromium() as driver:
        page = Tasklist(driver, stack)
        page.sign_in(stack.camunda_admin_user, stack.camunda_admin_password)
        page.shot("signed-in")
        yield page


async def test_the_demo_user_is_a_dispatcher(engine: Engine, stack: Settings) -> None:
    members = await engine.request("GET", "/user", params={"memberOfGroup": DISPATCHERS})
    assert stack.camunda_admin_user in [user["id"] for user in members], members


async def _overdue_order(api: Api, sku: str, address: str) -> tuple[str, dict[str, Any]]:
    """An order of one unit of sku (received for it) whose delivery is overdue; (order id, the
    sku's stock before the order)."""
    settled = await api.own(sku)
    await api.receive(sku, 1)  # the unit this order takes
    before = await eventually(lambda: api.stock(sku), lambda s: s["on_hand"] == settled["on_hand"] + 1, 30,
                              f"the {sku} receipt to be booked")
    oid = (await api.place([(sku, 1)], address=address))["order_id"]
    await eventually(lambda: api.order(oid), lambda o: any(
        t["key"] == "resolve-overdue-delivery" for t in (o["process"] or {}).get("user_tasks", [])), 60,
        f"the overdue delivery of {oid}")
    return oid, before


async def test_a_dispatcher_in_tasklist_retries_a_late_delivery_and_the_order_is_delivered(
        api: Api, engine: Engine, stack: Settings, tasklist: Tasklist) -> None:
    assert re.search(stack.silent_once_pattern, LATE, re.IGNORECASE), (LATE, stack.silent_once_pattern)
    sku = "WEBCAM"
    oid, before = await _overdue_order(api, sku, LATE)

    tasklist.search_order(oid)
    task = tasklist.open("Resolve overdue delivery")
    assert oid in tasklist.field("order_summary") and tasklist.field("delivery_attempt") == "1"
    tasklist.claim()
    assert (await engine.request("GET", f"/task/{task}"))["assignee"] == stack.camunda_admin_user
    tasklist.decide("retry", task)  # courier 1 called back, courier 2 sent: it reports
    tasklist.shot("retried")
    assert await _completed_by(engine, task) == stack.camunda_admin_user
    final = await api.wait_final(oid, timeout=60)
    assert final["status"] == "DELIVERED", final
    assert await ended_at(engine, oid) == ["EndEvent_OrderDelivered"]
    courier = await api.courier(oid)
    assert {n: a["status"] for n, a in courier["attempts"].items()} == {"1": "withdrawn", "2": "delivered"}
    after = await eventually(lambda: api.stock(sku), lambda s: s["on_hand"] == before["on_hand"] - 1, 30,
                             f"the delivered {sku} to leave the books")
    assert after["reserved"] == before["reserved"] and after["available"] == before["available"] - 1, (before, after)


async def test_a_dispatcher_in_tasklist_retries_then_cancels_a_silent_delivery_and_the_stock_comes_back(
        api: Api, engine: Engine, stack: Settings, tasklist: Tasklist) -> None:
    assert re.search(stack.silent_pattern, SILENT, re.IGNORECASE), f"{SILENT!r} against {stack.silent_pattern!r}"
    sku = "HEADSET"
    oid, before = await _overdue_order(api, sku, SILENT)
    out = await api.stock(sku)
    assert out["available"] == before["available"] - 1, (before, out)

    tasklist.search_order(oid)
    first = tasklist.open("Resolve overdue delivery")
    assert oid in tasklist.field("order_summary") and tasklist.field("delivery_attempt") == "1"
    assert tasklist.groups() == "Dispatchers"
    tasklist.claim()
    tasklist.shot("claimed")
    assert (await engine.request("GET", f"/task/{first}"))["assignee"] == stack.camunda_admin_user
    tasklist.decide("retry", first)  # courier 1 called back, courier 2 (as silent) sent
    assert await _completed_by(engine, first) == stack.camunda_admin_user
    attempts = await eventually(lambda: api.courier(oid), lambda c: len(c["attempts"]) == 2, 30,
                                f"a second courier for {oid}")
    assert {n: a["status"] for n, a in attempts["attempts"].items()} == {"1": "withdrawn", "2": "in_transit"}

    second = tasklist.open("Resolve overdue delivery", other_than=first)
    assert tasklist.field("delivery_attempt") == "2"
    tasklist.claim()
    tasklist.decide("cancel", second)
    tasklist.shot("cancelled")
    assert await _completed_by(engine, second) == stack.camunda_admin_user
    final = await api.wait_final(oid, timeout=60)
    assert final["status"] == "CANCELLED", final
    assert "overdue" in [h for h in final["history"] if h["status"] == "CANCELLED"][0]["detail"]
    assert await ended_at(engine, oid) == ["EndEvent_OrderCancelled"]
    after = await eventually(lambda: api.stock(sku), lambda s: s["available"] == before["available"], 30,
                             f"the {sku} back in stock")
    assert after == before, "the books are as before the order"
