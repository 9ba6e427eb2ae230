"""A small async client for the Camunda 7 engine REST API (the parts EDPO uses)."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from edpo.config import Settings

logger = logging.getLogger(__name__)


class EngineError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"engine answered {status}: {body}")
        self.status = status
        self.body = body

    @property
    def is_no_match(self) -> bool:
        """The message found no process instance waiting for it (yet)."""
        text = json.dumps(self.body) if not isinstance(self.body, str) else self.body
        return self.status == 400 and "MismatchingMessageCorrelationException" in text


def engine_away(e: BaseException) -> bool:
    """The engine cannot be reached or cannot serve (restarting, its database away): an outage,
    not a fault of what was asked."""
    if isinstance(e, EngineError):
        return e.status >= 500
    return isinstance(e, (aiohttp.ClientConnectionError, TimeoutError, OSError))


def variable(value: Any) -> dict[str, Any]:
    """Typed Camunda variable: lists and dicts travel as Spin JSON."""
    if isinstance(value, (dict, list)):
        return {"value": json.dumps(value), "type": "Json"}
    if isinstance(value, bool):
        return {"value": value, "type": "Boolean"}
    if isinstance(value, int):
        return {"value": value, "type": "Integer" if -(2**31) <= value < 2**31 else "Long"}
    if isinstance(value, float):
        return {"value": value, "type": "Double"}
    return {"value": value, "type": "String"}


def basic_authorization(user: str, password: str) -> str:
    """The Authorization header of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


_ID_SEGMENT = re.compile(r"/[0-9a-f]{8}-[0-9a-f-]{27,}|/[A-Za-z0-9_.:-]*\d[A-Za-z0-9_.:-]{7,}")


def request_kind(method: str, path: str) -> str:
    """A request's method and path with its ids replaced ("POST /external-task/{id}/complete"),
    the key under which `Engine.requests` counts it."""
    return f"{method} {_ID_SEGMENT.sub('/{id}', path.split('?', 1)[0])}"


def variables(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: variable(v) for k, v in values.items()}


