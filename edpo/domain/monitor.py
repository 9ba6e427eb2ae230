"""The monitor's read models: what the operations dashboard shows, built from the other services' events.

Plain classes over state and a message; no I/O (the monitor service, edpo/agents/monitor,
wires them to Kafka, its own tables and the web). Each view takes an event at most once (by
its id), so duplicates and replays (docs/adr/0003) change nothing, and events of one order
arriving from three topics in any order still make one timeline in time order.

- `OrderView` (per order id): status as the order service records it (`OrderStatusChanged`),
  and every event of the order from every service, with its trace id.
- `SkuView` (per SKU): on hand and reserved, as the warehouse last announced them.
- `ProductionView` (per SKU): factory batches in production and units produced.
- `DeadLetterBox` (per dead-letter key): the dead letters of that key, and which were replayed.
- `Board`: aggregates over every order (counts by status, placed and delivered per minute,
  recent orders, units waiting per SKU, deliveries in transit and failed). A cache the monitor
  rebuilds from its order table after a restart, never state of its own.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import msgspec

from edpo.domain.lifecycle import DELIVERED, PLACED, STATUSES
from edpo.models import (
    DeadLetter,
    DeadLetterReplayed,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryRejected,
    DeliveryStarted,
    DeliveryWithdrawn,
    ItemsManufactured,
    Line,
    Message,
    OrderCancelled,
    OrderPlaced,
    OrderRejected,
    OrderStatusChanged,
    PackingRejected,
    ProductionRequested,
    ProductionStarted,
    StockLevelChanged,
    StockPartiallyReserved,
    StockReleased,
    StockReserved,
)

# An order's timeline keeps at most this many events (a normal order has about 15).
TIMELINE_LIMIT = 200
# Dead letters kept per key, and production ids remembered per SKU (to ignore a batch twice).
LETTERS_PER_KEY = 20
FINISHED_BATCHES = 50
REASON_LIMIT = 300
FINAL = frozenset({"DELIVERED", "CANCELLED", "REJECTED"})


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of an order's timeline: a Kafka event, or a step of its process in the engine."""

    time: datetime
    kind: str  # "event" (Kafka) or, from the engine: "activity", "user task", "incident"
    name: str  # the message type, or the activity's name
    source: str  # the service that published it, or "engine"
    trace_id: str = ""
    id: str = ""  # the message id, or the engine's activity instance / incident id
    detail: str = ""
    topic: str = ""


def describe(msg: Message) -> str:
    """The few words a timeline shows next to an event's type."""
    match msg:
        case OrderStatusChanged(status=status):
            return status
        case OrderPlaced(lines=lines) | StockPartiallyReserved(missing=lines):
            return ", ".join(f"{line.sku} x{line.quantity}" for line in lines)
        case StockReserved(short=short) if short:
            return "was short of " + ", ".join(f"{line.sku} x{line.quantity}" for line in short)
        case DeliveryFailed(attempt=n, reason=reason) | DeliveryRejected(attempt=n, reason=reason):
            return f"attempt {n}: {reason}"
        case DeliveryWithdrawn(attempt=n, outcome=outcome):
            return f"attempt {n or 'all'}: {outcome}"
        case DeliveryStarted(attempt=n) | DeliveryCompleted(attempt=n):
            return f"attempt {n}"
        case OrderRejected(reason=reason) | PackingRejected(reason=reason) | OrderCancelled(reason=reason):
            return reason
    return ""


