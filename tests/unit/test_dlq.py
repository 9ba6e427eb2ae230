"""`edpo dlq`: reading the dead-letter topic, choosing what to replay, and the replay itself, over fakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from edpo.config import Settings
from edpo.dev import dlq
from edpo.dev.process import StackError
from edpo.models import DeadLetter, DeadLetterReplayed, Line, ReserveStock, encode

PAYLOAD = encode(ReserveStock(order_id="o-1", lines=[Line(sku="A", quantity=1)]))


def _letter(id: str, *, key: str | None = "o-1", truncated: bool = False, minute: int = 0, **fields: object) -> DeadLetter:
    return DeadLetter(
        id=id, source="edpo", time=datetime(2025, 5, 1, 12, minute, 30, tzinfo=UTC),
        topic="warehouse-commands", partition=2, offset=40 + minute, key=key,
        reason=fields.pop("reason", "handler failed: ValueError: bug"), payload=PAYLOAD.decode(),
        error="ValueError: bug", attempts=5, truncated=truncated, **fields,
    )


def _mark(letter_id: str, offset: int = 77) -> DeadLetterReplayed:
    return DeadLetterReplayed(dead_letter_id=letter_id, key="o-1", topic="warehouse-commands", partition=2,
                              offset=offset, time=datetime(2025, 5, 1, 13, 0, tzinfo=UTC))


def _entries(*messages: DeadLetter | DeadLetterReplayed) -> list[dlq.Entry]:
    found, unreadable = dlq.entries(encode(m) for m in messages)
    assert unreadable == 0
    return found


class FakeKafka:
    """A `Send` that appends to in-memory partitions (one per topic here) and returns the offsets."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> tuple[int, int]:
        self.records.append((topic, key, value))
        return 2, 100 + sum(t == topic for t, _, _ in self.records) - 1


def test_replay_marks_are_attached_to_their_dead_letters_whatever_the_order_they_are_read_in() -> None:
    found = _entries(_mark("b"), _letter("b", minute=2), _letter("a", minute=1), _mark("unknown"))
    assert [e.letter.id for e in found] == ["a", "b"], "oldest first"
    assert [e.replayed for e in found] == [False, True]
    assert found[1].replays[0].offset == 77


def test_records_that_are_not_dead_letters_are_counted_not_fatal_and_duplicates_are_listed_once() -> None:
    found, unreadable = dlq.entries([b"garbage", None, b'{"type": "FromTheFuture"}', encode(_letter("a")),
                                     encode(_letter("a"))])
    assert unreadable == 3
    assert [e.letter.id for e in found] == ["a"]


def test_dead_letter_written_before_the_new_fields_reads_with_defaults() -> None:
    old = {"type": "DeadLetter", "id": "old", "topic": "t", "partition": 0, "offset": 1, "key": None,
           "reason": "undecodable: x", "payload": "x"}
    [entry], _ = dlq.entries([json.dumps(old).encode()])
    assert (entry.letter.attempts, entry.letter.error, entry.letter.truncated) == (0, "", False)


def test_list_line_shows_id_time_source_key_attempts_replayed_and_a_shortened_reason() -> None:
    [waiting, replayed, truncated] = _entries(
        _letter("a" * 32, reason="handler failed: " + "very long\nreason " * 20),
        _letter("b" * 32, minute=1), _mark("b" * 32),
        _letter("c" * 32, minute=2, key=None, truncated=True),
    )
    line = dlq.line(waiting)
    assert line.split()[:6] == ["a" * 32, "2025-05-01T12:00:30Z", "warehouse-commands[2]@40", "o-1", "5", "no"]
    assert "\n" not in line and line.endswith("…") and len(line) < 220
    assert dlq.line(replayed).split()[5] == "yes"
    assert dlq.line(truncated).split()[3:6] == ["-", "5", "truncated"]
    assert dlq.HEADER.split()[:7] == ["ID", "TIME", "SOURCE", "KEY", "ATTEMPTS", "REPLAYED", "REASON"]


