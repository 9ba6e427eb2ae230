"""The order service's persistence: orders, status history, the transactional outbox and the
process inbox, in PostgreSQL.

`OrderStore` owns the connection pool: it migrates the schema and opens the pool when the
worker starts (retrying while PostgreSQL is not there) and closes it when the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from edpo.agents.order import bridge
from edpo.agents.order.migrate import migrate
from edpo.agents.order.outbox import enqueue, outbox_row
from edpo.domain.lifecycle import CANCELLED, DELIVERED, REJECTED, SHIPPED, TERMINAL_RANK, rank, status_for
from edpo.domain.order import NewOrder
from edpo.models import (
    AcceptOrder,
    Message,
    OrderAccepted,
    OrderCancelled,
    OrderPlaced,
    OrderRejected,
    OrderStatusChanged,
    caused_by,
    new_id,
)
from edpo.runtime.retry import OUTBOX_CAP, STARTUP, Backoff
from edpo.topics import BY_NAME, TopicSpec

logger = logging.getLogger(__name__)

SOURCE = "order"


Send = Callable[[TopicSpec, str, bytes], Awaitable[Any]]


async def create_order(pool: asyncpg.Pool, new: NewOrder, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """Store a PLACED order with its OrderPlaced event and AcceptOrder command, atomically.

    Returns (order, created); with a known idempotency key, the first order and False.
    """
    if idempotency_key:
        existing = await pool.fetchval("SELECT order_id FROM orders WHERE idempotency_key = $1", idempotency_key)
        if existing:
            return await _stored(pool, existing), False
    order_id = new_id()
    placed = OrderPlaced(
        source=SOURCE, order_id=order_id, customer_id=new.customer_id,
        delivery_address=new.delivery_address, lines=new.items,
    )
    placed = msgspec.structs.replace(placed, trace_id=placed.id)  # the order's trace starts here
    accept = caused_by(placed, AcceptOrder, source=SOURCE, order_id=order_id, lines=new.items,
                       delivery_address=new.delivery_address)
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO orders (order_id, customer_id, delivery_address, status, status_rank,"
                    " idempotency_key, trace_id) VALUES ($1, $2, $3, 'PLACED', $4, $5, $6)",
                    order_id, new.customer_id, new.delivery_address, rank("PLACED"), idempotency_key, placed.trace_id,
                )
                await conn.executemany(
                    "INSERT INTO order_lines (order_id, line_no, sku, quantity) VALUES ($1, $2, $3, $4)",
                    [(order_id, i, line.sku, line.quantity) for i, line in enumerate(new.items)],
                )
                await conn.execute(
                    "INSERT INTO order_history (order_id, status, event_id) VALUES ($1, 'PLACED', $2)",
                    order_id, placed.id,
                )
                await enqueue(conn, placed)
                await enqueue(conn, accept, command=True)
        except asyncpg.UniqueViolationError:
            # A concurrent request with the same idempotency key won the race.
            existing = await pool.fetchval("SELECT order_id FROM orders WHERE idempotency_key = $1", idempotency_key)
            return await _stored(pool, existing), False
    return await _stored(pool, order_id), True


async def _stored(pool: asyncpg.Pool, order_id: str) -> dict[str, Any]:
    """An order known to exist."""
    order = await get_order(pool, order_id)
    assert order is not None, order_id
    return order


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


async def get_order(pool: asyncpg.Pool | asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
    if row is None:
        return None
    lines = await pool.fetch("SELECT sku, quantity FROM order_lines WHERE order_id = $1 ORDER BY line_no", order_id)
    history = await pool.fetch(
        "SELECT status, at, detail FROM order_history WHERE order_id = $1 ORDER BY id", order_id
    )
    return {
        "order_id": row["order_id"],
        "status": row["status"],
        "customer_id": row["customer_id"],
        "delivery_address": row["delivery_address"],
        "items": [dict(r) for r in lines],
        "history": [{"status": h["status"], "at": _iso(h["at"]), **({"detail": h["detail"]} if h["detail"] else {})}
                    for h in history],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "trace_id": row["trace_id"],
        "cancel_requested_at": _iso(row["cancel_requested_at"]) if row["cancel_requested_at"] else None,
    }


async def history_summary(conn: asyncpg.Connection, order_id: str) -> str:
    """The order's status history in one line, for the people who see it in Tasklist."""
    rows = await conn.fetch("SELECT status, at, detail FROM order_history WHERE order_id = $1 ORDER BY id", order_id)
    return "; ".join(f"{r['at']:%Y-%m-%d %H:%M:%S} {r['status']}" + (f" ({r['detail']})" if r["detail"] else "")
                     for r in rows)


