"""The service workers as background processes: one `edpo worker SERVICE` each."""

from __future__ import annotations

import sys
import urllib.request

from edpo.config import SERVICES, Settings
from edpo.dev.process import ManagedProcess, StackError, port_open, wait_until

__all__ = ["SERVICES", "running_workers", "start_worker", "worker_process"]


def worker_process(settings: Settings, service: str, instance: int = 1) -> ManagedProcess:
    name = f"{service}-{instance}"
    return ManagedProcess(name, settings.run_dir / "workers" / f"{name}.pid", settings.log_dir / f"worker-{name}.log")


def _web_ready(settings: Settings, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{settings.host}:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_worker(settings: Settings, service: str, instance: int = 1) -> str:
    """Start one worker in the background and wait until its web server answers."""
    proc = worker_process(settings, service, instance)
    port = settings.web_port(service, instance)
    if proc.running():
        return "already running"
    if port_open(settings.host, port):
        raise StackError(f"worker {service}: port {settings.host}:{port} is taken by another process")
    proc.spawn([sys.executable, "-m", "edpo.cli", "worker", service, "--instance", str(instance)])
    wait_until(lambda: _web_ready(settings, port), timeout=90, what=f"worker {service}-{instance}", proc=proc)
    return "started"


def running_workers(settings: Settings) -> list[ManagedProcess]:
    folder = settings.run_dir / "workers"
    if not folder.is_dir():
        return []
    procs = []
    for pid_file in sorted(folder.glob("*.pid")):
        name = pid_file.stem
        procs.append(ManagedProcess(name, pid_file, settings.log_dir / f"worker-{name}.log"))
    return procs
