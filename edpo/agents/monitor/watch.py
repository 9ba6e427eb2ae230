"""What the monitor reads from outside Kafka's event topics: the engine (open user tasks,
incidents, one order's process history) and Kafka itself (consumer lag per service).

Looked at every few seconds, and only while someone watches the dashboard (a request in the
last WATCHED seconds): an idle dashboard costs the engine and the broker nothing. What was
seen last is kept in memory (a cache: a restart only means one empty look).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import mode
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.domain.monitor import Step, engine_time, process_steps

logger = logging.getLogger(__name__)
# Seconds after the last dashboard request during which the engine and Kafka are still looked at.
WATCHED = 30.0
LISTED = 20  # user tasks and incidents listed (their counts are exact)
GROUP_PREFIX = "edpo-"


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """An open user task or an incident, with where to act on it."""

    id: str
    name: str
    order_id: str
    created: datetime | None
    url: str
    detail: str = ""


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    items: list[Link]
    url: str  # where to see them all


class GroupLag(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer group's lag: records on its topics it has not committed yet."""

    group: str
    lag: int
    partitions: int
    topics: list[str]


class Outside(msgspec.Struct, frozen=True, kw_only=True):
    """The last look at the engine and at Kafka; `errors` says what could not be looked at."""

    time: datetime | None = None
    escalations: Listing = Listing(count=0, items=[], url="")
    incidents: Listing = Listing(count=0, items=[], url="")
    lag: list[GroupLag] = []
    errors: list[str] = []


class Urls:
    """Where Cockpit and Tasklist show an instance or a task (the engine's own web apps)."""

    def __init__(self, webapp: str) -> None:
        self.webapp = webapp.rstrip("/")

    @property
    def cockpit(self) -> str:
        return f"{self.webapp}/cockpit/default/#/processes"

    @property
    def tasklist(self) -> str:
        return f"{self.webapp}/tasklist/default/"

    def instance(self, instance_id: str) -> str:
        return f"{self.webapp}/cockpit/default/#/process-instance/{instance_id}/runtime"

    def task(self, task_id: str) -> str:
        return f"{self.webapp}/tasklist/default/#/?task={task_id}"



class Process(msgspec.Struct, frozen=True, kw_only=True):
    """An order's process instances in the engine: their steps, links, and open user tasks."""

    instances: list[dict[str, str]]  # id, state, url
    steps: list[Step]
    open_tasks: list[Link]
    error: str = ""


