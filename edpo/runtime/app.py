"""The Faust app of one service worker, built from settings passed in (never read at import).

`ServiceApp` carries what every service needs: its settings, the one publisher, readiness for
`/health`, Prometheus metrics at `/metrics`, resources that start and stop with the worker, the
agent loop and timers that survive their own failures.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import faust
import mode
from aiohttp import web

from edpo.camunda.engine import Engine
from edpo.camunda.worker import TaskHandler, TaskWorker
from edpo.config import Settings
from edpo.logs import logging_config
from edpo.models.api import Health
from edpo.runtime.consume import TRANSIENT, Handlers, consume
from edpo.runtime.failpoints import Failpoints
from edpo.runtime.http import MAX_BODY, Answer, Api, Call, Reply, error_body, swagger_assets
from edpo.runtime.metrics import CONTENT_TYPE, Metrics
from edpo.runtime.publish import Publisher, raw_topic
from edpo.runtime.tables import StructTable, T
from edpo.runtime.retry import STARTUP
from edpo.topics import TopicSpec, ensure_topics

logger = logging.getLogger(__name__)
# Seconds a readiness check may take before /health counts it as not passed.
READY_CHECK_TIMEOUT = 2.0
# Faust's views of one table, by name (faust.web.apps.tables and .router).
FAUST_TABLE_VIEWS = ("/table/{name}/", "/router/{name}/")


class ServiceApp(faust.App):
    """A Faust app for one instance of one service: RocksDB tables, its own web port and data dir."""

    def __init__(self, service: str, settings: Settings, *, title: str = "", description: str = "") -> None:
        port = settings.web_port(service)
        # The service's HTTP contract: operations declared by the service, /openapi.json, /docs,
        # and the guard every request passes (token, error bodies, outages -> 503).
        self.api = Api(title or f"EDPO {service} service", description, token=settings.api_token)
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
            # Records produced within a few ms share one request: fewer requests for Kafka and the
            # worker to handle (EDPO_KAFKA_LINGER_MS; docs/benchmarks.md).
            producer_linger=settings.kafka_linger_ms / 1000,
            consumer_auto_offset_reset="earliest",
            broker_commit_every=100,
            broker_commit_interval=1.0,
            stream_wait_empty=False,
            # A worker killed with -9 sends no LeaveGroup: Kafka waits for its session to expire before
            # it hands the partitions on (faust's default: 60 s). With a fixed instance id (static
            # membership) the restarted worker takes its place at once; see docs/recovery-measurements.md.
            broker_session_timeout=settings.kafka_session_timeout,
            broker_heartbeat_interval=settings.kafka_heartbeat_interval,
            consumer_group_instance_id=(f"{service}-{settings.instance}" if settings.kafka_static_membership
                                        else None),
            # A changelog topic Faust creates a moment before the first assignment can be missing from
            # the consumer's metadata; Faust then leaves its partitions unassigned until the next metadata
            # refresh (default: 5 min), whose change makes the group rebalance. /health waits for it.
            consumer_metadata_max_age_ms=10_000,
            web_application_options={"client_max_size": MAX_BODY,
                                     "middlewares": [self.api.guard(TRANSIENT), self._known_tables_only]},
        )
        self.service_name = service
        self.settings = settings
        self.failpoints = Failpoints(settings.failpoints, service)
        # A registry of this worker's own: several apps in one process (tests) do not collide.
        self.metrics = Metrics(service)
        self.publisher = Publisher(self, self.failpoints, self.metrics)
        # Cleared by a service whose resources are not usable yet; /health answers 503 meanwhile.
        self.ready = asyncio.Event()
        self.ready.set()
        # The service's own conditions for being ready ({what: check}), besides Faust's recovery.
        self._ready_checks: dict[str, Callable[[], Awaitable[bool]]] = {
            "changelog partitions assigned": self._changelogs_assigned,
        }
        self._resources: list[mode.ServiceT] = []
        # Named reports that /health includes (e.g. the outbox's unanswered commands); and
        # counters of what reliability loops found, also shown there.
        self.health_details: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {}
        self.counters: dict[str, int] = {}

        @self.api.operation("GET", "/health", summary="Is this worker ready?", open=True, tag="operations", answers={
            200: Answer("Ready: partitions assigned, tables recovered, the service's own checks passed", Health),
            503: Answer("Starting or rebalancing; waiting_for names what it waits for", Health)})
        async def health(call: Call) -> Reply:
            """200 once the worker is ready (partitions assigned, tables recovered, the service's own
            checks passed); 503 naming what it waits for while it starts or rebalances. Open to all."""
            waiting = await self.waiting_for()
            ready = not waiting
            body: dict[str, Any] = {"service": service, "instance": settings.instance,
                                    "status": "ok" if ready else "starting"}
            if waiting:
                body["waiting_for"] = waiting
            for name, report in self.health_details.items():
                try:
                    body[name] = await report()
                except Exception as e:  # noqa: BLE001 - a report failing must not fail the probe
                    body[name] = {"error": f"{type(e).__name__}: {e}"}
            if self.counters:
                body["counters"] = dict(sorted(self.counters.items()))
            if "engine" in self.__dict__ and self.engine.requests:
                body["engine_requests"] = dict(sorted(self.engine.requests.items()))
            return Reply(200 if ready else 503, body)

        self.metrics.collect_counters("edpo_health_counters", "The counters /health shows (reconciliation "
                                      "findings, commands unanswered), by name", "name", lambda: self.counters)
        self.metrics.collect_counters("edpo_engine_requests", "Requests sent to the Camunda engine's REST API, by "
                                      "kind (method and path, ids replaced)", "kind",
                                      lambda: self.engine.requests if "engine" in self.__dict__ else None)

        @self.api.operation("GET", "/metrics", summary="Prometheus metrics", tag="operations", answers={
            200: Answer("Every metric of this worker in Prometheus's text format (version 0.0.4); see the README's "
                        "Metrics section", str, media_type="text/plain")})
        async def metrics(call: Call) -> web.Response:
            """This worker's metrics for Prometheus: events, handler and external-task latencies, dead
            letters, and the service's state read at scrape time (a part that cannot be read within
            2 s is left out and counted in edpo_scrape_errors_total). Needs the token when set."""
            return web.Response(body=await self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def on_first_start(self) -> None:
        self.conf.datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
        self.mount_api()  # before the web server starts
        await super().on_first_start()

    @web.middleware
    async def _known_tables_only(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """404 naming the tables for Faust's views of a table this service does not have (after the
        guard): Faust's /router/{name}/ raised KeyError there, a 500, and its key views answered 503."""
        route = request.match_info.route
        pattern = route.resource.canonical if route.resource is not None else ""
        name = request.match_info.get("name", "")
        if pattern.startswith(FAUST_TABLE_VIEWS) and name not in self.tables:
            return error_body(404, "name", f"no table {name!r}; this service has "
                              f"{', '.join(sorted(self.tables)) or 'none'}")
        return await handler(request)

    def mount_api(self) -> None:
        """Add the service's operations, /openapi.json and /docs to the web server's routes; Faust adds
        its own views (/, /table/, /router/) when the server starts (`self.web.init_server()`)."""
        self.api.mount(self.web.web_app.router, swagger_assets())

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter shown by /health (what reconciliation and retries found)."""
        self.counters[name] = self.counters.get(name, 0) + n

    def ready_when(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Report not ready (waiting for `what`) on /health until check() returns true."""
        self._ready_checks[what] = check

    async def waiting_for(self) -> list[str]:
        """What this worker still waits for before it is ready; empty once it is."""
        passed = {"service start-up": self.ready.is_set()}
        for what, check in self._ready_checks.items():
            try:
                passed[what] = bool(await asyncio.wait_for(check(), READY_CHECK_TIMEOUT))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a check that cannot tell yet is not passed
                logger.debug("readiness check %r: %s: %s", what, type(e).__name__, e)
                passed[what] = False
        return readiness_gaps(recovered=self.tables.recovery.completed.is_set(), rebalancing=self.rebalancing,
                              checks=passed)

    async def _changelogs_assigned(self) -> bool:
        """Every partition of every table's changelog is assigned to a worker of this service."""
        for table in self.tables.values():
            topic = table.changelog_topic.get_topic_name()
            hosts = self.router.table_metadata(table.name).values()
            assigned = {p for partitions in hosts for p in partitions.get(topic, ())}
            if len(assigned) < self.conf.topic_partitions:
                return False
        return True

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
        return Engine.from_settings(self.settings)

    def serve_tasks(self, handlers: dict[str, TaskHandler]) -> None:
        """Run this service's external-task handlers ({BPMN topic: handler}) inside its worker."""
        s = self.settings
        worker_id = f"{self.service_name}-{s.instance}-{os.getpid()}"
        self.start_with(TaskWorker(self.engine, worker_id, handlers, lock_seconds=s.task_lock, batch=s.task_batch,
                                   pollers=s.task_pollers, concurrency=s.task_concurrency, retries=s.task_retries,
                                   retry_timeout_ms=int(s.task_retry_backoff * 1000), failpoint=self.failpoints.hit,
                                   observe=self.metrics.external_task))

    def struct_table(self, name: str, type_: type[T], *, help: str) -> StructTable[T]:
        return StructTable(self, name, type_, help=help, failpoints=self.failpoints)

    def agent_over(self, name: str, handlers: Handlers, *specs: TopicSpec, read_model: bool = False) -> None:
        """An agent over specs that hands each decoded message to the handler declared for its type
        and skips the others (see runtime.consume); read_model: it never dead-letters (the monitor)."""
        declared = {t for spec in specs for t in spec.types}
        strays = sorted(t.__name__ for t in handlers if t not in declared)
        if strays:
            raise ValueError(f"agent {name} has handlers for {', '.join(strays)}, on none of its topics")

        # Each handler runs as it is unless EDPO_FAILPOINTS arms before_handle.
        guarded = {kind: self.failpoints.before_handle(handle) for kind, handle in handlers.items()}

        async def agent(stream: faust.StreamT) -> None:
            await consume(stream.events(), guarded, name=name, publish=self.publisher.publish,
                          metrics=self.metrics.agent(name), read_model=read_model)

        agent.__name__ = agent.__qualname__ = name
        agent.__doc__ = f"Handles {', '.join(sorted(t.__name__ for t in handlers))}."
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


