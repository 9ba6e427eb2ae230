"""Reconciliation of orders and process instances, both ways: what a crash left behind is repaired.

Every round (EDPO_RECONCILE_INTERVAL) looks at orders quiet for longer than EDPO_RECONCILE_GRACE:

- an accepted, unfinished order without any process instance gets its start row back (the
  bridge starts the instance);
- an order whose instance waits for a message the inbox already marked correlated (or gave
  up on) gets that row back to pending (the correlation did not take effect); if the inbox
  never received it, its source is asked again (ReserveStock, FinishDelivery), and re-announces
  what it already decided (ADR 0003);
- an instance still running for an order that is already final is ended, and of two
  instances running for one order the later ones are ended;
- finished inbox rows and sent outbox rows older than EDPO_RETENTION_HOURS are pruned.

Each repair is idempotent; each finding is logged and counted (`/health` -> counters).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from edpo.agents.order.inbox import CANCEL_REQUESTED, prune_inbox, reopen_awaited, request_start
from edpo.agents.order.outbox import enqueue, prune_outbox
from edpo.agents.order.store import final_orders, order_lines, quiet_open_orders, trace_of
from edpo.camunda.engine import Engine
from edpo.models import FinishDelivery, Line, Message, ReserveStock

logger = logging.getLogger(__name__)
SOURCE = "order-reconciler"

# At most this many quiet open orders are examined per round.
BATCH = 200
_START = (datetime.min.replace(tzinfo=UTC), "")


class Reconciler:
    def __init__(self, pool: asyncpg.Pool, engine: Engine, process_key: str, *, grace: float,
                 retention_hours: float, count: Callable[[str, int], None], wake: Callable[[], None],
                 wake_relay: Callable[[], None] = lambda: None) -> None:
        self.pool = pool
        self.engine = engine
        self.process_key = process_key
        self.grace = grace
        self.retention_hours = retention_hours
        self.count = count
        self.wake = wake
        self.wake_relay = wake_relay
        self._cursor = _START

    async def run_once(self) -> Counter[str]:
        """One reconciliation round; returns what it found and repaired, by kind."""
        found: Counter[str] = Counter()
        running: dict[str, list[str]] = {}
        for inst in await self.engine.active_instances(self.process_key):
            # Pages read while instances start and end overlap: an instance listed twice is one
            # instance, not a duplicate to end (that ended the only instance of busy orders).
            ids = running.setdefault(inst["businessKey"], []) if inst.get("businessKey") else None
            if ids is not None and inst["id"] not in ids:
                ids.append(inst["id"])
        await self._close_extra_instances(running, found)
        await self._close_instances_of_final_orders(running, found)
        await self._repair_open_orders(running, found)
        found["pruned_rows"] = await self._prune()
        for kind, n in found.items():
            if n and kind != "pruned_rows":
                self.count(f"reconcile_{kind}", n)
        # Asking a source again is routine (an order waiting for a silent courier is asked every
        # round until a dispatcher decides): a repair is worth a warning, a question is not.
        if any(n for kind, n in found.items() if kind not in ("pruned_rows", "asked_again")):
            logger.warning("reconciliation: %s", dict(found))
        elif found["asked_again"]:
            logger.info("reconciliation: %s", dict(found))
        return found

    async def _close_extra_instances(self, running: dict[str, list[str]], found: Counter[str]) -> None:
        for order_id, ids in running.items():
            if len(ids) < 2:
                continue
            history = await self.engine.history_instances(self.process_key, order_id)
            started = {h["id"]: h.get("startTime") or "" for h in history}
            keep, *extra = sorted(ids, key=lambda i: (started.get(i, ""), i))
            for instance_id in extra:
                logger.error("order %s has a second process instance %s (keeping %s): ended", order_id,
                             instance_id, keep)
                await self.engine.delete_instance(instance_id)
                found["duplicate_instance"] += 1
            running[order_id] = [keep]

    async def _close_instances_of_final_orders(self, running: dict[str, list[str]], found: Counter[str]) -> None:
        if not running:
            return
        for row in await final_orders(self.pool, list(running), self.grace):
            for instance_id in running.pop(row["order_id"]):
                logger.error("order %s is %s but its process instance %s still runs: ended", row["order_id"],
                             row["status"], instance_id)
                await self.engine.delete_instance(instance_id)
                found["instance_of_final_order"] += 1

    async def _repair_open_orders(self, running: dict[str, list[str]], found: Counter[str]) -> None:
        # A cursor walks through the quiet open orders BATCH at a time, so orders that stay open
        # for long (waiting for stock) do not keep newer ones from being looked at.
        rows = await quiet_open_orders(self.pool, self.grace, self._cursor, BATCH)
        self._cursor = (rows[-1]["updated_at"], rows[-1]["order_id"]) if len(rows) == BATCH else _START
        for row in rows:
            order_id = row["order_id"]
            instances = running.get(order_id)
            if not instances:
                await self._restart(order_id, row["status"], found)
                continue
            # A running instance always listens for a customer's cancellation: not an awaited event.
            waiting = [name for name in await self.engine.waiting_messages(instances[0]) if name != CANCEL_REQUESTED]
            if waiting:
                attempt = await self.engine.variable(instances[0], "delivery_attempt")
                # The instance waits for alternatives (StockReserved or StockPartiallyReserved;
                # DeliveryCompleted or DeliveryFailed): the source is asked only if none arrived.
                heard = [name for name in waiting if await self._recorrelate(order_id, name, attempt, found)]
                if not heard:
                    await self._ask_again(order_id, waiting, attempt, found)

    async def _restart(self, order_id: str, status: str, found: Counter[str]) -> None:
        if await self.engine.history_instances(self.process_key, order_id):
            # Its instance ended but the order never heard how: nothing to restart; visible.
            logger.error("order %s is %s but its process instance has ended", order_id, status)
            found["ended_instance_open_order"] += 1
            return
        await request_start(self.pool, order_id, "reconciliation: no process instance")
        logger.error("order %s is %s without a process instance: starting one", order_id, status)
        found["missing_instance"] += 1
        self.wake()

    async def _recorrelate(self, order_id: str, message_name: str, attempt: Any, found: Counter[str]) -> bool:
        """The instance waits for message_name: the inbox row that should have moved it is due again.
        Delivery outcomes match only the attempt the instance is at (an earlier attempt's
        outcome was correlated rightly and must stay done). False if the inbox has no such row."""
        reopened = await reopen_awaited(self.pool, order_id, message_name, attempt,
                                        "reconciliation: the instance still waits for it")
        if reopened is None:
            return False
        if reopened:
            logger.error("order %s: its instance still waits for %s, which was correlated: again", order_id,
                         message_name)
            found["lost_correlation"] += 1
            self.wake()
        return True

    async def _ask_again(self, order_id: str, names: list[str], attempt: Any, found: Counter[str]) -> None:
        """The instance waits for events the order service never received (lost upstream, or not
        happened yet): ask their source, whose replay rule re-announces what it already decided
        with the same ids (ADR 0003) and ignores what is not due yet."""
        asks: list[Message] = []
        trace = await trace_of(self.pool, order_id)
        if {"StockReserved", "StockPartiallyReserved"} & set(names):
            lines = await order_lines(self.pool, order_id)
            asks.append(ReserveStock(source=SOURCE, order_id=order_id, trace_id=trace,
                                     lines=[Line(**line) for line in lines]))
        if {"DeliveryCompleted", "DeliveryFailed"} & set(names) and isinstance(attempt, int):
            asks.append(FinishDelivery(source=SOURCE, order_id=order_id, attempt=attempt, trace_id=trace))
        if not asks:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            for msg in asks:
                await enqueue(conn, msg)
        logger.info("order %s: its instance waits for %s; asked %s again", order_id, names,
                    [m.type for m in asks])
        found["asked_again"] += len(asks)
        self.wake_relay()

    async def _prune(self) -> int:
        older_than = self.retention_hours * 3600.0
        async with self.pool.acquire() as conn:
            return await prune_inbox(conn, older_than) + await prune_outbox(conn, older_than)
