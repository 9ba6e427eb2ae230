"""The bridge from the process inbox to the order process: starts instances and correlates messages.

It talks to the engine only; its rows come from and go back to the inbox (inbox.py, which
explains how events get there). Correlation is retried while no instance waits for the message
yet (an event that arrives early is not lost); a row is correlated at most once. An order's
start row is locked while it is worked on, so one instance is started per order, however many
OrderAccepted arrive and however many order workers run. A message that no longer fits (its
instance has ended, or none waited for it for an hour) is dead-lettered with the reason, never
dropped; `edpo dlq replay` brings it back.

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

from edpo.agents.order.inbox import DEAD, START, due_inbox, hurry_order, settle
from edpo.agents.order.outbox import enqueue
from edpo.agents.order.store import final_status
from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine, EngineError
from edpo.config import Settings
from edpo.logs import OutageLog
from edpo.models import DeadLetter, DeliveryEvent, Message, OrderEvent, WarehouseEvent
from edpo.runtime.consume import server_away
from edpo.runtime.failpoints import NONE, Failpoints
from edpo.runtime.retry import CORRELATION
from edpo.topics import route

logger = logging.getLogger(__name__)

MAX_PENDING = timedelta(hours=1)  # how long an event may wait for its process before it is dead-lettered
NOT_STARTED = "the order's process has not started yet"
NOT_STARTED_RETRY = 0.25  # seconds between tries of an event whose process has not started

_event_decoder = msgspec.json.Decoder(OrderEvent | WarehouseEvent | DeliveryEvent)


def effect_mark(row: asyncpg.Record) -> str:
    """The process variable a correlation sets to its event id (one per message and attempt)."""
    attempt = json.loads(row["correlation"]).get("delivery_attempt")
    return f"edpo_event_{row['message_name']}" + (f"_{attempt}" if attempt is not None else "")


def decode_event(raw: bytes) -> Message:
    return _event_decoder.decode(raw)


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
            rows = await due_inbox(conn, limit)
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
                    await settle(conn, *args)
                    row = rows_by_id[args[0]]
                    if row["message_name"] == START and args[1] == "correlated":
                        # The process runs now: its order's waiting events are due at once.
                        await hurry_order(conn, row["order_id"], row["event_id"])
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
        final = await final_status(self.pool, order_id)
        if final and all(h["state"] != "ACTIVE" for h in history):
            # The order is over (a cancellation raced the courier, or the warehouse rejected the
            # order before anyone cancelled it): nothing waits for this any more, and nothing is lost.
            return "correlated", f"{row['message_name']}: the order is {final} and its process has ended"
        if history and all(h["state"] != "ACTIVE" for h in history):
            return DEAD, f"{row['message_name']}: the order's process instance has ended"
        if row["waited"] > MAX_PENDING:
            return DEAD, f"{row['message_name']}: no process instance waited for it within {MAX_PENDING}"
        if not history:
            return "pending", NOT_STARTED
        return "pending", "no process instance waits for it (yet)"
