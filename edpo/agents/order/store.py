"""The order service's database: orders, their lines and status history (the only module with
SQL on those tables), and the connection pool's lifetime.

`OrderStore` owns the pool: it migrates the schema and opens the pool when the worker starts
(retrying while PostgreSQL is not there) and closes it when the worker stops. An event is
recorded in one transaction with the outbox (outbox.py: acknowledgments, OrderStatusChanged)
and the process inbox (inbox.py); `Store` is what the handlers need of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import msgspec

from edpo.agents.order.inbox import record, record_cancel, wanted
from edpo.agents.order.migrate import migrate
from edpo.agents.order.outbox import ack_command, enqueue, enqueue_after, outbox_row
from edpo.domain.lifecycle import CANCELLED, DELIVERED, PLACED, REJECTED, SHIPPED, TERMINAL_RANK, rank, status_for
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
from edpo.runtime.retry import STARTUP

logger = logging.getLogger(__name__)

SOURCE = "order"
FINAL = [DELIVERED, CANCELLED, REJECTED]


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


Db = asyncpg.Pool | asyncpg.Connection


async def order_lines(db: Db, order_id: str) -> list[dict[str, Any]]:
    """The order's lines in the order they were placed: [{"sku", "quantity"}]."""
    rows = await db.fetch("SELECT sku, quantity FROM order_lines WHERE order_id = $1 ORDER BY line_no", order_id)
    return [dict(r) for r in rows]


