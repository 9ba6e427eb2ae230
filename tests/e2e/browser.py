"""Headless Chromium for the browser tests: Debian's `chromium` and `chromium-driver` (installed by
infra/setup-system.sh) driven by Selenium, with no network look-up for a driver."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

T = TypeVar("T")
CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def until(look: Callable[[], T], what: str, timeout: float = 60, interval: float = 0.25) -> T:
    """Poll look() until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        try:
            last = look()
        except StaleElementReferenceException:  # the page re-rendered the element meanwhile
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def _executable(names: tuple[str, ...]) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if found:
            return found
    raise AssertionError(f"none of {names} is installed: `make setup` installs chromium and chromium-driver "
                         "(infra/setup-system.sh)")


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium (1500x1250, the browser's console log kept), quit on leaving."""
    options = webdriver.ChromeOptions()
    options.binary_location = _executable(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1250", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: selenium-manager never looks for one on the network.
    driver = webdriver.Chrome(service=Service(executable_path=_executable((DRIVER,))), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(browser: WebDriver) -> list[dict]:
    """The browser console's errors (level SEVERE) since the last call."""
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
