"""The process inbox, the one module with SQL on the `process_inbox` table.

An event the order process starts on or waits for is written here in the same transaction as
the order's status change (`record`), and a customer's cancellation with the order row's lock
(`record_cancel`); the bridge (bridge.py) takes the due rows (`due_inbox`) to the engine and
settles each (`settle`); reconciliation puts rows back (`request_start`, `reopen_awaited`) and
prunes them. The event id is the primary key, so a duplicate event is stored once. An order has
one start row (`start:<order id>`) and one cancellation row (`cancel:<order id>`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg

from edpo.models import (
    DeliveryCompleted,
    DeliveryFailed,
    Message,
    OrderAccepted,
    StockPartiallyReserved,
    StockReserved,
    encode,
)

START = "start"  # the inbox row that starts the order's process instance
DEAD = "dead"  # an inbox row given up on: dead-lettered with its reason
CANCEL_REQUESTED = "CancelRequested"  # the message a customer's cancellation is correlated as

# Message name (= event type) -> (process variables to set, correlation keys to match).
CORRELATIONS: dict[type[Message], Callable[[Any], tuple[dict[str, Any], dict[str, Any]]]] = {
    # The units the order lacked at first: if the process never heard the partial, the factory
    # still has to replace them (the process checks replenish_after_all).
    StockReserved: lambda e: ({"replenish_after_all": bool(e.short),
                               **({"missing": [{"sku": l.sku, "quantity": l.quantity} for l in e.short]}
                                  if e.short else {})}, {}),
    StockPartiallyReserved: lambda e: ({"missing": [{"sku": l.sku, "quantity": l.quantity} for l in e.missing],
                                        "missing_summary": ", ".join(f"{l.quantity} x {l.sku}" for l in e.missing)},
                                       {}),
    # The attempt number keeps a stale duplicate of an earlier attempt from matching a later wait.
    DeliveryCompleted: lambda e: ({}, {"delivery_attempt": e.attempt}),
    DeliveryFailed: lambda e: ({"delivery_failure": e.reason}, {"delivery_attempt": e.attempt}),
}

# The events the process starts on (OrderAccepted) or waits for.
WANTED: frozenset[type[Message]] = frozenset({OrderAccepted, *CORRELATIONS})


def start_row_id(order_id: str) -> str:
    """The one inbox row that starts an order's process instance."""
    return f"start:{order_id}"


def cancel_row_id(order_id: str) -> str:
    """The one inbox row that tells the order's process instance the customer cancelled."""
    return f"cancel:{order_id}"


def wanted(msg: Message) -> bool:
    """Does the process start on, or wait for, this event?"""
    return type(msg) in WANTED


async def record(conn: asyncpg.Connection, msg: Message, history: str = "") -> bool:
    """Put an event the process cares about into the inbox (inside the caller's transaction).

    A duplicate is stored once; the same event arriving again after it was dead-lettered (a
    replay) makes the row pending again. `history` (the order's status history as text) goes
    along as the process variable order_history, which the dispatchers' task forms show."""
    order_id: str = msg.order_id  # type: ignore[attr-defined]
    if isinstance(msg, OrderAccepted):
        row_id, name, values, keys = start_row_id(order_id), START, {}, {}
    elif wanted(msg):
        row_id, name = msg.id, msg.type
        values, keys = CORRELATIONS[type(msg)](msg)
    else:
        return False
    if history:
        values = {**values, "order_history": history}
    status = await conn.execute(
        "INSERT INTO process_inbox (event_id, order_id, message_name, variables, correlation, payload)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO UPDATE"
        " SET state = 'pending', attempts = 0, next_try_at = now(), done_at = NULL, last_error = NULL"
        " WHERE process_inbox.state = 'dead'",
        row_id, order_id, name, json.dumps(values), json.dumps(keys), encode(msg).decode(),
    )
    return status.endswith("1")


async def record_cancel(conn: asyncpg.Connection, order_id: str, reason: str, history: str) -> None:
    """A customer's cancellation for the process (inside the caller's transaction): one row per
    order, correlated as the message CancelRequested that interrupts the instance."""
    await conn.execute(
        "INSERT INTO process_inbox (event_id, order_id, message_name, variables, correlation)"
        " VALUES ($1, $2, $3, $4, '{}') ON CONFLICT (event_id) DO NOTHING",
        cancel_row_id(order_id), order_id, CANCEL_REQUESTED,
        json.dumps({"cancel_reason": reason, "order_history": history}),
    )


