"""The loop every agent runs: decode once, skip the unknown, dead-letter the unreadable, survive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from edpo.agents import runtime
from edpo.models import Line, Message, ReserveStock, encode


@dataclass
class FakeRecord:
    topic: str
    partition: int = 0
    offset: int = 0


@dataclass
class FakeEvent:
    value: Any
    key: bytes = b"o-1"
    message: FakeRecord = field(default_factory=lambda: FakeRecord("warehouse-commands"))


class FakeStream:
    def __init__(self, events: list[FakeEvent]) -> None:
        self._events = events

    async def events(self):  # noqa: ANN201
        for e in self._events:
            yield e


class Recorder:
    """Collects handled messages and dead letters; fails on demand."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.handled: list[Message] = []
        self.dead: list[str] = []
        self.failures = list(failures or [])

    async def handler(self, msg: Message, out: Any) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.handled.append(msg)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()

    async def fake_dead_letter(out: Any, event: Any, reason: str) -> None:
        rec.dead.append(reason)

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(runtime, "dead_letter", fake_dead_letter)
    monkeypatch.setattr(runtime, "_pause", no_sleep)
    monkeypatch.setattr(runtime, "Outbox", lambda app: object())
    return rec


def _valid() -> bytes:
    return encode(ReserveStock(order_id="o-1", lines=[Line(sku="A", quantity=1)]))


async def test_valid_message_is_decoded_once_and_handled(recorder: Recorder) -> None:
    await runtime.consume(None, FakeStream([FakeEvent(_valid())]), recorder.handler, name="t")  # type: ignore[arg-type]
    assert [m.type for m in recorder.handled] == ["ReserveStock"]
    assert recorder.dead == []


async def test_unknown_type_is_skipped_and_undecodable_records_are_dead_lettered(recorder: Recorder) -> None:
    events = [
        FakeEvent(b'{"type": "SomethingNew", "order_id": "o-1"}'),
        FakeEvent(b"not json"),
        FakeEvent(b'{"type": "ReserveStock", "order_id": "o-1", "lines": 3}'),
        FakeEvent(None),
        FakeEvent(_valid()),
    ]
    await runtime.consume(None, FakeStream(events), recorder.handler, name="t")  # type: ignore[arg-type]
    assert len(recorder.dead) == 3 and all(r.startswith("undecodable") for r in recorder.dead)
    assert [m.type for m in recorder.handled] == ["ReserveStock"], "the stream goes on after bad records"


async def test_failing_handler_is_retried_then_dead_lettered_and_the_next_record_is_served(recorder: Recorder) -> None:
    recorder.failures = [ValueError("bug")] * runtime.HANDLER_ATTEMPTS
    await runtime.consume(None, FakeStream([FakeEvent(_valid()), FakeEvent(_valid())]), recorder.handler, name="t")  # type: ignore[arg-type]
    assert recorder.dead == ["handler failed: ValueError: bug"]
    assert len(recorder.handled) == 1


async def test_server_outage_is_retried_until_it_passes_and_never_dead_lettered(recorder: Recorder) -> None:
    recorder.failures = [ConnectionRefusedError("db down")] * (runtime.HANDLER_ATTEMPTS * 3) + [ValueError("then a bug")]
    await runtime.consume(None, FakeStream([FakeEvent(_valid())]), recorder.handler, name="t")  # type: ignore[arg-type]
    assert recorder.dead == [], "one genuine failure after an outage is retried, not dead-lettered"
    assert len(recorder.handled) == 1


def test_cancellation_is_not_swallowed(recorder: Recorder) -> None:
    recorder.failures = [asyncio.CancelledError()]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(runtime.consume(None, FakeStream([FakeEvent(_valid())]), recorder.handler, name="t"))  # type: ignore[arg-type]
