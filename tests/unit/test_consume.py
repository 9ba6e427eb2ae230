"""The loop every agent runs: decode once, skip the unknown, dead-letter the unreadable, survive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from edpo.models import DeadLetter, Line, Message, ReserveStock, encode
from edpo.runtime.consume import consume
from edpo.runtime.retry import HANDLER, HANDLER_ATTEMPTS


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
        self.pauses: list[float] = []
        self.failures = list(failures or [])

    async def handler(self, msg: Message) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.handled.append(msg)

    async def publish(self, *messages: Message, wait: bool = False) -> None:
        self.dead += [m.reason for m in messages if isinstance(m, DeadLetter)]

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    async def consume(self, events: list[FakeEvent]) -> None:
        await consume(FakeStream(events).events(), self.handler, name="t", publish=self.publish, sleep=self.sleep)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _valid() -> bytes:
    return encode(ReserveStock(order_id="o-1", lines=[Line(sku="A", quantity=1)]))


async def test_valid_message_is_decoded_once_and_handled(recorder: Recorder) -> None:
    await recorder.consume([FakeEvent(_valid())])
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
    await recorder.consume(events)
    assert len(recorder.dead) == 3 and all(r.startswith("undecodable") for r in recorder.dead)
    assert [m.type for m in recorder.handled] == ["ReserveStock"], "the stream goes on after bad records"


async def test_failing_handler_is_retried_then_dead_lettered_and_the_next_record_is_served(recorder: Recorder) -> None:
    recorder.failures = [ValueError("bug")] * HANDLER_ATTEMPTS
    await recorder.consume([FakeEvent(_valid()), FakeEvent(_valid())])
    assert recorder.dead == ["handler failed: ValueError: bug"]
    assert len(recorder.handled) == 1
    assert recorder.pauses == [HANDLER.delay(n) for n in range(1, HANDLER_ATTEMPTS)], "backoff between retries"


async def test_server_outage_is_retried_until_it_passes_and_never_dead_lettered(recorder: Recorder) -> None:
    recorder.failures = [ConnectionRefusedError("db down")] * (HANDLER_ATTEMPTS * 3) + [ValueError("then a bug")]
    await recorder.consume([FakeEvent(_valid())])
    assert recorder.dead == [], "one genuine failure after an outage is retried, not dead-lettered"
    assert len(recorder.handled) == 1


def test_cancellation_is_not_swallowed(recorder: Recorder) -> None:
    recorder.failures = [asyncio.CancelledError()]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(recorder.consume([FakeEvent(_valid())]))
