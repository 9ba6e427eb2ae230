"""The four services, one Faust app module each: order, warehouse, factory, delivery."""

from __future__ import annotations

import importlib
import sys


def run_worker(service: str, instance: int = 1) -> int:
    """Run one service's Faust worker in the foreground (EDPO_INSTANCE is already set)."""
    module = importlib.import_module(f"edpo.agents.{service}")
    app = module.app
    level = app.edpo_settings.log_level.replace("warning", "warn")
    sys.argv = [f"edpo-{service}-{instance}", "worker", "--loglevel", level, "--web-port", str(app.conf.web_port)]
    app.main()
    return 0
