"""The four services, one place each: order (a package: it has a database), warehouse, factory,
delivery; and the monitor (a package: it has its dashboard's files), a read model of their
events. Each exposes `create_app(settings)`, its composition root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edpo.agents import delivery, factory, monitor, order, warehouse
from edpo.config import Settings
from edpo.runtime.app import ServiceApp, run_worker

APPS: dict[str, Callable[[Settings], ServiceApp]] = {
    "order": order.create_app,
    "warehouse": warehouse.create_app,
    "factory": factory.create_app,
    "delivery": delivery.create_app,
    "monitor": monitor.create_app,
}


def run(service: str, settings: Settings, log_file: Path | None = None) -> int:
    """Run one service's worker in the foreground until it is stopped (logging to log_file, else to stderr)."""
    return run_worker(APPS[service](settings), log_file)
