"""The service workers as background processes: one `edpo worker SERVICE` each.

A worker counts as up when its /health answers 200: Faust assigned its partitions and restored
its tables, and the service's own checks passed (see `ServiceApp.waiting_for`). A web server
that merely answers is not enough: right after a start it still serves 503s.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edpo.config import Settings
from edpo.dev.process import ManagedProcess, StackError, port_open

__all__ = ["Health", "free_instance", "not_ready_report", "running_instances", "running_workers",
           "spawn_worker", "start_worker", "wait_ready", "worker_health", "worker_process"]


def worker_process(settings: Settings, service: str, instance: int = 1) -> ManagedProcess:
    name = f"{service}-{instance}"
    return _managed(settings, name)


def _managed(settings: Settings, name: str) -> ManagedProcess:
    """A worker writes its own rotating log; its standard output and error (a crash's traceback)
    go to worker-NAME.out beside it."""
    return ManagedProcess(name, settings.run_dir / "workers" / f"{name}.pid", settings.log_dir / f"worker-{name}.log",
                          settings.log_dir / f"worker-{name}.out")


@dataclass(frozen=True)
class Health:
    """One look at a worker: ready or not, and if not, why."""

    ready: bool
    detail: str = ""


def worker_health(settings: Settings, service: str, instance: int = 1) -> Health:
    """GET the worker's /health: 200 is ready; a 503 names what the worker still waits for."""
    url = f"http://{settings.host}:{settings.web_port(service, instance)}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return Health(r.status == 200)
    except urllib.error.HTTPError as e:
        try:
            waiting = json.loads(e.read() or b"{}").get("waiting_for") or []
        except ValueError:
            waiting = []
        return Health(False, f"waiting for {', '.join(waiting)}" if waiting else f"{url} answers {e.code}")
    except OSError:
        return Health(False, f"no answer on {url}")


def spawn_worker(settings: Settings, service: str, instance: int = 1, env: Mapping[str, str] | None = None) -> str:
    """Start one worker in the background, without waiting for it; returns a status word.
    env: variables to set for this worker on top of this process's environment."""
    proc = worker_process(settings, service, instance)
    port = settings.web_port(service, instance)
    if proc.running():
        return "already running"
    if port_open(settings.host, port):
        raise StackError(f"worker {service}: port {settings.host}:{port} is taken by another process")
    proc.spawn([sys.executable, "-m", "edpo.cli", "worker", service, "--instance", str(instance),
                "--log-file", str(proc.log_file)],
               env={**os.environ, **env} if env else None)
    return "started"


def start_worker(settings: Settings, service: str, instance: int = 1, env: Mapping[str, str] | None = None, *,
                 timeout: float | None = None) -> str:
    """Start one worker in the background (env on top of this process's environment) and wait
    until it reports ready (at most timeout seconds, default EDPO_READY_TIMEOUT)."""
    state = spawn_worker(settings, service, instance, env)
    wait_ready(settings, [(service, instance)], timeout=settings.ready_timeout if timeout is None else timeout)
    return state


def not_ready_report(looks: dict[str, Health], timeout: float) -> str:
    """The error `edpo up` ends with: one line per worker that is not ready, with the reason."""
    lines = [f"  {name}: {health.detail}" for name, health in sorted(looks.items()) if not health.ready]
    return f"not every worker was ready within {timeout:.0f}s:\n" + "\n".join(lines)


def wait_ready(
    settings: Settings,
    workers: Sequence[tuple[str, int]],
    *,
    timeout: float,
    on_ready: Callable[[str, float], None] | None = None,
    interval: float = 0.5,
) -> None:
    """Poll every worker's /health until all of them answer ready in the same round.

    Workers of one service rebalance when another one joins, so a worker that was ready may
    be busy again a moment later: only a round in which all are ready ends the wait. on_ready
    is told each worker's name and seconds waited the first time it is ready. Fails early when
    a worker exits, and at the deadline with each worker that is not ready and why."""
    t0 = time.monotonic()
    seen_ready: set[str] = set()
    looks: dict[str, Health] = {}
    while True:
        for service, instance in workers:
            name = f"{service}-{instance}"
            proc = worker_process(settings, service, instance)
            if not proc.running():
                raise StackError(f"worker {name} exited while starting; see {proc.logs}")
            looks[name] = worker_health(settings, service, instance)
            if looks[name].ready and name not in seen_ready:
                seen_ready.add(name)
                if on_ready is not None:
                    on_ready(name, time.monotonic() - t0)
        if all(h.ready for h in looks.values()):
            return
        if time.monotonic() - t0 > timeout:
            raise StackError(not_ready_report(looks, timeout) + f"\n  logs: {settings.log_dir}/worker-*.log (and .out)")
        time.sleep(interval)


def running_workers(settings: Settings) -> list[ManagedProcess]:
    folder = settings.run_dir / "workers"
    if not folder.is_dir():
        return []
    procs = []
    for pid_file in sorted(folder.glob("*.pid")):
        procs.append(_managed(settings, pid_file.stem))
    return procs


def running_instances(settings: Settings, service: str) -> list[int]:
    """The instance numbers of service's workers whose process is alive, lowest first."""
    found = []
    for proc in running_workers(settings):
        name, _, number = proc.name.rpartition("-")
        if name == service and number.isdigit() and proc.running():
            found.append(int(number))
    return sorted(found)


def free_instance(settings: Settings, service: str) -> int:
    """The lowest instance number of service with no worker alive: where one more worker joins
    (2 beside a single worker, 3 beside `edpo up --instances 2`)."""
    taken = set(running_instances(settings, service))
    return next(n for n in itertools.count(1) if n not in taken)
