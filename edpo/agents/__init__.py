"""The four services, one place each: order (it has a database), warehouse, factory, delivery; and
the monitor (it has its dashboard's files), a read model of their events. Each is a package whose
`create_app(settings)` is its composition root, imported only when its worker runs: a warehouse
worker never loads the order service's or the monitor's code."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from edpo.config import WORKERS, Settings
from edpo.runtime.app import ServiceApp, run_worker

# Each kind of worker and the package that is its service.
MODULES = {worker: f"{__name__}.{worker}" for worker in WORKERS}


def create_app(service: str, settings: Settings) -> ServiceApp:
    """One service's app, its module imported now."""
    return import_module(MODULES[service]).create_app(settings)


def run(service: str, settings: Settings, log_file: Path | None = None) -> int:
    """Run one service's worker in the foreground until it is stopped (logging to log_file, else to stderr)."""
    return run_worker(create_app(service, settings), log_file)