class OrderView(msgspec.Struct, kw_only=True):
    """One order as the dashboard sees it, from the events of every service."""

    order_id: str
    status: str = ""  # "" until the order service's first event about it arrived
    customer_id: str = ""
    lines: list[Line] = []
    trace_id: str = ""
    placed_at: datetime | None = None
    updated_at: datetime | None = None
    delivered_at: datetime | None = None
    in_transit: list[int] = []  # delivery attempts on the road
    failed_attempts: int = 0
    missing: list[Line] = []  # units the order waits for (its last StockPartiallyReserved)
    steps: list[Step] = []  # in time order

    def apply(self, msg: Message, topic: str = "") -> bool:
        """Take one event of this order into the view; False (nothing changes) for one seen before."""
        if any(step.id == msg.id for step in self.steps):
            return False
        match msg:
            case OrderPlaced():
                self.customer_id, self.lines, self.placed_at = msg.customer_id, list(msg.lines), msg.time
                self.status = self.status or PLACED
            case OrderStatusChanged(status=status):
                # The order service announces a status only when it advances, in order per order
                # (one partition); a terminal one is never left.
                if self.status not in FINAL:
                    self.status = status
                if status == DELIVERED and self.delivered_at is None:
                    self.delivered_at = msg.time
            case StockPartiallyReserved(missing=missing):
                self.missing = list(missing)
            case StockReserved() | StockReleased():
                self.missing = []
            case DeliveryStarted(attempt=n) if n not in self.in_transit:
                self.in_transit = sorted([*self.in_transit, n])
            case DeliveryCompleted(attempt=n) | DeliveryFailed(attempt=n) | DeliveryWithdrawn(attempt=n):
                self.in_transit = [a for a in self.in_transit if a != n and n != 0]
                if isinstance(msg, DeliveryFailed):
                    self.failed_attempts += 1
        self.trace_id = self.trace_id or msg.trace_id
        if self.updated_at is None or msg.time > self.updated_at:
            self.updated_at = msg.time
        step = Step(time=msg.time, kind="event", name=msg.type, source=msg.source, trace_id=msg.trace_id,
                    id=msg.id, detail=describe(msg), topic=topic)
        bisect.insort(self.steps, step, key=lambda s: s.time)
        if len(self.steps) > TIMELINE_LIMIT:
            self.steps = self.steps[-TIMELINE_LIMIT:]
        return True

    def forgettable(self, now: datetime, retention: timedelta) -> bool:
        """Finished, and nothing happened to it for longer than the retention."""
        return self.status in FINAL and self.updated_at is not None and now - self.updated_at > retention

    @property
    def waiting(self) -> list[Line]:
        """Units the order still waits for (none once it is final)."""
        return [] if self.status in FINAL else self.missing


class SkuView(msgspec.Struct, kw_only=True):
    """One SKU's stock as the warehouse last announced it."""

    sku: str
    on_hand: int = 0
    reserved: int = 0
    updated_at: datetime | None = None
    reason: str = ""

    def apply(self, msg: StockLevelChanged) -> bool:
        """The level of a later announcement replaces the one before; an older one changes nothing."""
        if self.updated_at is not None and msg.time < self.updated_at:
            return False
        self.on_hand, self.reserved, self.updated_at, self.reason = msg.on_hand, msg.reserved, msg.time, msg.reason
        return True


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    production_id: str
    quantity: int
    started_at: datetime


class ProductionView(msgspec.Struct, kw_only=True):
    """One SKU's factory: batches in production, units made, requests taken."""

    sku: str
    batches: list[Batch] = []
    produced: int = 0
    requests: int = 0
    finished: list[str] = []  # the last production ids finished, so a repeated event counts once

    def apply(self, msg: Message) -> bool:
        match msg:
            case ProductionStarted(production_id=pid) if pid not in self.finished:
                if any(b.production_id == pid for b in self.batches):
                    return False
                self.batches = [*self.batches, Batch(production_id=pid, quantity=msg.quantity, started_at=msg.time)]
            case ItemsManufactured(production_id=pid) if pid not in self.finished:
                self.batches = [b for b in self.batches if b.production_id != pid]
                self.produced += msg.quantity
                self.finished = [*self.finished, pid][-FINISHED_BATCHES:]
            case ProductionRequested():
                self.requests += 1
            case _:
                return False
        return True