def readiness_gaps(*, recovered: bool, rebalancing: bool, checks: Mapping[str, bool]) -> list[str]:
    """What keeps a worker from being ready; empty when it is ready.

    Ready: Faust has assigned the worker its partitions and restored its tables from their
    changelogs (the first recovery completed, no rebalance under way since), and every check
    of the service itself passed."""
    gaps = []
    if not recovered:
        gaps.append("partition assignment and table recovery")
    elif rebalancing:
        gaps.append("rebalance")
    gaps.extend(what for what, passed in checks.items() if not passed)
    return gaps


def run_worker(app: ServiceApp, log_file: Path | None = None) -> int:
    """Run the app's Faust worker in the foreground until it is stopped; it logs to log_file
    (rotated at EDPO_LOG_MAX_MB) or, without one, to standard error, in EDPO_LOG_FORMAT."""
    if app.settings.event_loop == "uvloop":
        # Every loop of the worker (Faust's consumer thread makes its own) is a uvloop loop.
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Faust creates its tables' changelog topics while its consumer subscribes to them. On a
    # fresh cluster under load the subscription saw them missing, and Faust then refused every
    # table write (PartitionsMismatch: "0 partitions") until the consumer's metadata was
    # refreshed, minutes later. Created beforehand, compacted as Faust would, they are there.
    changelogs = tuple(table.changelog_topic_name for table in app.tables.values())
    asyncio.run(STARTUP.retry("changelog topics", lambda: ensure_topics(
        app.settings.kafka_bootstrap, app.settings.partitions, compacted=changelogs)))
    s = app.settings
    level = s.log_level.replace("warning", "warn")
    # Faust's worker sets up logging itself, from this configuration: every record (Faust's,
    # aiokafka's, the Camunda client's, EDPO's) gets the service and the ids of what is handled.
    config = logging_config(service=app.service_name, instance=s.instance, level=s.log_level, log_format=s.log_format,
                            log_file=log_file, max_bytes=s.log_max_mb * 1024 * 1024, backups=s.log_backups)
    faust.Worker(app, loglevel=level, logging_config=config).execute_from_commandline()
    return 0
