"""The bridge from Kafka events to the order process: starts instances and correlates messages.

Events are written to the `process_inbox` table in the same transaction as the order's
status change, then correlated by a loop. Correlation is retried while no instance waits
for the message yet (an event that arrives early is not lost); the event id is the primary
key, so a duplicate event is stored once and correlated at most once. An order has one
start row (`start:<order id>`), however many OrderAccepted arrive and however many order
workers run: the row is locked while it is worked on, so one instance is started per order.
A message that no longer fits (its instance has ended, or none waited for it for an hour)
is dead-lettered with the reason, never dropped; `edpo dlq replay` brings it back.

An order's events reach its process in the order they came: a row whose correlation failed
for a technical reason (the engine erred or was away) is `held`, and the later rows of its
order wait behind it. Otherwise a StockReserved could overtake its StockPartiallyReserved and
the process would skip "Request replenishment" (found by kill -9 postgres, docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import msgspec

from edpo.agents.order.outbox import enqueue
from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine, EngineError
from edpo.config import Settings
from edpo.logs import OutageLog
from edpo.models import (
    DeadLetter,
    DeliveryCompleted,
    DeliveryEvent,
    DeliveryFailed,
    Message,
    OrderAccepted,
    OrderEvent,
    StockPartiallyReserved,
    StockReserved,
    WarehouseEvent,
    encode,
)
from edpo.runtime.consume import server_away
from edpo.runtime.failpoints import NONE, Failpoints
from edpo.runtime.retry import CORRELATION
from edpo.topics import route

logger = logging.getLogger(__name__)

START = "start"  # the inbox row that starts the order's process instance
DEAD = "dead"  # an inbox row given up on: dead-lettered with its reason
CANCEL_REQUESTED = "CancelRequested"  # the message a customer's cancellation is correlated as
NOT_STARTED = "the order's process has not started yet"
NOT_STARTED_RETRY = 0.25  # seconds between tries of an event whose process has not started


def effect_mark(row: asyncpg.Record) -> str:
    """The process variable a correlation sets to its event id (one per message and attempt)."""
    attempt = json.loads(row["correlation"]).get("delivery_attempt")
    return f"edpo_event_{row['message_name']}" + (f"_{attempt}" if attempt is not None else "")


def start_row_id(order_id: str) -> str:
    """The one inbox row that starts an order's process instance."""
    return f"start:{order_id}"


def cancel_row_id(order_id: str) -> str:
    """The one inbox row that tells the order's process instance the customer cancelled."""
    return f"cancel:{order_id}"


