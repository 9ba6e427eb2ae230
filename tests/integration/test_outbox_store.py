"""The outbox on real PostgreSQL: an unanswered command is resent with backoff, reported once it
has been sent more than `attempts` times (counter + error log) and still resent; outbox_report()
sums up what /health shows.

A database of its own: the running order worker's relay sends every due row of the shared outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from edpo.agents.order.outbox import due_outbox, enqueue, mark_sent, outbox_report, relay_once
from edpo.agents.order.store import OrderStore
from edpo.config import Settings
from edpo.models import AcceptOrder, Line, OrderStatusChanged
from edpo.runtime.retry import OUTBOX_CAP
from edpo.topics import TopicSpec, route
from tests.integration.own_database import own_database


@pytest.fixture
async def store(servers: Settings) -> AsyncIterator[OrderStore]:
    async with own_database(servers, "edpo_outbox") as dsn:
        s = OrderStore(dsn)
        await s.open()
        try:
            yield s
        finally:
            await s.close()


class Counts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, name: str, n: int) -> None:
        self.calls.append((name, n))


def _command(order_id: str = "o-1") -> AcceptOrder:
    return AcceptOrder(source="test", order_id=order_id, lines=[Line(sku="A", quantity=1)], delivery_address="x")


async def _send_round(pool: asyncpg.Pool, timeout: float, attempts: int, count: Counts) -> list[str]:
    """One relay round over every row, due or not (next_send_at is moved to now first)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE outbox SET next_send_at = now() WHERE acked_at IS NULL")
        rows = await due_outbox(conn, 500)
        await mark_sent(conn, rows, timeout, attempts, count)
        return [r["message_id"] for r in rows]


async def test_an_unanswered_command_is_reported_after_attempts_sends_and_still_resent(
    store: OrderStore, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await store.pool()
    command, event = _command(), OrderStatusChanged(source="test", order_id="o-1", status="ACCEPTED")
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, command, command=True)
        await enqueue(conn, event)

    count = Counts()
    caplog.set_level(logging.WARNING, logger="edpo.agents.order.outbox")

    # Send 1: the event is done; the command waits for its ack. Nothing is reported.
    assert sorted(await _send_round(pool, 10.0, 3, count)) == sorted([command.id, event.id])
    ev = await pool.fetchrow("SELECT * FROM outbox WHERE message_id = $1", event.id)
    assert ev["acked_at"] is not None and ev["ack"] == "sent" and ev["attempts"] == 1
    cmd = await pool.fetchrow("SELECT * FROM outbox WHERE message_id = $1", command.id)
    assert cmd["acked_at"] is None and cmd["attempts"] == 1
    # Resent after the command timeout (10 s for the first wait).
    wait = (cmd["next_send_at"] - cmd["sent_at"]).total_seconds()
    assert 9.5 <= wait <= 10.5, wait
    assert count.calls == []

    # Sends 2 and 3 (of attempts=3): warnings, still no report; only the command is due.
    for send in (2, 3):
        assert await _send_round(pool, 10.0, 3, count) == [command.id]
        assert count.calls == [], f"reported already at send {send}"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and command.id in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # Send 4 and 5: more than `attempts` sends -> counted and logged as an error each time, and
    # the command is still resent (not dropped, not acknowledged).
    for send in (4, 5):
        assert await _send_round(pool, 10.0, 3, count) == [command.id]
    assert count.calls == [("outbox_command_unanswered", 1)] * 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all(command.id in e and "unanswered" in e for e in errors), errors
    cmd = await pool.fetchrow("SELECT * FROM outbox WHERE message_id = $1", command.id)
    assert cmd["acked_at"] is None and cmd["attempts"] == 5
    assert cmd["next_send_at"] > cmd["sent_at"]


async def test_the_resend_backoff_doubles_up_to_the_cap(store: OrderStore) -> None:
    pool = await store.pool()
    command = _command()
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, command, command=True)
    waits = []
    for _ in range(9):
        await _send_round(pool, 1.0, 100, Counts())
        row = await pool.fetchrow("SELECT sent_at, next_send_at FROM outbox WHERE message_id = $1", command.id)
        waits.append(round((row["next_send_at"] - row["sent_at"]).total_seconds()))
    assert waits == [1, 2, 4, 8, 16, 32, OUTBOX_CAP, OUTBOX_CAP, OUTBOX_CAP]


async def test_relay_once_passes_attempts_and_the_counter_on(store: OrderStore) -> None:
    pool = await store.pool()
    command = _command()
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, command, command=True)
    await pool.execute("UPDATE outbox SET attempts = 2 WHERE message_id = $1", command.id)
    sent: list[tuple[str, str]] = []
    after: list[bool] = []

    async def send(spec: TopicSpec, key: str, payload: bytes) -> asyncio.Future[Any]:
        sent.append((spec.name, key))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    count = Counts()
    assert await relay_once(pool, send, 5.0, 2, after_send=lambda: after.append(True), count=count) == 1
    spec, key = route(command)
    assert sent == [(spec.name, key)] and key == "o-1", sent
    assert after == [True]
    assert count.calls == [("outbox_command_unanswered", 1)]
    assert await relay_once(pool, send, 5.0, 2, count=count) == 0, "not due again before its backoff"


async def test_outbox_report_counts_resent_commands_unsent_rows_and_the_oldest_unacked(store: OrderStore) -> None:
    pool = await store.pool()
    assert await outbox_report(pool) == {"commands_unanswered": 0, "commands_resending": 0, "unsent": 0,
                                         "oldest_seconds": 0.0}

    fresh, once, resent, acked = _command("a"), _command("b"), _command("c"), _command("d")
    unsent_event = OrderStatusChanged(source="test", order_id="e", status="ACCEPTED")
    sent_event = OrderStatusChanged(source="test", order_id="f", status="ACCEPTED")
    async with pool.acquire() as conn, conn.transaction():
        for c in (fresh, once, resent, acked):
            await enqueue(conn, c, command=True)
        await enqueue(conn, unsent_event)
        await enqueue(conn, sent_event)
    await pool.execute("UPDATE outbox SET attempts = 1, sent_at = now() WHERE message_id = $1", once.id)
    await pool.execute("UPDATE outbox SET attempts = 4, sent_at = now(), created_at = now() - interval '100 seconds'"
                       " WHERE message_id = $1", resent.id)
    # Acknowledged or sent rows count for nothing, however old and however often sent.
    await pool.execute("UPDATE outbox SET attempts = 9, acked_at = now(), ack = 'OrderAccepted',"
                       " created_at = now() - interval '1 day' WHERE message_id = $1", acked.id)
    await pool.execute("UPDATE outbox SET attempts = 1, acked_at = now(), ack = 'sent',"
                       " created_at = now() - interval '1 day' WHERE message_id = $1", sent_event.id)

    # Unanswered: sent command_attempts times or more (and still resent at the cap), as mark_sent
    # reports it; resending: sent more than once. The resent command has 4 sends, the other one 1.
    report = await outbox_report(pool, 4)
    assert report["commands_unanswered"] == 1, report  # only the resent command, at the limit
    assert report["commands_resending"] == 1, report  # only the resent command
    assert report["unsent"] == 2, report  # the fresh command and the unsent event
    assert 99.0 <= report["oldest_seconds"] <= 160.0, report
    below = await outbox_report(pool, 5)
    assert (below["commands_unanswered"], below["commands_resending"]) == (0, 1), below
    assert (await outbox_report(pool, 1))["commands_unanswered"] == 2, "every sent, unacknowledged command"