# Why an order cannot be cancelled any more, by status (POST /orders/{id}/cancel answers 409).
NOT_CANCELLABLE = {
    SHIPPED: "the courier has the goods (SHIPPED); a dispatcher can still call the delivery back",
    DELIVERED: "the order was delivered",
    CANCELLED: "the order is cancelled already",
    REJECTED: "the order was rejected",
}


async def request_cancel(pool: asyncpg.Pool, order_id: str, reason: str) -> tuple[str, dict[str, Any] | None]:
    """A customer's cancellation: ("accepted", order) when the process is told (once, however
    often it is asked), ("conflict", reason) or ("unknown", None). The order row is locked, so
    the decision and the status it rests on are one."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT status, cancel_requested_at FROM orders WHERE order_id = $1 FOR UPDATE",
                                  order_id)
        if row is None:
            return "unknown", None
        if row["status"] in NOT_CANCELLABLE:
            return "conflict", {"reason": NOT_CANCELLABLE[row["status"]], "status": row["status"]}
        if row["cancel_requested_at"] is None:
            await conn.execute("UPDATE orders SET cancel_requested_at = now(), updated_at = now() WHERE order_id = $1",
                               order_id)
            await bridge.record_cancel(conn, order_id, reason, await history_summary(conn, order_id))
    order = await get_order(pool, order_id)
    return "accepted", order


def order_cursor(created_at: datetime, order_id: str) -> str:
    """Where a page of orders continues: after this order, newest first."""
    return f"{int(created_at.timestamp() * 1_000_000)}-{order_id}"


def parse_order_cursor(cursor: str) -> tuple[datetime, str] | None:
    """(created_at, order_id) of a cursor made by order_cursor; None when it is not one."""
    micros, sep, order_id = cursor.partition("-")
    if not sep or not micros.isdigit() or not order_id or len(micros) > 17:
        return None
    try:
        return datetime.fromtimestamp(int(micros) / 1_000_000, UTC), order_id
    except (ValueError, OverflowError, OSError):
        return None


async def list_orders(pool: asyncpg.Pool, status: str | None, limit: int,
                      after: tuple[datetime, str] | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of orders, newest first, and the cursor of the next page (None on the last)."""
    rows = await pool.fetch(
        "SELECT order_id, status, customer_id, created_at, updated_at FROM orders"
        " WHERE ($1::text IS NULL OR status = $1)"
        " AND ($3::timestamptz IS NULL OR (created_at, order_id) < ($3, $4))"
        " ORDER BY created_at DESC, order_id DESC LIMIT $2",
        status, limit + 1, after[0] if after else None, after[1] if after else None,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    page = [
        {"order_id": r["order_id"], "status": r["status"], "customer_id": r["customer_id"],
         "created_at": _iso(r["created_at"]), "updated_at": _iso(r["updated_at"])}
        for r in rows
    ]
    return page, (order_cursor(rows[-1]["created_at"], rows[-1]["order_id"]) if more else None)


async def apply_status(conn: asyncpg.Connection, msg: Message) -> str | None:
    """Move the order forward if the event says so; out-of-order and duplicate events change nothing.

    Returns the new status, or None. One statement (one round trip): the status, its history
    row and the OrderStatusChanged for the outbox, only if the status advances (`advances` in
    domain/lifecycle.py, as SQL: below a terminal rank and above the current one).
    """
    change = status_for(msg)
    if change is None:
        return None
    status, new_rank = change
    order_id: str = msg.order_id  # type: ignore[attr-defined]
    changed = caused_by(msg, OrderStatusChanged, source=SOURCE, order_id=order_id, status=status)
    moved = await conn.fetchval(
        "WITH moved AS (UPDATE orders SET status = $2, status_rank = $3, updated_at = now()"
        "   WHERE order_id = $1 AND status_rank < $4 AND status_rank < $3 RETURNING order_id),"
        " history AS (INSERT INTO order_history (order_id, status, event_id, detail)"
        "   SELECT order_id, $2, $5, $6 FROM moved ON CONFLICT DO NOTHING),"
        " announced AS (INSERT INTO outbox (message_id, topic, key, payload, is_command)"  # as enqueue() does
        "   SELECT $7, $8, $9, $10, false FROM moved ON CONFLICT (message_id) DO NOTHING)"
        " SELECT count(*) FROM moved",
        order_id, status, new_rank, TERMINAL_RANK, msg.id, getattr(msg, "reason", None) or None,
        *outbox_row(changed),
    )
    if not moved:
        if not await conn.fetchval("SELECT true FROM orders WHERE order_id = $1", order_id):
            logger.warning("%s for unknown order %s ignored", msg.type, order_id)
        return None
    return status


async def ack_command(conn: asyncpg.Connection, command_id: str, ack: str) -> None:
    """An acknowledgment arrived: the outbox stops resending the command."""
    await conn.execute(
        "UPDATE outbox SET acked_at = now(), ack = $2 WHERE message_id = $1 AND acked_at IS NULL", command_id, ack
    )


async def start_variables(pool: asyncpg.Pool, order_id: str) -> dict[str, Any] | None:
    """What the process needs at start, from the stored order."""
    order = await pool.fetchrow("SELECT delivery_address, customer_id, trace_id FROM orders WHERE order_id = $1",
                                order_id)
    if order is None:
        return None
    lines = await pool.fetch("SELECT sku, quantity FROM order_lines WHERE order_id = $1 ORDER BY line_no", order_id)
    async with pool.acquire() as conn:
        history = await history_summary(conn, order_id)
    items = ", ".join(f"{r['quantity']} x {r['sku']}" for r in lines)
    return {
        "order_id": order_id,
        "delivery_address": order["delivery_address"],
        "lines": [dict(r) for r in lines],
        "trace_id": order["trace_id"] or "",
        # Shown in the dispatchers' task forms (Tasklist).
        "order_summary": f"{items} to {order['delivery_address']} (customer {order['customer_id']}, order {order_id})",
        "order_history": history,
        "missing_summary": "",
    }


async def due_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Messages to (re)send now, locked for this relay round."""
    return await conn.fetch(
        "SELECT message_id, topic, key, payload, is_command, attempts FROM outbox"
        " WHERE acked_at IS NULL AND next_send_at <= now()"
        " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def mark_sent(conn: asyncpg.Connection, rows: list[asyncpg.Record], timeout: float, attempts: int = 5,
                    count: Callable[[str, int], None] = lambda name, n: None) -> None:
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool keeps its session: this service sets no session state (no
    SET, LISTEN, advisory locks or cursors outside transactions), so asyncpg's default reset
    (four statements on every release, a fifth of the order worker's database round trips
    during a burst) has nothing to undo. An open transaction is still rolled back by asyncpg."""


class OrderStore:
    """The order service's database: opened when the worker starts, used by every handler."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._opened = asyncio.Event()

    async def open(self) -> asyncpg.Pool:
        """Migrate the schema and open the pool, retrying while PostgreSQL is not reachable."""
        await STARTUP.retry("database migration", lambda: migrate(self.dsn))
        self._pool = await STARTUP.retry(
            "database pool", lambda: asyncpg.create_pool(self.dsn, min_size=2, max_size=20, reset=_keep_session)
        )
        self._opened.set()
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def pool(self) -> asyncpg.Pool:
        """The pool, once open (handlers may run before the worker has finished starting)."""
        await self._opened.wait()
        assert self._pool is not None
        return self._pool

    async def create(self, new: NewOrder, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        return await create_order(await self.pool(), new, idempotency_key)

    async def get(self, order_id: str) -> dict[str, Any] | None:
        return await get_order(await self.pool(), order_id)

    async def find(self, status: str | None, limit: int,
                   after: tuple[datetime, str] | None = None) -> tuple[list[dict[str, Any]], str | None]:
        return await list_orders(await self.pool(), status, limit, after)

    async def record_event(self, msg: Message) -> tuple[str | None, bool]:
        """Acknowledgment, lifecycle and process inbox for one event, in one transaction.

        Returns the new status (or None) and whether the event was queued for the process."""
        acknowledges, wanted = isinstance(msg, (OrderAccepted, OrderRejected)), bridge.wanted(msg)
        async with (await self.pool()).acquire() as conn:
            if not acknowledges and not wanted:
                return await apply_status(conn, msg), False  # one statement, a transaction of its own
            async with conn.transaction():
                if acknowledges:
                    await ack_command(conn, msg.correlation_id, msg.type)  # type: ignore[attr-defined]
                status = await apply_status(conn, msg)
                history = await history_summary(conn, msg.order_id) if wanted else ""  # type: ignore[attr-defined]
                queued = await bridge.record(conn, msg, history)
        return status, queued

    async def cancel(self, order_id: str, reason: str, source: str) -> bool:
        """CANCELLED, with OrderCancelled in the outbox; False if the order was final already."""
        db = await self.pool()
        trace = await db.fetchval("SELECT trace_id FROM orders WHERE order_id = $1", order_id)
        cancelled = OrderCancelled(source=source, order_id=order_id, reason=reason, trace_id=trace or "")
        async with db.acquire() as conn, conn.transaction():
            if not await apply_status(conn, cancelled):
                return False
            await enqueue(conn, cancelled)
        return True

    async def start_variables(self, order_id: str) -> dict[str, Any] | None:
        return await start_variables(await self.pool(), order_id)

    async def request_cancel(self, order_id: str, reason: str) -> tuple[str, dict[str, Any] | None]:
        return await request_cancel(await self.pool(), order_id, reason)

    async def outbox_report(self, command_attempts: int = 5) -> dict[str, Any]:
        """For /health: commands still unanswered after command_attempts sends (resent at the
        cap meanwhile), commands being resent, messages not sent yet, the oldest open row's age."""
        row = await (await self.pool()).fetchrow(
            "SELECT count(*) FILTER (WHERE is_command AND attempts >= $1) AS unanswered,"
            " count(*) FILTER (WHERE is_command AND attempts > 1) AS resending,"
            " count(*) FILTER (WHERE attempts = 0) AS unsent,"
            " coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_seconds"
            " FROM outbox WHERE acked_at IS NULL", command_attempts)
        return {"commands_unanswered": row["unanswered"], "commands_resending": row["resending"],
                "unsent": row["unsent"], "oldest_seconds": round(float(row["oldest_seconds"]), 1)}

    def opened_pool(self) -> asyncpg.Pool:
        """The pool, or an error at once while it is not open (a scrape must not wait for it)."""
        if self._pool is None:
            raise RuntimeError("the database is not open yet")
        return self._pool

    async def status_counts(self) -> dict[str, int]:
        """For /metrics: orders by status (the index on (status, ...) answers it)."""
        rows = await self.opened_pool().fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    async def backlog(self, command_attempts: int = 5) -> dict[str, float]:
        """For /metrics: what the outbox and the process inbox still have to do, from their
        partial indexes (open outbox rows, pending inbox rows)."""
        row = await self.opened_pool().fetchrow(
            "SELECT o.unsent, o.awaiting_ack, o.unanswered, o.oldest, i.waiting, i.held, i.oldest AS inbox_oldest FROM"
            " (SELECT count(*) FILTER (WHERE attempts = 0) AS unsent,"
            "   count(*) FILTER (WHERE is_command AND attempts > 0) AS awaiting_ack,"
            "   count(*) FILTER (WHERE is_command AND attempts >= $1) AS unanswered,"
            "   coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest"
            "  FROM outbox WHERE acked_at IS NULL) o,"
            " (SELECT count(*) FILTER (WHERE NOT held) AS waiting, count(*) FILTER (WHERE held) AS held,"
            "   coalesce(extract(epoch FROM now() - min(received_at)), 0) AS oldest"
            "  FROM process_inbox WHERE state = 'pending') i", command_attempts)
        return {k: float(v) for k, v in row.items()}

    async def relay_once(self, send: Send, command_timeout: float, command_attempts: int = 5,
                         after_send: Callable[[], None] = lambda: None,
                         count: Callable[[str, int], None] = lambda name, n: None) -> int:
        """Send the due outbox rows (events once; commands until acknowledged); returns how many."""
        async with (await self.pool()).acquire() as conn, conn.transaction():
            rows = await due_outbox(conn, 500)
            if not rows:
                return 0
            futures = [await send(BY_NAME[r["topic"]], r["key"], bytes(r["payload"])) for r in rows]
            await asyncio.gather(*futures)  # on Kafka before the rows count as sent
            after_send()
            await mark_sent(conn, rows, command_timeout, command_attempts, count)
            return len(rows)
