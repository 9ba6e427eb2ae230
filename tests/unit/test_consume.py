"""The loop every agent runs: decode once, skip the unknown, dead-letter the unreadable, survive."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)
from faust.exceptions import ProducerSendError

from edpo.models import DeadLetter, Line, Message, ReserveStock, encode
from edpo.runtime.consume import PAYLOAD_LIMIT, consume
from edpo.runtime.retry import HANDLER, HANDLER_ATTEMPTS, OUTAGE


@dataclass
class FakeRecord:
    topic: str
    partition: int = 0
    offset: int = 0
    acked: bool = False  # as faust's Message: an acknowledged record's offset may be committed


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
    """Collects handled messages and dead letters; its handler and its publish fail on demand."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.handled: list[Message] = []
        self.letters: list[DeadLetter] = []
        self.pauses: list[float] = []
        self.failures = list(failures or [])
        self.publish_failures: list[BaseException] = []

    @property
    def dead(self) -> list[str]:
        return [letter.reason for letter in self.letters]

    async def handler(self, msg: Message) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.handled.append(msg)

    async def publish(self, *messages: Message, wait: bool = False) -> None:
        assert wait, "a dead letter's publish is awaited, else its failure would go unnoticed"
        if self.publish_failures:
            raise self.publish_failures.pop(0)
        self.letters += [m for m in messages if isinstance(m, DeadLetter)]

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    async def consume(self, events: list[FakeEvent]) -> None:
        await consume(FakeStream(events).events(), {ReserveStock: self.handler}, name="t", publish=self.publish,
                      sleep=self.sleep)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _valid() -> bytes:
    return encode(ReserveStock(order_id="o-1", lines=[Line(sku="A", quantity=1)]))


async def test_valid_message_is_decoded_once_and_handled(recorder: Recorder) -> None:
    await recorder.consume([FakeEvent(_valid())])
    assert [m.type for m in recorder.handled] == ["ReserveStock"]
    assert recorder.dead == []