class Letter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter as the dashboard lists it (its payload stays on the topic: `edpo dlq list`)."""

    id: str
    time: datetime
    topic: str
    partition: int
    offset: int
    reason: str
    attempts: int = 0
    replayed: bool = False


class DeadLetterBox(msgspec.Struct, kw_only=True):
    """The dead letters of one key (the key of the record that could not be handled)."""

    key: str
    letters: list[Letter] = []
    total: int = 0
    replayed: int = 0

    def apply(self, msg: Message) -> bool:
        match msg:
            case DeadLetter() if all(letter.id != msg.id for letter in self.letters):
                letter = Letter(id=msg.id, time=msg.time, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                reason=msg.reason[:REASON_LIMIT], attempts=msg.attempts)
                self.letters = [*self.letters, letter][-LETTERS_PER_KEY:]
                self.total += 1
            case DeadLetterReplayed(dead_letter_id=letter_id):
                found = [letter for letter in self.letters if letter.id == letter_id and not letter.replayed]
                if not found:
                    return False
                self.letters = [msgspec.structs.replace(letter, replayed=True) if letter.id == letter_id else letter
                                for letter in self.letters]
                self.replayed += 1
            case _:
                return False
        return True

    @property
    def open(self) -> int:
        """Dead letters of this key not replayed yet."""
        return self.total - self.replayed


# --- aggregates over every order -----------------------------------------------------------------


class Brief(msgspec.Struct, frozen=True, kw_only=True):
    """What the order list and the aggregates need of one order."""

    order_id: str
    status: str
    placed_at: datetime | None
    updated_at: datetime | None
    delivered_at: datetime | None
    in_transit: bool
    failed_attempts: int
    waiting: list[Line]
    trace_id: str
    customer_id: str = ""

    @classmethod
    def of(cls, view: OrderView) -> Brief:
        return cls(order_id=view.order_id, status=view.status or "UNKNOWN", placed_at=view.placed_at,
                   updated_at=view.updated_at, delivered_at=view.delivered_at, in_transit=bool(view.in_transit),
                   failed_attempts=view.failed_attempts, waiting=view.waiting, trace_id=view.trace_id,
                   customer_id=view.customer_id)


class Minute(msgspec.Struct, frozen=True, kw_only=True):
    """Orders placed and delivered in one minute."""

    minute: datetime
    placed: int
    delivered: int


class Deliveries(msgspec.Struct, frozen=True, kw_only=True):
    in_transit: int
    failed_attempts: int  # delivery attempts that failed, over every order
    failed_orders: int  # orders with at least one failed attempt
    in_transit_orders: list[str]


def minute_of(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(second=0, microsecond=0)


class Board:
    """Aggregates over every order's brief; `version` grows with every change."""

    def __init__(self) -> None:
        self.briefs: dict[str, Brief] = {}
        self.version = 0

    def put(self, view: OrderView) -> None:
        self.briefs[view.order_id] = Brief.of(view)
        self.version += 1

    def forget(self, order_id: str) -> None:
        if self.briefs.pop(order_id, None) is not None:
            self.version += 1

    def forgettable(self, now: datetime, retention: timedelta) -> list[str]:
        """Orders finished, and quiet for longer than the retention."""
        return [b.order_id for b in self.briefs.values()
                if b.status in FINAL and b.updated_at is not None and now - b.updated_at > retention]

    def rebuild(self, views: Iterable[OrderView]) -> None:
        self.briefs = {v.order_id: Brief.of(v) for v in views}
        self.version += 1

    def counts(self) -> dict[str, int]:
        """Orders per status, every status of the lifecycle listed (0 when none)."""
        found = Counter(b.status for b in self.briefs.values())
        counts = {status: found.pop(status, 0) for status in STATUSES}
        counts.update(sorted(found.items()))  # an order known only from later events: "UNKNOWN"
        return counts

    def throughput(self, now: datetime, minutes: int = 30) -> list[Minute]:
        """Orders placed and delivered in each of the last `minutes` minutes, oldest first."""
        last = minute_of(now)
        first = last - timedelta(minutes=minutes - 1)
        placed: Counter[datetime] = Counter()
        delivered: Counter[datetime] = Counter()
        for b in self.briefs.values():
            if b.placed_at is not None and (m := minute_of(b.placed_at)) >= first:
                placed[m] += 1
            if b.delivered_at is not None and (m := minute_of(b.delivered_at)) >= first:
                delivered[m] += 1
        return [Minute(minute=m, placed=placed[m], delivered=delivered[m])
                for m in (first + timedelta(minutes=i) for i in range(minutes))]

    def recent(self, limit: int = 30) -> list[Brief]:
        """The orders changed last, newest first."""
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(self.briefs.values(), key=lambda b: b.updated_at or epoch, reverse=True)[:limit]

    def search(self, text: str, limit: int = 20) -> list[Brief]:
        """Orders whose id starts with text (the exact id first), newest first."""
        text = text.strip().lower()
        exact = self.briefs.get(text)
        epoch = datetime.min.replace(tzinfo=UTC)
        found = sorted((b for b in self.briefs.values() if b.order_id.lower().startswith(text) and b is not exact),
                       key=lambda b: b.updated_at or epoch, reverse=True)
        return ([exact] if exact else []) + found[: limit - (1 if exact else 0)]

    def waiting_by_sku(self) -> dict[str, int]:
        """Units open orders wait for, per SKU."""
        waiting: Counter[str] = Counter()
        for b in self.briefs.values():
            for line in b.waiting:
                waiting[line.sku] += line.quantity
        return dict(waiting)

    def deliveries(self, limit: int = 20) -> Deliveries:
        on_road = [b.order_id for b in self.briefs.values() if b.in_transit and b.status not in FINAL]
        return Deliveries(in_transit=len(on_road),
                          failed_attempts=sum(b.failed_attempts for b in self.briefs.values()),
                          failed_orders=sum(1 for b in self.briefs.values() if b.failed_attempts),
                          in_transit_orders=sorted(on_road)[:limit])


