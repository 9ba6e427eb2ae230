"""In-memory stand-ins for what the service handlers are given: tables, the publisher, the
command client, the order store, and the Camunda library's external tasks."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from camunda.external_task.external_task import ExternalTask

from edpo.domain.order import NewOrder
from edpo.models import Message

T = TypeVar("T")


class MemoryTable(Generic[T]):
    """A `Table` over a dict. Values are copied in and out, as the real table (de)serializes them,
    so a handler that changes a value without `set` leaves the table unchanged."""

    def __init__(self, rows: dict[str, T] | None = None) -> None:
        self.rows: dict[str, T] = {k: copy.deepcopy(v) for k, v in (rows or {}).items()}

    def get(self, key: str) -> T | None:
        return copy.deepcopy(self.rows.get(key))

    def set(self, key: str, value: T) -> None:
        self.rows[key] = copy.deepcopy(value)

    def delete(self, key: str) -> None:
        self.rows.pop(key, None)

    def local_items(self) -> list[tuple[str, T]]:
        return [(k, copy.deepcopy(v)) for k, v in self.rows.items()]


class RecordingPublish:
    """A `Publish` that keeps every message (`sent`) and every call with its `wait` flag (`calls`)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.calls: list[tuple[tuple[Message, ...], bool]] = []

    async def __call__(self, *messages: Message, wait: bool = False) -> None:
        self.sent.extend(messages)
        self.calls.append((messages, wait))

    def types(self) -> list[type[Message]]:
        return [type(m) for m in self.sent]


class FakeCommands:
    """A `Commands` whose requests are answered by `answer(command)`, like the real client only with
    one of the reply types the caller waits for."""

    def __init__(self, answer: Callable[[Message], Message] | None = None) -> None:
        self.answer = answer
        self.sent: list[Message] = []
        self.requested: list[tuple[Message, tuple[type[Message], ...]]] = []

    async def send(self, command: Message) -> None:
        self.sent.append(command)

    async def request(self, command: Message, *, replies: tuple[type[Message], ...]) -> Message:
        self.requested.append((command, replies))
        assert self.answer is not None, f"unexpected request {command.type}"
        reply = self.answer(command)
        assert isinstance(reply, replies), f"{reply.type} does not answer a wait for {replies}"
        return reply


class FakeOrderStore:
    """An order `Store` (what the order handlers and the REST API use) with canned results."""

    def __init__(self, *, status: str | None = None, queued: bool = False, created: bool = True) -> None:
        self.status, self.queued, self.created = status, queued, created
        self.recorded: list[Message] = []
        self.placed: list[tuple[NewOrder, str | None]] = []
        self.cancelled: list[tuple[str, str, str]] = []

    async def record_event(self, msg: Message) -> tuple[str | None, bool]:
        self.recorded.append(msg)
        return self.status, self.queued

    async def create(self, new: NewOrder, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        self.placed.append((new, idempotency_key))
        return {"order_id": "o-1"}, self.created

    async def cancel(self, order_id: str, reason: str, source: str) -> bool:
        self.cancelled.append((order_id, reason, source))
        return True

    async def get(self, order_id: str) -> dict[str, Any] | None:
        return {"order_id": order_id} if order_id == "o-1" else None

    async def find(self, status: str | None, limit: int,
                   after: tuple[datetime, str] | None = None) -> tuple[list[dict[str, Any]], str | None]:
        return [{"order_id": "o-1"}], None

    async def request_cancel(self, order_id: str, reason: str) -> tuple[str, dict[str, Any] | None]:
        self.cancelled.append((order_id, reason, "customer"))
        return ("accepted", {"order_id": order_id}) if order_id == "o-1" else ("unknown", None)


def _typed(value: Any) -> dict[str, Any]:
    """A process variable as the engine sends it."""
    if isinstance(value, bool):
        return {"type": "Boolean", "value": value}
    if isinstance(value, int):
        return {"type": "Integer", "value": value}
    if isinstance(value, (list, dict)):
        return {"type": "Json", "value": json.dumps(value)}
    return {"type": "String", "value": value}


def external_task(topic: str, business_key: str = "o-1", **variables: Any) -> ExternalTask:
    """A fetched external task; lists and dicts become Json variables, as the process stores them."""
    return ExternalTask({
        "id": "t1",
        "topicName": topic,
        "businessKey": business_key,
        "workerId": "w",
        "variables": {name: _typed(value) for name, value in variables.items()},
    })