async def test_unknown_type_is_logged_and_skipped_neither_handled_nor_dead_lettered(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    later = ReserveStock(order_id="o-2", lines=[Line(sku="A", quantity=1)])
    with caplog.at_level(logging.WARNING, logger="edpo.runtime.consume"):
        await recorder.consume([
            FakeEvent(b'{"type": "SomethingNew", "order_id": "o-1"}', message=FakeRecord("warehouse-commands", 2, 7)),
            FakeEvent(encode(later)),
        ])
    assert recorder.letters == [], "an unknown type is not dead-lettered"
    assert recorder.handled == [later], "the handler never saw the unknown record, and the stream went on"
    assert "unknown message type 'SomethingNew' on warehouse-commands[2]@7 skipped" in caplog.text


async def test_undecodable_records_are_dead_lettered_with_the_error_and_no_attempts(recorder: Recorder) -> None:
    bad = [b"not json", b'{"type": "ReserveStock", "order_id": "o-1", "lines": 3}', None]
    events = [FakeEvent(v, message=FakeRecord("warehouse-commands", 1, offset)) for offset, v in enumerate(bad)]
    await recorder.consume([*events, FakeEvent(_valid(), message=FakeRecord("warehouse-commands", 1, 3))])
    assert [letter.offset for letter in recorder.letters] == [0, 1, 2]
    assert all(r.startswith("undecodable") for r in recorder.dead)
    assert [letter.attempts for letter in recorder.letters] == [0, 0, 0], "no handler saw them"
    assert recorder.letters[0].error.startswith("DecodeError: ")
    assert recorder.letters[1].error.startswith("ValidationError: ")
    assert recorder.letters[0].payload == "not json" and recorder.letters[2].payload == ""
    assert not any(letter.truncated for letter in recorder.letters)
    assert [m.type for m in recorder.handled] == ["ReserveStock"], "the stream goes on after bad records"


async def test_failing_handler_is_retried_then_dead_lettered_and_the_next_record_is_served(recorder: Recorder) -> None:
    recorder.failures = [ValueError("bug")] * HANDLER_ATTEMPTS
    await recorder.consume([FakeEvent(_valid()), FakeEvent(_valid())])
    assert recorder.dead == ["handler failed: ValueError: bug"]
    assert len(recorder.handled) == 1
    assert recorder.pauses == [HANDLER.delay(n) for n in range(1, HANDLER_ATTEMPTS)], "backoff between retries"


async def test_dead_letter_of_a_failing_handler_counts_every_attempt_and_keeps_the_error(recorder: Recorder) -> None:
    recorder.failures = [ConnectionRefusedError("db down")] * 2 + [KeyError("sku")] * HANDLER_ATTEMPTS
    raw = _valid()
    await recorder.consume([FakeEvent(raw, key=b"o-9", message=FakeRecord("warehouse-commands", 3, 41))])
    [letter] = recorder.letters
    assert letter.attempts == HANDLER_ATTEMPTS + 2, "outage retries are attempts too"
    assert letter.error == "KeyError: 'sku'"
    assert (letter.topic, letter.partition, letter.offset, letter.key) == ("warehouse-commands", 3, 41, "o-9")
    assert letter.payload.encode() == raw and not letter.truncated


async def test_server_outage_is_retried_until_it_passes_and_never_dead_lettered(recorder: Recorder) -> None:
    recorder.failures = [ConnectionRefusedError("db down")] * (HANDLER_ATTEMPTS * 3) + [ValueError("then a bug")]
    await recorder.consume([FakeEvent(_valid())])
    assert recorder.dead == [], "one genuine failure after an outage is retried, not dead-lettered"
    assert len(recorder.handled) == 1


def test_cancellation_is_not_swallowed_and_leaves_the_record_uncommitted(recorder: Recorder) -> None:
    # The worker stops while the record is handled: faust acknowledges the current event when
    # its stream is cancelled, unless the message already counts as acknowledged; so the
    # record must be marked, or its offset would be committed and the record lost.
    recorder.failures = [asyncio.CancelledError()]
    event = FakeEvent(_valid())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(recorder.consume([event]))
    assert event.message.acked


async def test_a_handled_record_is_left_to_faust_to_acknowledge(recorder: Recorder) -> None:
    event = FakeEvent(_valid())
    await recorder.consume([event])
    assert len(recorder.handled) == 1 and not event.message.acked


async def test_oversized_record_is_dead_lettered_truncated_and_the_loop_goes_on(recorder: Recorder) -> None:
    huge = b'{"type": "ReserveStock", "order_id": "' + b"x" * (2 * 1024 * 1024)
    await recorder.consume([FakeEvent(huge), FakeEvent(_valid())])
    [letter] = recorder.letters
    assert letter.truncated
    assert huge.startswith(letter.payload.encode()) and len(letter.payload) > PAYLOAD_LIMIT // 2
    assert len(encode(letter)) < 1_000_000 - 1024, "fits the broker's default message.max.bytes with headroom"
    assert len(recorder.handled) == 1


async def test_payload_that_grows_when_json_escaped_is_cut_until_it_fits(recorder: Recorder) -> None:
    # Each control byte becomes a six-character \u00XX escape in JSON.
    await recorder.consume([FakeEvent(b"\x01" * PAYLOAD_LIMIT)])
    [letter] = recorder.letters
    assert letter.truncated
    assert 0 < len(msgspec.json.encode(letter.payload)) <= PAYLOAD_LIMIT


async def test_huge_key_is_cut_and_marks_the_dead_letter_truncated(recorder: Recorder) -> None:
    await recorder.consume([FakeEvent(b"not json", key=b"k" * 100_000)])
    [letter] = recorder.letters
    assert letter.truncated and letter.key is not None and len(letter.key) < 100_000


@pytest.mark.parametrize("refusal", [
    MessageSizeTooLargeError("too big"),
    ProducerSendError("Error while sending"),
    ValueError("cannot encode"),
])
async def test_dead_letter_refused_by_the_broker_is_logged_with_its_position_and_the_loop_goes_on(
    recorder: Recorder, caplog: pytest.LogCaptureFixture, refusal: Exception
) -> None:
    recorder.publish_failures = [refusal]
    with caplog.at_level(logging.ERROR, logger="edpo.runtime.consume"):
        await recorder.consume([
            FakeEvent(b"not json", message=FakeRecord("warehouse-commands", 2, 99)),
            FakeEvent(b"also not json", message=FakeRecord("warehouse-commands", 2, 100)),
            FakeEvent(_valid()),
        ])
    assert [letter.offset for letter in recorder.letters] == [100], "the next dead letter is kept"
    assert len(recorder.handled) == 1, "the agent goes on"
    assert recorder.pauses == [], "a refusal is not retried"
    lost = [r.getMessage() for r in caplog.records if "LOST" in r.getMessage()]
    assert len(lost) == 1 and "warehouse-commands[2]@99" in lost[0] and type(refusal).__name__ in lost[0]


async def test_dead_letter_publish_during_a_kafka_outage_is_retried_with_backoff_until_it_passes(
    recorder: Recorder,
) -> None:
    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = KafkaTimeoutError()  # how Faust reports the producer's own errors
    recorder.publish_failures = [KafkaConnectionError("broker down"), ConnectionResetError(), wrapped]
    await recorder.consume([FakeEvent(b"not json", message=FakeRecord("warehouse-commands", 0, 5)), FakeEvent(_valid())])
    assert [letter.offset for letter in recorder.letters] == [5], "kept once Kafka is back"
    assert recorder.pauses == [OUTAGE.delay(n) for n in (1, 2, 3)]
    assert len(recorder.handled) == 1


async def test_what_a_handler_logs_names_the_order_and_trace_of_its_message() -> None:
    from edpo.logs import current_context

    seen: list[dict[str, str]] = []

    async def handle(msg: Message) -> None:
        seen.append(current_context())

    traced = ReserveStock(order_id="o-7", lines=[Line(sku="A", quantity=1)], trace_id="t-7")

    async def publish(msg: Message, **kw: Any) -> None:
        return None

    await consume(FakeStream([FakeEvent(encode(traced))]).events(), {ReserveStock: handle}, name="test",
                  publish=publish)

    assert seen == [{"order_id": "o-7", "trace_id": "t-7"}]
    assert current_context() == {}, "the ids are gone once the message is handled"


async def test_a_declared_type_the_agent_has_no_handler_for_is_skipped_and_counted(recorder: Recorder) -> None:
    from edpo.models import PackGoods
    from edpo.runtime.metrics import Metrics

    m = Metrics("warehouse")
    pack = encode(PackGoods(order_id="o-1"))  # declared on warehouse-commands, not handled by this agent
    await consume(FakeStream([FakeEvent(pack), FakeEvent(_valid())]).events(), {ReserveStock: recorder.handler},
                  name="t", publish=recorder.publish, sleep=recorder.sleep, metrics=m.agent("t"))
    assert [msg.type for msg in recorder.handled] == ["ReserveStock"]
    assert recorder.letters == []
    text = (await m.exposition()).decode()
    assert 'edpo_events_skipped_total{reason="not_handled",service="warehouse",topic="warehouse-commands"} 1.0' in text


async def test_a_read_model_skips_what_it_cannot_decode_or_apply_and_never_dead_letters(recorder: Recorder) -> None:
    recorder.failures = [ValueError("bug")] * HANDLER_ATTEMPTS
    await consume(FakeStream([FakeEvent(b"not json"), FakeEvent(_valid()), FakeEvent(_valid())]).events(),
                  {ReserveStock: recorder.handler}, name="monitor", publish=recorder.publish, sleep=recorder.sleep,
                  read_model=True)
    assert recorder.letters == [], "the record's owner dead-letters it, not a read model"
    assert len(recorder.handled) == 1, "the failing record is skipped and the next one applied"