def _no_vars(_: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {}


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

# How long an event may wait for its process before it is given up (dead-lettered).
MAX_PENDING = timedelta(hours=1)

_event_decoder = msgspec.json.Decoder(OrderEvent | WarehouseEvent | DeliveryEvent)


def decode_event(raw: bytes) -> Message:
    return _event_decoder.decode(raw)


def wanted(msg: Message) -> bool:
    """Does the process start on, or wait for, this event?"""
    return isinstance(msg, OrderAccepted) or type(msg) in CORRELATIONS


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


def dead_letter_of(row: asyncpg.Record, reason: str) -> DeadLetter:
    """The dead letter of an inbox row: the original event, back on its topic when replayed."""
    payload = row["payload"] or ""
    topic = ""
    if payload:
        try:
            topic = route(decode_event(payload.encode()))[0].name
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
            topic = ""
    return DeadLetter(source="order", topic=topic, partition=-1, offset=-1, key=row["order_id"],
                      reason=f"process bridge: {reason}", payload=payload, error=row["last_error"] or "",
                      attempts=row["attempts"] + 1)


class ProcessBridge:
    """Works off the inbox: a batch at a time, concurrently, rows locked while in flight."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, engine: Engine,
                 start_variables: Callable[[str], Any], deploy: Callable[[], Any],
                 process_key: str = ORDER_FULFILMENT, wake: asyncio.Event | None = None,
                 failpoints: Failpoints = NONE) -> None:
        self.settings = settings
        self.failpoints = failpoints
        self.process_key = process_key
        self.pool = pool
        self.engine = engine
        self.start_variables = start_variables
        self.deploy = deploy
        # Set by whoever records an inbox row, so the loop does not wait for its next tick.
        self.wake = wake or asyncio.Event()

    async def run(self) -> None:
        """Correlate forever; woken by new inbox rows, otherwise every tick."""
        outage = OutageLog(logger, "process bridge round")
        while True:
            self.wake.clear()  # before looking, so a row recorded meanwhile is not missed
            try:
                busy = await self.work_once()
                outage.passed()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # database or engine hiccup: try again shortly
                if server_away(e):
                    outage.failed(e)
                else:
                    logger.exception("process bridge round failed")
                busy = False
            if not busy:
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.tick * 5)
                except TimeoutError:
                    pass

    async def work_once(self, limit: int = 64) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            # An event never overtakes an older one of its order that is held (its correlation
            # failed for a technical reason): the process must hear them in the order they came.
            rows = await conn.fetch(
                "SELECT * FROM process_inbox i WHERE state = 'pending' AND next_try_at <= now()"
                " AND NOT EXISTS (SELECT 1 FROM process_inbox o WHERE o.order_id = i.order_id"
                " AND o.state = 'pending' AND o.held AND o.received_at < i.received_at)"
                " ORDER BY received_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            if not rows:
                return False
            # Rows of one order go in sequence (start before messages); orders in parallel.
            # Only the engine is called concurrently: this connection stays with this task.
            by_order: dict[str, list[asyncpg.Record]] = {}
            for row in rows:
                by_order.setdefault(row["order_id"], []).append(row)
            results = await asyncio.gather(*(self._order_rows(rs) for rs in by_order.values()))
            rows_by_id = {row["event_id"]: row for row in rows}
            for updates in results:
                for args in updates:
                    if args[1] == DEAD:
                        letter = dead_letter_of(rows_by_id[args[0]], args[2] or "given up")
                        logger.error("inbox row %s (%s for order %s) dead-lettered: %s", args[0],
                                     rows_by_id[args[0]]["message_name"], rows_by_id[args[0]]["order_id"], args[2])
                        await enqueue(conn, letter)
                    await conn.execute(
                        "UPDATE process_inbox SET state = $2, attempts = attempts + 1, last_error = $3,"
                        " next_try_at = now() + make_interval(secs => $4), held = $5,"
                        " done_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END WHERE event_id = $1",
                        *args,
                    )
                    row = rows_by_id[args[0]]
                    if row["message_name"] == START and args[1] == "correlated":
                        # The process runs now: its order's waiting events are due at once (rows
                        # another bridge is working on are left to it).
                        await conn.execute(
                            "UPDATE process_inbox SET next_try_at = now() WHERE event_id IN (SELECT event_id"
                            " FROM process_inbox WHERE order_id = $1 AND state = 'pending' AND event_id <> $2"
                            " FOR UPDATE SKIP LOCKED)", row["order_id"], row["event_id"])
                        self.wake.set()
            return len(rows) == limit

    async def _order_rows(self, rows: list[asyncpg.Record]) -> list[tuple]:
        """One order's rows, oldest first (the start first); a row that fails for a technical
        reason is held and its order's later rows stay as they are, to go after it."""
        out = []
        for row in sorted(rows, key=lambda r: (r["message_name"] != START, r["received_at"])):
            state, error, held = await self._handle(row)
            # Before its process has started, an event is tried again soon, not after a growing
            # backoff: a customer's cancellation must not lag behind the order it cancels.
            delay = NOT_STARTED_RETRY if error == NOT_STARTED else CORRELATION.delay(row["attempts"] + 1)
            out.append((row["event_id"], state, error, delay, held))
            if held:
                break
        return out

    async def _handle(self, row: asyncpg.Record) -> tuple[str, str | None, bool]:
        """(new state, note, held): held when the engine failed or was away, not when no
        instance waits for the message (yet)."""
        order_id = row["order_id"]
        try:
            if row["message_name"] == START:
                return (*await self._start(order_id), False)
            values = json.loads(row["variables"])
            # The mark travels with the message, so the engine records in the same transaction
            # that this event took effect (see _unmatched).
            values[effect_mark(row)] = row["event_id"]
            await self.engine.correlate(row["message_name"], order_id, values, json.loads(row["correlation"]))
            self.failpoints.hit("after_correlate")
            return "correlated", None, False
        except EngineError as e:
            if e.is_no_match:
                return (*await self._unmatched(order_id, row), False)
            return "pending", str(e)[:500], True
        except Exception as e:  # noqa: BLE001 - engine unreachable: retry later
            return "pending", f"{type(e).__name__}: {e}"[:500], True

    async def _start(self, order_id: str) -> tuple[str, str | None]:
        """Start the order's instance unless one exists (or existed): idempotent."""
        if await self.engine.history_instances(self.process_key, order_id):
            return "correlated", "an instance existed already"
        values = await self.start_variables(order_id)
        if values is None:
            return DEAD, "no such order in the order database"
        try:
            await self.engine.start_process(self.process_key, order_id, values)
        except EngineError as e:
            if e.status not in (400, 404) or "process definition" not in str(e.body).lower():
                raise
            # The engine lost its deployments (a new database): deploy again, then start.
            logger.warning("process %s not deployed; deploying it again", self.process_key)
            await self.deploy()
            await self.engine.start_process(self.process_key, order_id, values)
        self.failpoints.hit("after_start")
        return "correlated", None

    async def _unmatched(self, order_id: str, row: asyncpg.Record) -> tuple[str, str | None]:
        """Keep waiting while the instance runs (or has not started); give up, dead-lettering the
        event with the reason, once its instance has ended or after MAX_PENDING."""
        history = await self.engine.history_instances(self.process_key, order_id)
        marks = await self.engine.history_values([h["id"] for h in history], effect_mark(row))
        if row["event_id"] in marks:
            # The correlation took effect but its answer was lost (engine or worker died in
            # between): done, not a dead letter.
            return "correlated", "took effect before (the instance carries its mark)"
        final = await self.pool.fetchval(
            "SELECT status FROM orders WHERE order_id = $1 AND status IN ('DELIVERED', 'CANCELLED', 'REJECTED')",
            order_id)
        if final and all(h["state"] != "ACTIVE" for h in history):
            # The order is over (a cancellation raced the courier, or the warehouse rejected the
            # order before anyone cancelled it): nothing waits for this any more, and nothing is lost.
            return "correlated", f"{row['message_name']}: the order is {final} and its process has ended"
        if history and all(h["state"] != "ACTIVE" for h in history):
            return DEAD, f"{row['message_name']}: the order's process instance has ended"
        received = row["received_at"]
        age = await self.pool.fetchval("SELECT now() - $1::timestamptz", received)
        if age > MAX_PENDING:
            return DEAD, f"{row['message_name']}: no process instance waited for it within {MAX_PENDING}"
        if not history:
            return "pending", NOT_STARTED
        return "pending", "no process instance waits for it (yet)"