async def lag_of_groups(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> list[GroupLag]:
    """Every EDPO consumer group's lag: end offsets minus committed offsets, summed over its partitions."""
    groups = sorted(g for g, *_ in await admin.list_consumer_groups() if g.startswith(GROUP_PREFIX))
    committed: dict[str, dict[TopicPartition, int]] = {}
    for group in groups:
        offsets = await admin.list_consumer_group_offsets(group)
        committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    every = sorted({tp for offsets in committed.values() for tp in offsets})
    ends = await consumer.end_offsets(every) if every else {}
    found = []
    for group in groups:
        offsets = committed[group]
        lag = sum(max(0, ends.get(tp, offset) - offset) for tp, offset in offsets.items())
        found.append(GroupLag(group=group, lag=lag, partitions=len(offsets),
                              topics=sorted({tp.topic for tp in offsets})))
    return found


class Watcher(mode.Service):
    """Looks at the engine and at Kafka every `interval` seconds while the dashboard is watched."""

    def __init__(self, engine: Engine, bootstrap: str, urls: Urls, *, interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.engine = engine
        self.bootstrap = bootstrap
        self.urls = urls
        self.interval = interval
        self.clock = clock
        self.last = Outside()
        self.version = 0
        self._watched_until = 0.0
        self._wake = asyncio.Event()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def watched(self) -> None:
        """Someone looks at the dashboard: keep looking for WATCHED seconds (at once if idle)."""
        idle = self.clock() >= self._watched_until
        self._watched_until = self.clock() + WATCHED
        if idle:
            self._wake.set()

    @mode.Service.task
    async def _keep_looking(self) -> None:
        while not self.should_stop:
            if self.clock() < self._watched_until:
                self.last = await self.look()
                self.version += 1
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    async def on_stop(self) -> None:
        await self._close_kafka()

    async def _close_kafka(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                try:
                    await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
                except Exception:  # noqa: BLE001 - closing a client that failed
                    logger.debug("closing a Kafka client failed", exc_info=True)
        self._admin = self._consumer = None

    async def look(self) -> Outside:
        """One look at the engine and at Kafka; what fails is named in `errors`, the rest is shown."""
        errors: list[str] = []
        escalations, incidents, lag = self.last.escalations, self.last.incidents, self.last.lag
        try:
            escalations, incidents = await self._engine_lists()
        except Exception as e:  # noqa: BLE001 - an engine away is shown, not fatal
            errors.append(f"engine: {type(e).__name__}: {e}"[:300])
        try:
            lag = await self._lag()
        except Exception as e:  # noqa: BLE001 - a broker away is shown, not fatal
            errors.append(f"kafka: {type(e).__name__}: {e}"[:300])
            await self._close_kafka()
        return Outside(time=datetime.now(UTC), escalations=escalations, incidents=incidents, lag=lag, errors=errors)

    async def _lag(self) -> list[GroupLag]:
        if self._admin is None or self._consumer is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                              enable_auto_commit=False)
            await self._admin.start()
            await self._consumer.start()
        return await lag_of_groups(self._admin, self._consumer)

    async def _engine_lists(self) -> tuple[Listing, Listing]:
        e = self.engine
        task_query = {"processDefinitionKey": ORDER_FULFILMENT}
        tasks, task_count, incidents, incident_count = await asyncio.gather(
            e.request("GET", "/task", params={**task_query, "sortBy": "created", "sortOrder": "desc",
                                              "maxResults": str(LISTED)}),
            e.request("GET", "/task/count", params=task_query),
            e.request("GET", "/incident", params={"processDefinitionKeyIn": ORDER_FULFILMENT,
                                                  "sortBy": "incidentTimestamp", "sortOrder": "desc",
                                                  "maxResults": str(LISTED)}),
            e.request("GET", "/incident/count", params={"processDefinitionKeyIn": ORDER_FULFILMENT}),
        )
        keys = await self._business_keys({t["processInstanceId"] for t in tasks} |
                                         {i["processInstanceId"] for i in incidents})
        escalations = Listing(count=int(task_count["count"]), url=self.urls.tasklist, items=[
            Link(id=t["id"], name=t.get("name") or t.get("taskDefinitionKey", ""),
                 order_id=keys.get(t["processInstanceId"], ""), created=engine_time(t.get("created")),
                 url=self.urls.task(t["id"])) for t in tasks])
        incident_links = Listing(count=int(incident_count["count"]), url=self.urls.cockpit, items=[
            Link(id=i["id"], name=i.get("activityId", ""), order_id=keys.get(i["processInstanceId"], ""),
                 created=engine_time(i.get("incidentTimestamp")), url=self.urls.instance(i["processInstanceId"]),
                 detail=(i.get("incidentMessage") or "")[:300]) for i in incidents])
        return escalations, incident_links

    async def _business_keys(self, instance_ids: set[str]) -> dict[str, str]:
        if not instance_ids:
            return {}
        found = await self.engine.request("GET", "/process-instance",
                                          params={"processInstanceIds": ",".join(sorted(instance_ids))})
        return {p["id"]: p.get("businessKey") or "" for p in found}

    async def process(self, order_id: str) -> Process:
        """The order's process: every instance's activity history and incidents, its open user tasks."""
        e = self.engine
        try:
            instances = await e.history_instances(ORDER_FULFILMENT, order_id)
            steps: list[Step] = []
            open_tasks: list[Link] = []
            listed = []
            for instance in sorted(instances, key=lambda i: i.get("startTime") or ""):
                pid = instance["id"]
                activities, incidents, tasks = await asyncio.gather(
                    e.activity_history(pid),
                    e.request("GET", "/history/incident", params={"processInstanceId": pid}),
                    e.request("GET", "/task", params={"processInstanceId": pid}) if instance["state"] == "ACTIVE"
                    else _nothing(),
                )
                steps += process_steps(activities, incidents)
                open_tasks += [Link(id=t["id"], name=t.get("name") or "", order_id=order_id,
                                    created=engine_time(t.get("created")), url=self.urls.task(t["id"])) for t in tasks]
                # Cockpit (community edition) shows running instances; an ended one is in the steps here.
                listed.append({"id": pid, "state": instance["state"], "url": self.urls.instance(pid)})
        except Exception as exc:  # noqa: BLE001 - the events are shown without the engine's steps
            return Process(instances=[], steps=[], open_tasks=[], error=f"engine: {type(exc).__name__}: {exc}"[:300])
        return Process(instances=listed, steps=steps, open_tasks=open_tasks)


async def _nothing() -> list[Any]:
    return []