def test_list_json_carries_every_field_and_the_replays() -> None:
    [entry] = _entries(_letter("a"), _mark("a"))
    out = json.loads(json.dumps(dlq.as_json(entry)))
    assert out["id"] == "a" and out["type"] == "DeadLetter" and out["payload"] == PAYLOAD.decode()
    assert (out["attempts"], out["error"], out["truncated"], out["replayed"]) == (5, "ValueError: bug", False, True)
    assert out["replays"][0]["offset"] == 77 and out["replays"][0]["dead_letter_id"] == "a"


def test_replay_skips_dead_letters_replayed_already_unless_forced() -> None:
    found = _entries(_letter("a"), _letter("b", minute=1), _mark("a"))
    todo = dlq.plan(found, ["a", "b"], everything=False, force=False)
    assert [e.letter.id for e in todo.send] == ["b"]
    assert [e.letter.id for e in todo.skipped] == ["a"]
    forced = dlq.plan(found, ["a", "b"], everything=False, force=True)
    assert [e.letter.id for e in forced.send] == ["a", "b"] and forced.skipped == []


def test_replay_all_takes_every_dead_letter_but_refuses_truncated_ones_even_when_forced() -> None:
    found = _entries(_letter("a"), _letter("t", minute=1, truncated=True), _letter("c", minute=2), _mark("c"))
    todo = dlq.plan(found, [], everything=True, force=True)
    assert [e.letter.id for e in todo.send] == ["a", "c"]
    assert [e.letter.id for e in todo.refused] == ["t"]
    assert [e.letter.id for e in dlq.plan(found, [], everything=True, force=False).send] == ["a"]


def test_unknown_id_is_an_error_naming_it_and_nothing_is_chosen() -> None:
    found = _entries(_letter("a"))
    with pytest.raises(StackError, match="no dead letter with id nope"):
        dlq.plan(found, ["a", "nope"], everything=False, force=False)


def test_an_id_named_twice_is_replayed_once() -> None:
    assert len(dlq.plan(_entries(_letter("a")), ["a", "a"], everything=False, force=False).send) == 1


async def test_replay_sends_the_original_bytes_and_key_to_the_original_topic_then_marks_it() -> None:
    kafka, said = FakeKafka(), []
    [entry] = _entries(_letter("a", trace_id="tr-1"))
    [mark] = await dlq.replay([entry], kafka.send, said.append)
    assert kafka.records[0] == ("warehouse-commands", b"o-1", PAYLOAD)
    topic, key, value = kafka.records[1]
    assert (topic, key) == ("dead-letters", b"o-1"), "the mark shares its dead letter's key, hence its partition"
    assert msgspec.json.decode(value, type=DeadLetterReplayed) == mark
    assert (mark.dead_letter_id, mark.topic, mark.partition, mark.offset) == ("a", "warehouse-commands", 2, 100)
    assert mark.trace_id == "tr-1" and mark.correlation_id == "a"
    assert said == ["replayed  a  -> warehouse-commands[2]@100"]


async def test_dead_letter_without_key_is_replayed_without_key() -> None:
    kafka = FakeKafka()
    await dlq.replay(_entries(_letter("a", key=None)), kafka.send, lambda _: None)
    assert kafka.records[0][1] is None
    assert kafka.records[1][1] == b"", "marked under the key its dead letter was published with"


@pytest.mark.parametrize("ids, everything", [([], False), (["a"], True)])
def test_replay_needs_ids_or_all_but_not_both(ids: list[str], everything: bool) -> None:
    with pytest.raises(StackError, match="ids or --all"):
        dlq.replay_command(Settings(), ids, everything=everything, force=False, say=lambda _: None)


def test_list_pages_walk_every_dead_letter_once_and_an_unknown_cursor_is_an_error() -> None:
    found = _entries(*[_letter(f"d{i}", minute=i) for i in range(7)])
    seen: list[str] = []
    after = None
    while True:
        shown, after = dlq.page_of(found, 3, after)
        seen += [e.letter.id for e in shown]
        if after is None:
            break
    assert seen == [e.letter.id for e in found] and len(set(seen)) == 7
    assert dlq.page_of(found, 7, None)[1] is None
    with pytest.raises(StackError, match="no dead letter 'nope'"):
        dlq.page_of(found, 3, "nope")