class Engine:
    """One aiohttp session against /engine-rest, signed in with HTTP basic auth when given a user."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None) -> None:
        """auth: (user, password) sent with every request (HTTP basic auth)."""
        self.base_url = base_url.rstrip("/")
        self.user = auth[0] if auth else None
        # A header rather than aiohttp.BasicAuth, which aiohttp 3.14 deprecates.
        self._headers = {"Authorization": basic_authorization(*auth)} if auth else {}
        self._session: aiohttp.ClientSession | None = None
        # Requests sent, by kind (see request_kind): the benchmark reads them from /health to
        # count the engine round trips per order.
        self.requests: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str | None = None) -> Engine:
        """The engine of the settings (or the one at base_url), as their service account
        EDPO_CAMUNDA_USER / EDPO_CAMUNDA_PASSWORD."""
        return cls(base_url or settings.camunda_url, auth=(settings.camunda_user, settings.camunda_password))

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests[request_kind(method, path)] += 1
        async with self.session.request(method, f"{self.base_url}{path}", **kwargs) as r:
            text = await r.text()
            body: Any = json.loads(text) if text and r.content_type == "application/json" else text
            if r.status == 401:
                raise EngineError(r.status, "the engine wants HTTP basic auth and this client sends none"
                                  if self.user is None else f"the engine refuses the user {self.user!r}: a wrong "
                                  "password (EDPO_CAMUNDA_PASSWORD, RUN_DIR/secrets.env), or locked for a while "
                                  "after wrong ones")
            if r.status >= 300:
                raise EngineError(r.status, body)
            return body

    async def deploy(self, name: str, *files: Path) -> dict[str, Any]:
        """Deploy BPMN files; unchanged resources are not deployed again (duplicate filtering)."""
        form = aiohttp.FormData()
        form.add_field("deployment-name", name)
        form.add_field("enable-duplicate-filtering", "true")
        form.add_field("deploy-changed-only", "true")
        form.add_field("deployment-source", "edpo")
        for f in files:
            form.add_field(f.name, f.read_bytes(), filename=f.name, content_type="application/xml")
        return await self.request("POST", "/deployment/create", data=form)

    async def start_process(self, key: str, business_key: str, values: dict[str, Any]) -> dict[str, Any]:
        return await self.request(
            "POST",
            f"/process-definition/key/{key}/start",
            json={"businessKey": business_key, "variables": variables(values)},
        )

    async def process_instances(self, key: str, business_key: str) -> list[dict[str, Any]]:
        return await self.request(
            "GET", "/process-instance", params={"processDefinitionKey": key, "businessKey": business_key}
        )

    async def history_instances(self, key: str, business_key: str) -> list[dict[str, Any]]:
        return await self.request(
            "GET", "/history/process-instance", params={"processDefinitionKey": key, "processInstanceBusinessKey": business_key}
        )

    async def active_instances(self, key: str, page: int = 500) -> list[dict[str, Any]]:
        """Every running instance of the process (id, businessKey), page by page, in id order.
        Instances that start or end between two pages may be missed or listed twice."""
        found: list[dict[str, Any]] = []
        while True:
            batch = await self.request("GET", "/process-instance", params={
                "processDefinitionKey": key, "firstResult": len(found), "maxResults": page,
                "sortBy": "instanceId", "sortOrder": "asc"})
            found += batch
            if len(batch) < page:
                return found

    async def delete_instance(self, instance_id: str) -> None:
        """End a running instance (no listeners, no IO mappings run); gone already is fine."""
        try:
            await self.request("DELETE", f"/process-instance/{instance_id}",
                               params={"skipCustomListeners": "true", "skipIoMappings": "true"})
        except EngineError as e:
            if e.status != 404:
                raise

    async def waiting_messages(self, instance_id: str) -> list[str]:
        """Names of the messages the instance waits for now."""
        subs = await self.request("GET", "/event-subscription",
                                  params={"processInstanceId": instance_id, "eventType": "message"})
        return [s["eventName"] for s in subs]

    async def variable(self, instance_id: str, name: str) -> Any:
        """One variable's value (None when the instance does not have it)."""
        try:
            found = await self.request("GET", f"/process-instance/{instance_id}/variables/{name}",
                                       params={"deserializeValue": "false"})
        except EngineError as e:
            if e.status == 404:
                return None
            raise
        return found.get("value")

    async def history_values(self, instance_ids: list[str], name: str) -> list[Any]:
        """The values a variable has (or had) in the given instances, running or ended."""
        if not instance_ids:
            return []
        found = await self.request("GET", "/history/variable-instance", params={
            "processInstanceIdIn": ",".join(instance_ids), "variableName": name, "deserializeValues": "false"})
        return [v.get("value") for v in found]

    async def correlate(
        self,
        message: str,
        business_key: str,
        values: dict[str, Any] | None = None,
        correlation_keys: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Correlate a message to the instance waiting for it; raises EngineError when none waits."""
        body: dict[str, Any] = {"messageName": message, "businessKey": business_key, "resultEnabled": True}
        if values:
            body["processVariables"] = variables(values)
        if correlation_keys:
            body["correlationKeys"] = variables(correlation_keys)
        return await self.request("POST", "/message", json=body)

    async def activity_history(self, process_instance_id: str) -> list[dict[str, Any]]:
        return await self.request(
            "GET", "/history/activity-instance", params={"processInstanceId": process_instance_id, "sortBy": "startTime", "sortOrder": "asc"}
        )

    async def ensure_member(self, group: str, group_name: str, user: str) -> bool:
        """Create the (workflow) group if missing and make the user, if it exists, a member.
        Returns whether the user is a member now."""
        try:
            await self.request("GET", f"/group/{group}")
        except EngineError as e:
            if e.status != 404:
                raise
            try:
                await self.request("POST", "/group/create", json={"id": group, "name": group_name, "type": "WORKFLOW"})
            except EngineError:
                if not await self.request("GET", "/group", params={"id": group}):
                    raise  # not a concurrent creation by another worker
        if not await self.request("GET", "/user", params={"id": user}):
            return False
        if not await self.request("GET", "/group", params={"id": group, "member": user}):
            try:
                await self.request("PUT", f"/group/{group}/members/{user}")
            except EngineError:
                if not await self.request("GET", "/group", params={"id": group, "member": user}):
                    raise
        return True

    async def process_view(self, key: str, business_key: str) -> dict[str, Any] | None:
        """Where the order's process instance is: state, the activities it waits at, open user
        tasks and incidents; None when it never had one. The running instance is preferred."""
        history = await self.history_instances(key, business_key)
        if not history:
            return None
        history.sort(key=lambda h: (h["state"] == "ACTIVE", h.get("startTime") or ""))
        instance = history[-1]
        view: dict[str, Any] = {"instance_id": instance["id"], "state": "ended", "waiting_at": [], "user_tasks": [],
                                "incidents": 0}
        if instance["state"] != "ACTIVE":
            return view
        view["state"] = "active"
        try:
            tree = await self.request("GET", f"/process-instance/{instance['id']}/activity-instances")
        except EngineError as e:
            if e.status == 404:  # ended in between
                view["state"] = "ended"
                return view
            raise
        view["waiting_at"] = _leaves(tree)
        tasks = await self.request("GET", "/task", params={"processInstanceId": instance["id"]})
        view["user_tasks"] = [{"id": t["id"], "key": t["taskDefinitionKey"], "name": t["name"], "created": t["created"]}
                              for t in tasks]
        count = await self.request("GET", "/incident/count", params={"processInstanceId": instance["id"]})
        view["incidents"] = int(count.get("count", 0))
        return view


def _leaves(tree: dict[str, Any]) -> list[str]:
    """Names of the innermost activities an instance is at (event subprocesses are scopes)."""
    names: list[str] = []
    for child in tree.get("childActivityInstances", []):
        inner = _leaves(child)
        names += inner or [child.get("activityName") or child.get("activityId", "")]
    return names