async def due_inbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Pending rows due now, oldest first, locked for this round, each with `waited` (how long
    since it was received, by the database's clock)."""
    # An event never overtakes an older one of its order that is held (its correlation failed
    # for a technical reason): the process must hear them in the order they came.
    return await conn.fetch(
        "SELECT *, now() - received_at AS waited FROM process_inbox i"
        " WHERE state = 'pending' AND next_try_at <= now()"
        " AND NOT EXISTS (SELECT 1 FROM process_inbox o WHERE o.order_id = i.order_id"
        " AND o.state = 'pending' AND o.held AND o.received_at < i.received_at)"
        " ORDER BY received_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def settle(conn: asyncpg.Connection, event_id: str, state: str, error: str | None, delay: float,
                 held: bool) -> None:
    """What a try of the row came to: its new state, the note, when to try again, whether it holds its order."""
    await conn.execute(
        "UPDATE process_inbox SET state = $2, attempts = attempts + 1, last_error = $3,"
        " next_try_at = now() + make_interval(secs => $4), held = $5,"
        " done_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END WHERE event_id = $1",
        event_id, state, error, delay, held,
    )


async def hurry_order(conn: asyncpg.Connection, order_id: str, but: str) -> None:
    """Make the order's other pending rows due at once (rows another bridge is working on are left to it)."""
    await conn.execute(
        "UPDATE process_inbox SET next_try_at = now() WHERE event_id IN (SELECT event_id"
        " FROM process_inbox WHERE order_id = $1 AND state = 'pending' AND event_id <> $2"
        " FOR UPDATE SKIP LOCKED)", order_id, but)


async def request_start(pool: asyncpg.Pool, order_id: str, why: str) -> None:
    """The order's start row, pending again (or new), so that the bridge starts its instance."""
    await pool.execute(
        "INSERT INTO process_inbox (event_id, order_id, message_name, last_error) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (event_id) DO UPDATE SET state = 'pending', attempts = 0, next_try_at = now(),"
        " done_at = NULL, last_error = $4",
        start_row_id(order_id), order_id, START, why,
    )


async def reopen_awaited(pool: asyncpg.Pool, order_id: str, message_name: str, attempt: Any,
                         why: str) -> bool | None:
    """The latest row of message_name for the order, pending again: None if the inbox has no such
    row, True if a done row was reopened, False if it was pending already. A row of a delivery
    outcome counts only for `attempt` (an earlier attempt's outcome must stay done)."""
    row_filter = ("order_id = $1 AND message_name = $2"
                  " AND (NOT correlation ? 'delivery_attempt' OR correlation->'delivery_attempt' = $3::jsonb)")
    if not await pool.fetchval(f"SELECT EXISTS (SELECT 1 FROM process_inbox WHERE {row_filter})",
                               order_id, message_name, json.dumps(attempt)):
        return None
    status = await pool.execute(
        "UPDATE process_inbox SET state = 'pending', attempts = 0, next_try_at = now(), done_at = NULL,"
        f" last_error = $4 WHERE event_id = (SELECT event_id FROM process_inbox WHERE {row_filter}"
        " ORDER BY received_at DESC LIMIT 1) AND state <> 'pending'",
        order_id, message_name, json.dumps(attempt), why,
    )
    return not status.endswith(" 0")


async def inbox_backlog(pool: asyncpg.Pool) -> dict[str, float]:
    """For /metrics: pending rows waiting (for their instance or their turn) and held (the engine
    failed or was away), the oldest's age in seconds; from the partial index on pending rows."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT held) AS waiting, count(*) FILTER (WHERE held) AS held,"
        " coalesce(extract(epoch FROM now() - min(received_at)), 0) AS oldest"
        " FROM process_inbox WHERE state = 'pending'")
    return {k: float(row[k]) for k in ("waiting", "held", "oldest")}


async def prune_inbox(conn: asyncpg.Connection, older_than: float) -> int:
    """Delete rows correlated (or settled) more than older_than seconds ago; dead rows stay. How many."""
    status = await conn.execute(
        "DELETE FROM process_inbox WHERE state <> 'pending' AND state <> 'dead'"
        " AND done_at < now() - make_interval(secs => $1)", older_than)
    return int(status.split()[-1])
