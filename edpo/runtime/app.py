"""The Faust app of one service worker, built from settings passed in (never read at import).

`ServiceApp` carries what every service needs: its settings, the one publisher, readiness for
`/health`, resources that start and stop with the worker, the agent loop and timers that
survive their own failures.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import Any

import faust
import mode

from edpo.camunda.engine import Engine
from edpo.camunda.worker import TaskHandler, TaskWorker
from edpo.config import Settings
from edpo.runtime.consume import Handler, consume
from edpo.runtime.publish import Publisher, raw_topic
from edpo.runtime.tables import StructTable, T
from edpo.topics import TopicSpec

logger = logging.getLogger(__name__)


class ServiceApp(faust.App):
    """A Faust app for one instance of one service: RocksDB tables, its own web port and data dir."""

    def __init__(self, service: str, settings: Settings) -> None:
        port = settings.web_port(service)
        super().__init__(
            f"edpo-{service}",
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="rocksdb://",  # rocksdict under the hood (faust-streaming[rocksdict])
            datadir=str(settings.run_dir / "faust" / f"{service}-{settings.instance}"),
            web_host=settings.host,
            web_bind=settings.host,
            web_port=port,
            # How other workers of this service reach this one (table routing): not the hostname.
            canonical_url=f"http://{settings.host}:{port}",
            topic_partitions=settings.partitions,
            topic_replication_factor=1,
            # Standby copies would make local table scans (timers) see other workers' keys.
            table_standby_replicas=0,
            producer_acks=-1,
            consumer_auto_offset_reset="earliest",
            broker_commit_every=100,
            broker_commit_interval=1.0,
            stream_wait_empty=False,
        )
        self.service_name = service
        self.settings = settings
        self.publisher = Publisher(self)
        # Cleared by a service whose resources are not usable yet; /health answers 503 meanwhile.
        self.ready = asyncio.Event()
        self.ready.set()
        self._resources: list[mode.ServiceT] = []

        @self.page("/health")
        async def health(web: Any, request: Any) -> Any:
            """200 once the worker can serve requests, 503 while it starts."""
            ready = self.ready.is_set()
            body = {"service": service, "instance": settings.instance, "status": "ok" if ready else "starting"}
            return web.json(body, status=200 if ready else 503)

    async def on_first_start(self) -> None:
        self.conf.datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
        await super().on_first_start()

    def start_with(self, resource: mode.ServiceT) -> None:
        """Start resource (a pool, a client, a poller) once the worker runs; stop it with the worker."""
        self._resources.append(resource)

    async def on_started(self) -> None:
        await super().on_started()
        for resource in self._resources:
            await self.add_runtime_dependency(resource)

    async def on_stop(self) -> None:
        await super().on_stop()
        if "engine" in self.__dict__:
            await self.engine.close()

    @cached_property
    def engine(self) -> Engine:
        """This worker's one HTTP session to the Camunda engine, closed when the worker stops."""
        return Engine(self.settings.camunda_url)

    def serve_tasks(self, handlers: dict[str, TaskHandler]) -> None:
        """Run this service's external-task handlers ({BPMN topic: handler}) inside its worker."""
        s = self.settings
        worker_id = f"{self.service_name}-{s.instance}-{os.getpid()}"
        self.start_with(TaskWorker(self.engine, worker_id, handlers, lock_seconds=s.task_lock, batch=s.task_batch,
                                   pollers=s.task_pollers))

    def struct_table(self, name: str, type_: type[T], *, help: str) -> StructTable[T]:
        return StructTable(self, name, type_, help=help)

    def agent_over(self, name: str, handle: Handler, *specs: TopicSpec) -> None:
        """An agent over specs that hands every decoded message to handle (see runtime.consume)."""

        async def agent(stream: faust.StreamT) -> None:
            await consume(stream.events(), handle, name=name, publish=self.publisher.publish)

        agent.__name__ = agent.__qualname__ = name
        agent.__doc__ = handle.__doc__
        self.agent(raw_topic(self, *specs), name=name)(agent)

    def every(self, interval: float, tick: Callable[[], Awaitable[None]]) -> None:
        """Run tick every interval seconds; a failing tick is logged and the next one runs
        (faust stops a timer that raises)."""

        async def guarded() -> None:
            try:
                await tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - next tick tries again
                logger.exception("timer %s failed", tick.__name__)

        guarded.__name__ = guarded.__qualname__ = tick.__name__
        guarded.__doc__ = tick.__doc__
        self.timer(interval=interval, name=f"{self.service_name}.{tick.__name__}")(guarded)


def error_json(web: Any, status: int, field: str, message: str) -> Any:
    """The error body every EDPO endpoint uses: {"errors": [{"field", "message"}]}."""
    return web.json({"errors": [{"field": field, "message": message}]}, status=status)


def run_worker(app: ServiceApp) -> int:
    """Run the app's Faust worker in the foreground until it is stopped."""
    level = app.settings.log_level.replace("warning", "warn")
    faust.Worker(app, loglevel=level).execute_from_commandline()
    return 0