def engine_time(text: str | None) -> datetime | None:
    """A time as the Camunda REST API writes it (2026-11-28T18:40:01.123+0000)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)
    except ValueError:
        return datetime.fromisoformat(text).astimezone(UTC)


# Activities a timeline leaves out: the engine's plumbing, not steps a person reads.
HIDDEN_ACTIVITIES = frozenset({"exclusiveGateway", "parallelGateway", "inclusiveGateway", "eventBasedGateway",
                               "multiInstanceBody"})


def process_steps(activities: Iterable[dict], incidents: Iterable[dict]) -> list[Step]:
    """Timeline steps from the engine's history of one instance: activity instances (user tasks
    among them) and incidents."""
    steps: list[Step] = []
    for a in activities:
        kind = a.get("activityType", "")
        started = engine_time(a.get("startTime"))
        if kind in HIDDEN_ACTIVITIES or started is None:
            continue
        ended = engine_time(a.get("endTime"))
        detail = kind
        if ended is not None:
            detail += f", {(ended - started).total_seconds():.2f} s"
            if a.get("canceled"):
                detail += ", cancelled"
        else:
            detail += ", active"
        steps.append(Step(time=started, kind="user task" if kind == "userTask" else "activity",
                          name=a.get("activityName") or a.get("activityId", ""), source="engine",
                          id=a.get("id", ""), detail=detail))
    for i in incidents:
        created = engine_time(i.get("createTime") or i.get("incidentTimestamp"))
        if created is None:
            continue
        state = "resolved" if i.get("resolved") else "deleted" if i.get("deleted") else "open"
        steps.append(Step(time=created, kind="incident", name=f"Incident at {i.get('activityId', '')}", source="engine",
                          id=i.get("id", ""), detail=f"{state}: {(i.get('incidentMessage') or '')[:REASON_LIMIT]}"))
    return steps


def timeline(view: OrderView | None, process: Iterable[Step]) -> list[Step]:
    """Every event of the order and every step of its process, in time order."""
    steps = [*(view.steps if view is not None else []), *process]
    return sorted(steps, key=lambda s: s.time)
