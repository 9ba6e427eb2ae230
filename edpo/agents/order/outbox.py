"""The transactional outbox, the one module with SQL on the `outbox` table.

A message is kept with its topic and key in the caller's transaction (`enqueue`; the order's
status changes through `enqueue_after`, inside store.py's one statement); the relay sends what
is due (`relay_once`): events once, commands until their acknowledgment arrives (`ack_command`),
resent with backoff. `/health`, `/metrics` and reconciliation read and prune it here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from edpo.models import Message, encode
from edpo.runtime.retry import OUTBOX_CAP, Backoff
from edpo.topics import BY_NAME, TopicSpec, route

logger = logging.getLogger(__name__)

Send = Callable[[TopicSpec, str, bytes], Awaitable[Any]]
Count = Callable[[str, int], None]

# The columns outbox_row() fills, then is_command.
_COLUMNS = "outbox (message_id, topic, key, payload, is_command)"


def outbox_row(msg: Message) -> tuple[str, str, str, bytes]:
    """(message_id, topic, key, payload) of msg's outbox row: routed now (topics.py), encoded once."""
    spec, key = route(msg)
    return msg.id, spec.name, key, encode(msg)


async def enqueue(conn: asyncpg.Connection, msg: Message, *, command: bool = False) -> None:
    """Keep msg for the relay, in the caller's transaction."""
    await conn.execute(
        f"INSERT INTO {_COLUMNS} VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
        *outbox_row(msg), command,
    )


def enqueue_after(rows: str, first: int) -> str:
    """SQL that keeps an event once for each row of the CTE `rows`, for a caller's statement that
    must stay one round trip; its parameters $first..$first+3 are outbox_row() of the event."""
    values = ", ".join(f"${n}" for n in range(first, first + 4))
    return f"INSERT INTO {_COLUMNS} SELECT {values}, false FROM {rows} ON CONFLICT (message_id) DO NOTHING"


async def ack_command(conn: asyncpg.Connection, command_id: str, ack: str) -> None:
    """An acknowledgment arrived: the outbox stops resending the command."""
    await conn.execute(
        "UPDATE outbox SET acked_at = now(), ack = $2 WHERE message_id = $1 AND acked_at IS NULL", command_id, ack
    )


async def due_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Messages to (re)send now, locked for this relay round."""
    return await conn.fetch(
        "SELECT message_id, topic, key, payload, is_command, attempts FROM outbox"
        " WHERE acked_at IS NULL AND next_send_at <= now()"
        " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def mark_sent(conn: asyncpg.Connection, rows: list[asyncpg.Record], timeout: float, attempts: int = 5,
                    count: Count = lambda name, n: None) -> None:
    """Events are done once sent; commands wait for their ack and are resent with backoff.

    A command is resent with the same backoff as CommandClient's (EDPO_COMMAND_TIMEOUT doubling);
    after EDPO_COMMAND_ATTEMPTS sends it is reported (log, counter, /health "outbox") and still
    resent at the cap, because giving up would lose the order."""
    events = [r["message_id"] for r in rows if not r["is_command"]]
    if events:
        await conn.execute(
            "UPDATE outbox SET sent_at = now(), acked_at = now(), ack = 'sent', attempts = attempts + 1"
            " WHERE message_id = ANY($1)",
            events,
        )
    resend = Backoff(first=timeout, cap=OUTBOX_CAP)
    for r in rows:
        if r["is_command"]:
            backoff = resend.delay(r["attempts"] + 1)
            sends = r["attempts"] + 1
            if sends > attempts:
                logger.error("command %s unanswered after %d sends; still resending every %.0fs", r["message_id"],
                             sends - 1, backoff)
                count("outbox_command_unanswered", 1)
            elif sends > 1:
                logger.warning("command %s unanswered; resent (send %d of %d)", r["message_id"], sends, attempts)
            await conn.execute(
                "UPDATE outbox SET sent_at = now(), attempts = attempts + 1,"
                " next_send_at = now() + make_interval(secs => $2) WHERE message_id = $1",
                r["message_id"], backoff,
            )


async def relay_once(pool: asyncpg.Pool, send: Send, command_timeout: float, command_attempts: int = 5,
                     after_send: Callable[[], None] = lambda: None, count: Count = lambda name, n: None) -> int:
    """Send the due outbox rows (events once; commands until acknowledged); returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await due_outbox(conn, 500)
        if not rows:
            return 0
        futures = [await send(BY_NAME[r["topic"]], r["key"], bytes(r["payload"])) for r in rows]
        await asyncio.gather(*futures)  # on Kafka before the rows count as sent
        after_send()
        await mark_sent(conn, rows, command_timeout, command_attempts, count)
        return len(rows)


async def outbox_backlog(pool: asyncpg.Pool, command_attempts: int = 5) -> dict[str, float]:
    """What the outbox still has to do, from the partial index on open rows: rows never sent
    (unsent), commands sent and not acknowledged (awaiting_ack), sent more than once (resending),
    sent command_attempts times or more (unanswered: resent at the cap meanwhile), and the age
    of the oldest open row in seconds (oldest)."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE attempts = 0) AS unsent,"
        " count(*) FILTER (WHERE is_command AND attempts > 0) AS awaiting_ack,"
        " count(*) FILTER (WHERE is_command AND attempts > 1) AS resending,"
        " count(*) FILTER (WHERE is_command AND attempts >= $1) AS unanswered,"
        " coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest"
        " FROM outbox WHERE acked_at IS NULL", command_attempts)
    return {k: float(v) for k, v in row.items()}


async def outbox_report(pool: asyncpg.Pool, command_attempts: int = 5) -> dict[str, Any]:
    """For /health: commands still unanswered after command_attempts sends, commands being
    resent, messages not sent yet, the oldest open row's age."""
    b = await outbox_backlog(pool, command_attempts)
    return {"commands_unanswered": int(b["unanswered"]), "commands_resending": int(b["resending"]),
            "unsent": int(b["unsent"]), "oldest_seconds": round(b["oldest"], 1)}


async def prune_outbox(conn: asyncpg.Connection, older_than: float) -> int:
    """Delete rows done (sent events, acknowledged commands) more than older_than seconds ago; how many."""
    status = await conn.execute("DELETE FROM outbox WHERE acked_at < now() - make_interval(secs => $1)", older_than)
    return int(status.split()[-1])