async def _history(db: Db, order_id: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT status, at, detail FROM order_history WHERE order_id = $1 ORDER BY id", order_id)


async def trace_of(db: Db, order_id: str) -> str:
    """The order's trace id ("" for an unknown order)."""
    return await db.fetchval("SELECT trace_id FROM orders WHERE order_id = $1", order_id) or ""


async def final_status(db: Db, order_id: str) -> str | None:
    """The order's status if it is final (DELIVERED, CANCELLED, REJECTED), else None."""
    return await db.fetchval("SELECT status FROM orders WHERE order_id = $1 AND status = ANY($2)", order_id, FINAL)


async def get_order(db: Db, order_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
    if row is None:
        return None
    history = await _history(db, order_id)
    return {
        "order_id": row["order_id"],
        "status": row["status"],
        "customer_id": row["customer_id"],
        "delivery_address": row["delivery_address"],
        "items": await order_lines(db, order_id),
        "history": [{"status": h["status"], "at": _iso(h["at"]), **({"detail": h["detail"]} if h["detail"] else {})}
                    for h in history],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "trace_id": row["trace_id"],
        "cancel_requested_at": _iso(row["cancel_requested_at"]) if row["cancel_requested_at"] else None,
    }


async def history_summary(conn: asyncpg.Connection, order_id: str) -> str:
    """The order's status history in one line, for the people who see it in Tasklist."""
    rows = await _history(conn, order_id)
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
            await record_cancel(conn, order_id, reason, await history_summary(conn, order_id))
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
        f" announced AS ({enqueue_after('moved', 7)})"
        " SELECT count(*) FROM moved",
        order_id, status, new_rank, TERMINAL_RANK, msg.id, getattr(msg, "reason", None) or None,
        *outbox_row(changed),
    )
    if not moved:
        if not await conn.fetchval("SELECT true FROM orders WHERE order_id = $1", order_id):
            logger.warning("%s for unknown order %s ignored", msg.type, order_id)
        return None
    return status


async def start_variables(pool: asyncpg.Pool, order_id: str) -> dict[str, Any] | None:
    """What the process needs at start, from the stored order."""
    order = await pool.fetchrow("SELECT delivery_address, customer_id, trace_id FROM orders WHERE order_id = $1",
                                order_id)
    if order is None:
        return None
    lines = await order_lines(pool, order_id)
    async with pool.acquire() as conn:
        history = await history_summary(conn, order_id)
    items = ", ".join(f"{r['quantity']} x {r['sku']}" for r in lines)
    return {
        "order_id": order_id,
        "delivery_address": order["delivery_address"],
        "lines": lines,
        "trace_id": order["trace_id"] or "",
        # Shown in the dispatchers' task forms (Tasklist).
        "order_summary": f"{items} to {order['delivery_address']} (customer {order['customer_id']}, order {order_id})",
        "order_history": history,
        "missing_summary": "",
    }


async def final_orders(pool: asyncpg.Pool, order_ids: Sequence[str], quiet: float) -> list[asyncpg.Record]:
    """(order_id, status) of those of order_ids that are final and unchanged for quiet seconds."""
    return await pool.fetch(
        "SELECT order_id, status FROM orders WHERE order_id = ANY($1) AND status = ANY($2)"
        " AND updated_at < now() - make_interval(secs => $3)",
        list(order_ids), FINAL, quiet,
    )


async def quiet_open_orders(pool: asyncpg.Pool, quiet: float, after: tuple[datetime, str],
                            limit: int) -> list[asyncpg.Record]:
    """(order_id, status, updated_at) of accepted, unfinished orders unchanged for quiet seconds,
    least recently changed first, after the cursor (updated_at, order_id); at most limit."""
    return await pool.fetch(
        "SELECT order_id, status, updated_at FROM orders WHERE status <> ALL($1) AND status <> $2"
        " AND updated_at < now() - make_interval(secs => $3) AND (updated_at, order_id) > ($4, $5)"
        " ORDER BY updated_at, order_id LIMIT $6",
        FINAL, PLACED, quiet, *after, limit,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool keeps its session: this service sets no session state (no
    SET, LISTEN, advisory locks or cursors outside transactions), so asyncpg's default reset
    (four statements on every release, a fifth of the order worker's database round trips
    during a burst) has nothing to undo. An open transaction is still rolled back by asyncpg."""


class Store(Protocol):
    """What the order handlers and the REST API need of the database (an OrderStore, or a fake in unit tests)."""

    async def create(self, new: NewOrder, idempotency_key: str | None) -> tuple[dict[str, Any], bool]: ...

    async def get(self, order_id: str) -> dict[str, Any] | None: ...

    async def find(self, status: str | None, limit: int,
                   after: tuple[datetime, str] | None = None) -> tuple[list[dict[str, Any]], str | None]: ...

    async def record_event(self, msg: Message) -> tuple[str | None, bool]: ...

    async def cancel(self, order_id: str, reason: str, source: str) -> bool: ...

    async def request_cancel(self, order_id: str, reason: str) -> tuple[str, dict[str, Any] | None]: ...


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
        acknowledges, queues = isinstance(msg, (OrderAccepted, OrderRejected)), wanted(msg)
        async with (await self.pool()).acquire() as conn:
            if not acknowledges and not queues:
                return await apply_status(conn, msg), False  # one statement, a transaction of its own
            async with conn.transaction():
                if acknowledges:
                    await ack_command(conn, msg.correlation_id, msg.type)  # type: ignore[attr-defined]
                status = await apply_status(conn, msg)
                history = await history_summary(conn, msg.order_id) if queues else ""  # type: ignore[attr-defined]
                queued = await record(conn, msg, history)
        return status, queued

    async def cancel(self, order_id: str, reason: str, source: str) -> bool:
        """CANCELLED, with OrderCancelled in the outbox; False if the order was final already."""
        db = await self.pool()
        trace = await trace_of(db, order_id)
        cancelled = OrderCancelled(source=source, order_id=order_id, reason=reason, trace_id=trace)
        async with db.acquire() as conn, conn.transaction():
            if not await apply_status(conn, cancelled):
                return False
            await enqueue(conn, cancelled)
        return True

    async def start_variables(self, order_id: str) -> dict[str, Any] | None:
        return await start_variables(await self.pool(), order_id)

    async def request_cancel(self, order_id: str, reason: str) -> tuple[str, dict[str, Any] | None]:
        return await request_cancel(await self.pool(), order_id, reason)

    def opened_pool(self) -> asyncpg.Pool:
        """The pool, or an error at once while it is not open (a scrape must not wait for it)."""
        if self._pool is None:
            raise RuntimeError("the database is not open yet")
        return self._pool

    async def status_counts(self) -> dict[str, int]:
        """For /metrics: orders by status (the index on (status, ...) answers it)."""
        rows = await self.opened_pool().fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
        return {r["status"]: r["n"] for r in rows}
