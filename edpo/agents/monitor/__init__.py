"""The monitor service: a live operations dashboard, a fifth consumer of the existing event topics.

It consumes order-events, warehouse-events, delivery-events, inventory-events, factory-events and
dead-letters with its own consumer group (`edpo-monitor`), keeps read models in tables of its own
(edpo/domain/monitor.py) and serves, at http://HOST:EDPO_MONITOR_PORT/ (default 6070), a page that
follows them live over server-sent events (`GET /feed`): orders by status, placed and delivered per
minute, recent orders, one order's timeline (its events from every service and its process steps
from the engine's history), stock per SKU, factory batches, deliveries, open escalations,
incidents, dead letters and each service's consumer lag. The other four services do not know it.

One worker, whatever `edpo up --instances` says: the dashboard needs the global picture, and a
single member of its consumer group owns every partition, so its tables hold every order and SKU
(GlobalTables on several monitors would give the same picture at the price of every monitor reading
every changelog). The monitor is a read model, not on any order's path: when it is down, orders go
on, and it catches up from its committed offsets when it is back. `edpo worker monitor --instance 2`
is refused.

It publishes nothing to the other services' topics: a record it cannot decode is logged, counted
in /health (`counters`) and skipped, and the record's owner dead-letters it. Its only messages are
its own ticks on `monitor-ticks`: an order finished longer than EDPO_MONITOR_RETENTION ago is
forgotten (Faust changes a table only while handling a record of its partition, so the timer
sends the order's agent a ForgetOrderView, as the delivery service forgets deliveries).

When EDPO_API_TOKEN is set, every read but the page, its static files, the login form and /health
needs the token: as a bearer header (scripts), or as the session cookie a browser gets by posting
the token to `/login` (HttpOnly, SameSite=Strict; docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any

import faust
import msgspec
from aiohttp import web
from msgspec import Meta

from edpo.config import MONITOR, Settings
from edpo.domain.monitor import (
    Board,
    Brief,
    DeadLetterBox,
    Deliveries,
    Letter,
    Minute,
    OrderView,
    ProductionView,
    SkuView,
    Step,
    timeline,
)
from edpo.models import (
    ForgetOrderView,
    ItemsManufactured,
    Message,
    ProductionRequested,
    ProductionStarted,
    StockLevelChanged,
)
from edpo.models.api import OrderId
from edpo.agents.monitor.watch import GroupLag, Link, Listing, Urls, Watcher
from edpo.runtime.app import ServiceApp
from edpo.runtime.consume import Unread, read_record
from edpo.runtime.http import Answer, Call, Problem, Reply
from edpo.runtime.publish import Publish, raw_topic
from edpo.runtime.tables import Table, TickThrottle
from edpo.topics import (
    TopicSpec,
    dead_letters_topic,
    delivery_events_topic,
    factory_events_topic,
    inventory_events_topic,
    monitor_ticks_topic,
    order_events_topic,
    warehouse_events_topic,
)

logger = logging.getLogger(__name__)
SOURCE = MONITOR
SESSION_COOKIE = "edpo_monitor"
# The live feed: how often it looks for changes, and how long one stream lasts before the browser
# reconnects (EventSource does so by itself): a worker stopping never waits long for open streams.
FEED_CHECK = 0.5
FEED_KEEPALIVE = 15.0
FEED_LIFETIME = 60.0
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
ORDER_TOPICS = (order_events_topic, warehouse_events_topic, delivery_events_topic, monitor_ticks_topic)
RETENTION_SWEEP = 60.0  # seconds between looks for orders to forget
STOCK_TOPICS = (inventory_events_topic, factory_events_topic)


# --- what the API answers ------------------------------------------------------------------------


class StockRow(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    on_hand: int
    reserved: int
    available: int
    waiting: int  # units open orders wait for
    in_production: int  # units in the factory's current batches
    produced: int


class BatchRow(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    production_id: str
    quantity: int
    started_at: datetime


class LetterRow(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    letter: Letter


class DeadLetters(msgspec.Struct, frozen=True, kw_only=True):
    """Dead letters not replayed yet (`count`), the latest ones, and how to handle them."""

    count: int
    total: int
    items: list[LetterRow]
    how: str = "edpo dlq list; edpo dlq replay ID"


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the dashboard shows at once; the feed sends it again whenever it changes."""

    time: datetime
    orders: int
    counts: dict[str, int]
    throughput: list[Minute]
    recent: list[Brief]
    stock: list[StockRow]
    batches: list[BatchRow]
    deliveries: Deliveries
    escalations: Listing
    incidents: Listing
    dead_letters: DeadLetters
    lag: list[GroupLag]
    looked_at: datetime | None  # when the engine and Kafka were last looked at
    problems: list[str]  # what could not be looked at
    cockpit: str
    tasklist: str


class OrderDetail(msgspec.Struct, frozen=True, kw_only=True):
    """One order: its view, every event and process step in time order, links into the engine."""

    order: Brief
    lines: list[dict[str, Any]]
    steps: list[Step]
    instances: list[dict[str, str]]
    open_tasks: list[Link]
    problems: list[str]


class OrderList(msgspec.Struct, frozen=True, kw_only=True):
    orders: list[Brief]


class OrderQuery(msgspec.Struct, frozen=True, kw_only=True):
    q: Annotated[str, Meta(max_length=64, description="Start of an order id (empty: the latest orders)")] = ""
    limit: Annotated[int, Meta(ge=1, le=200, description="Most orders listed")] = 20


# --- handlers over the monitor's tables ----------------------------------------------------------


class Monitor:
    """The monitor's handlers: each event goes into the view of its order, SKU or dead-letter key."""

    def __init__(self, orders: Table[OrderView], stock: Table[SkuView], production: Table[ProductionView],
                 letters: Table[DeadLetterBox], board: Board, publish: Publish | None = None,
                 retention: timedelta = timedelta(hours=24),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.orders = orders
        self.stock = stock
        self.production = production
        self.letters = letters
        self.board = board
        self.publish = publish
        self.retention = retention
        self.clock = clock
        self.changes = 0  # grows with every change any view took: the feed's cue
        self._ticks = TickThrottle(resend_after=RETENTION_SWEEP * 5, forget_after=RETENTION_SWEEP * 10)

    async def on_order_event(self, msg: Message, topic: str = "") -> None:
        """An event of one order (order, warehouse or delivery service) joins its view and timeline;
        ForgetOrderView drops an order finished longer than the retention ago."""
        order_id: str = msg.order_id  # type: ignore[attr-defined]
        if isinstance(msg, ForgetOrderView):
            found = self.orders.get(order_id)
            if found is not None and found.forgettable(self.clock(), self.retention):
                self.orders.delete(order_id)
                self.board.forget(order_id)
                self.changes += 1
            return
        view = self.orders.get(order_id) or OrderView(order_id=order_id)
        if view.apply(msg, topic):
            self.orders.set(order_id, view)
            self.board.put(view)
            self.changes += 1

    async def on_stock_event(self, msg: Message, topic: str = "") -> None:
        """A stock level (warehouse) or production progress (factory) of one SKU."""
        changed = False
        if isinstance(msg, StockLevelChanged):
            sku = self.stock.get(msg.sku) or SkuView(sku=msg.sku)
            if changed := sku.apply(msg):
                self.stock.set(msg.sku, sku)
        elif isinstance(msg, (ProductionStarted, ItemsManufactured, ProductionRequested)):
            line = self.production.get(msg.sku) or ProductionView(sku=msg.sku)
            if changed := line.apply(msg):
                self.production.set(msg.sku, line)
        self.changes += changed

    async def on_dead_letter(self, msg: Message, topic: str = "") -> None:
        """A dead letter, or the mark of its replay, joins the box of its key."""
        key = msg.key or ""  # type: ignore[attr-defined]
        box = self.letters.get(key) or DeadLetterBox(key=key)
        if box.apply(msg):
            self.letters.set(key, box)
            self.changes += 1

    async def forget_finished(self) -> None:
        """Send ForgetOrderView for every order finished longer than the retention ago (once a
        while each: the agent decides from the order's view, a repeated tick changes nothing)."""
        if self.publish is None:
            return
        now = self.clock()
        for order_id in self.board.forgettable(now, self.retention):
            if self._ticks.should_send(order_id, now.timestamp()):
                await self.publish(ForgetOrderView(source=SOURCE, order_id=order_id))
        self._ticks.prune(now.timestamp())

    def stock_rows(self) -> list[StockRow]:
        waiting = self.board.waiting_by_sku()
        levels = dict(self.stock.local_items())
        lines = dict(self.production.local_items())
        rows = []
        for sku in sorted(set(levels) | set(lines) | set(waiting)):
            level = levels.get(sku) or SkuView(sku=sku)
            line = lines.get(sku) or ProductionView(sku=sku)
            rows.append(StockRow(sku=sku, on_hand=level.on_hand, reserved=level.reserved,
                                 available=level.on_hand - level.reserved, waiting=waiting.get(sku, 0),
                                 in_production=sum(b.quantity for b in line.batches), produced=line.produced))
        return rows

    def batch_rows(self) -> list[BatchRow]:
        return sorted((BatchRow(sku=sku, production_id=b.production_id, quantity=b.quantity, started_at=b.started_at)
                       for sku, line in self.production.local_items() for b in line.batches),
                      key=lambda b: b.started_at)

    def dead_letters(self, limit: int = 20) -> DeadLetters:
        boxes = [box for _, box in self.letters.local_items()]
        rows = sorted((LetterRow(key=box.key, letter=letter) for box in boxes for letter in box.letters),
                      key=lambda r: r.letter.time, reverse=True)
        return DeadLetters(count=sum(box.open for box in boxes), total=sum(box.total for box in boxes),
                           items=rows[:limit])


# --- the browser's way in when a token is set ----------------------------------------------------


def session_value(token: str) -> str:
    """The session cookie's value: derived from the token (the token itself never sits in a cookie)."""
    return hmac.new(token.encode(), b"edpo monitor session", hashlib.sha256).hexdigest()


def has_session(token: str, request: web.Request) -> bool:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(token) and bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EDPO operations: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css"></head>
<body class="login"><form method="post" action="/login" class="panel">
<h1>EDPO operations</h1><p>This stack requires the API token (EDPO_API_TOKEN).</p>
<p class="error">{error}</p>
<input type="text" name="username" value="edpo" autocomplete="username" hidden>
<label>API token
<input type="password" name="token" id="token" autocomplete="current-password" autofocus required></label>
<button type="submit" id="sign-in">Sign in</button></form></body></html>
"""


# --- the worker ----------------------------------------------------------------------------------


def create_app(settings: Settings) -> ServiceApp:
    """The monitor worker: its read models over the event topics, the engine and lag watcher, the dashboard."""
    if settings.instance != 1:
        raise ValueError("the monitor runs as one worker (it needs every partition for the global picture): "
                         "start it without --instance, or with --instance 1")
    app = ServiceApp(SOURCE, settings, title="EDPO monitor",
                     description="The live operations dashboard and the read models behind it.")
    orders = app.struct_table("orders_by_id", OrderView, help="Each order's status and timeline")
    stock = app.struct_table("stock_by_sku", SkuView, help="Each SKU's stock as last announced")
    production = app.struct_table("production_by_sku", ProductionView, help="Each SKU's batches in production")
    letters = app.struct_table("dead_letters_by_key", DeadLetterBox, help="Dead letters per record key")
    board = Board()
    monitor = Monitor(orders, stock, production, letters, board, app.publisher.publish,
                      retention=timedelta(hours=settings.monitor_retention))
    urls = Urls(settings.camunda_webapp_url)
    watcher = Watcher(app.engine, settings.kafka_bootstrap, urls)
    app.start_with(watcher)

    def read(name: str, handle: Any, *specs: TopicSpec) -> None:
        """An agent over specs that hands every decoded message to handle; never writes to Kafka."""

        async def agent(stream: faust.StreamT) -> None:
            async for event in stream.events():
                msg = decode(app, name, event)
                if msg is None:
                    continue
                ensure_board()
                try:
                    await handle(msg, event.message.topic)
                except Exception:  # noqa: BLE001 - a read model skips what it cannot take, and says so
                    app.count("events failed")
                    logger.exception("%s: %s %s could not be applied; skipped", name, msg.type, msg.id)

        agent.__name__ = agent.__qualname__ = name
        app.agent(raw_topic(app, *specs), name=name)(agent)

    read("orders", monitor.on_order_event, *ORDER_TOPICS)
    read("stock", monitor.on_stock_event, *STOCK_TOPICS)
    read("dead_letters", monitor.on_dead_letter, dead_letters_topic)
    app.every(RETENTION_SWEEP, monitor.forget_finished)

    # The board is a cache over the order table: built from it once the table is recovered, and
    # again after every rebalance (the table may have other partitions then).
    stale = [True]

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
        stale[0] = True

    def ensure_board() -> None:
        if stale[0] and app.tables.recovery.completed.is_set() and not app.rebalancing:
            board.rebuild(view for _, view in orders.local_items())
            stale[0] = False
            logger.info("monitor board built from %d orders", len(board.briefs))

    cached: dict[str, Any] = {"key": None, "body": b""}

    def overview() -> bytes:
        """The overview, encoded once per change (every client of the feed gets the same bytes)."""
        ensure_board()
        now = datetime.now(UTC)
        key = (monitor.changes, board.version, watcher.version, now.replace(second=0, microsecond=0))
        if cached["key"] != key:
            outside = watcher.last
            cached["body"] = msgspec.json.encode(Overview(
                time=now, orders=len(board.briefs), counts=board.counts(), throughput=board.throughput(now),
                recent=board.recent(), stock=monitor.stock_rows(), batches=monitor.batch_rows(),
                deliveries=board.deliveries(), escalations=outside.escalations, incidents=outside.incidents,
                dead_letters=monitor.dead_letters(), lag=outside.lag, looked_at=outside.time,
                problems=outside.errors, cockpit=urls.cockpit, tasklist=urls.tasklist))
            cached["key"] = key
        return cached["body"]

    api = app.api
    token = settings.api_token
    api.also_authorized = lambda request: has_session(token, request)

    @api.operation("GET", "/", summary="The dashboard", open=True, tag="dashboard",
                   answers={200: Answer("The dashboard page (HTML)"), 303: Answer("Sign in first (a token is set)")})
    async def dashboard(call: Call) -> web.StreamResponse:
        """The dashboard page; when a token is set and the browser has no session, a redirect to /login."""
        if not api.authorized(call.request):
            return _redirect("/login")
        return _html(_asset("index.html").decode())

    @api.operation("GET", "/static/{name}", summary="The dashboard's script and style", open=True, tag="dashboard",
                   answers={200: Answer("The file"), 404: Answer("No such file")})
    async def static(call: Call) -> web.StreamResponse:
        """The dashboard's own files (no CDN): app.js, app.css."""
        name = call.path["name"]
        if name not in STATIC:
            raise Problem(404, "name", f"no such file; the dashboard has {', '.join(sorted(STATIC))}")
        return web.Response(body=_asset(name), content_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @api.operation("GET", "/login", summary="The sign-in form", open=True, tag="dashboard",
                   answers={200: Answer("The form (HTML)"), 303: Answer("No token is set: straight to the dashboard")})
    async def login_form(call: Call) -> web.StreamResponse:
        """The form a browser posts the API token with (to /login); without a token, the dashboard."""
        if not token:
            return _redirect("/")
        return _html(LOGIN_HTML.replace("{error}", ""))

    @api.operation("POST", "/login", summary="Sign in with the API token", open=True, tag="dashboard",
                   answers={303: Answer("Signed in: the session cookie is set, on to the dashboard",
                                        headers={"Set-Cookie": "edpo_monitor=...; HttpOnly; SameSite=Strict"}),
                            401: Answer("Wrong token: the form again (HTML)")})
    async def login(call: Call) -> web.StreamResponse:
        """Exchange the API token (form field `token`) for a session cookie (HttpOnly, SameSite=Strict)."""
        form = await call.request.post()
        given = str(form.get("token", ""))
        if not token:
            return _redirect("/")
        if not hmac.compare_digest(given.encode(), token.encode()):
            logger.warning("dashboard sign-in with a wrong token from %s", call.request.remote)
            return _html(LOGIN_HTML.replace("{error}", "That is not the token."), status=401)
        response = _redirect("/")
        response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="Strict", path="/")
        return response

    @api.operation("POST", "/logout", summary="Sign out", open=True, tag="dashboard",
                   answers={303: Answer("The session cookie is cleared; on to the sign-in form")})
    async def logout(call: Call) -> web.StreamResponse:
        """Clear the session cookie."""
        response = _redirect("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    @api.operation("GET", "/overview", summary="Everything the dashboard shows", tag="dashboard",
                   answers={200: Answer("Counts, throughput, recent orders, stock, deliveries, escalations, "
                                        "incidents, dead letters, consumer lag", Overview)})
    async def get_overview(call: Call) -> web.StreamResponse:
        """The dashboard's data at this moment (the feed sends the same whenever it changes)."""
        watcher.watched()
        return web.Response(body=overview(), content_type="application/json")

    @api.operation("GET", "/feed", summary="The overview, live (server-sent events)", tag="dashboard",
                   answers={200: Answer("text/event-stream: an `overview` event with the overview whenever it "
                                        "changes; a stream ends after a minute and the browser reconnects")})
    async def feed(call: Call) -> web.StreamResponse:
        """Server-sent events: `event: overview` with the overview's JSON each time it changes."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(call.request)
        sent: bytes | None = None
        started = last_write = time.monotonic()
        try:
            await response.write(b"retry: 1000\n\n")
            while time.monotonic() - started < FEED_LIFETIME and not app.should_stop:
                watcher.watched()
                body = overview()
                if body is not sent:
                    await response.write(b"event: overview\ndata: " + body + b"\n\n")
                    sent, last_write = body, time.monotonic()
                elif time.monotonic() - last_write > FEED_KEEPALIVE:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
                await asyncio.sleep(FEED_CHECK)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        return response

    @api.operation("GET", "/orders", summary="Orders, latest first, or by the start of their id", query=OrderQuery,
                   tag="dashboard", answers={200: Answer("The orders found", OrderList)})
    async def find_orders(call: Call) -> Reply:
        """Orders whose id starts with `q` (the exact id first), or the latest ones when `q` is empty."""
        ensure_board()
        q, limit = call.query.q, call.query.limit
        found = board.search(q, limit) if q.strip() else board.recent(limit)
        return Reply(200, OrderList(orders=found))

    @api.operation("GET", "/orders/{order_id}", summary="One order's timeline", path_types={"order_id": OrderId},
                   tag="dashboard", answers={200: Answer("The order, its events and process steps in time order",
                                                         OrderDetail),
                                             404: Answer("The monitor has seen nothing of this order")})
    async def order_timeline(call: Call) -> Reply:
        """Every event of the order from every service and every step of its process instance
        (activities, user tasks, incidents from the engine's history) in time order, with links
        to the instance in Cockpit and to its open tasks in Tasklist."""
        order_id = call.path["order_id"]
        view = orders.get(order_id)
        process = await watcher.process(order_id)
        if view is None and not process.instances:
            raise Problem(404, "order_id", "the monitor has seen no event of this order, and the engine no instance")
        view = view or OrderView(order_id=order_id)
        return Reply(200, OrderDetail(
            order=Brief.of(view), lines=[msgspec.to_builtins(line) for line in view.lines],
            steps=timeline(view, process.steps), instances=process.instances, open_tasks=process.open_tasks,
            problems=[process.error] if process.error else []))

    @api.operation("GET", "/dead-letters", summary="Dead letters the monitor has seen", tag="dashboard",
                   answers={200: Answer("Dead letters not replayed yet, counted, and the latest ones", DeadLetters)})
    async def list_dead_letters(call: Call) -> Reply:
        """Dead letters by time, newest first (payloads: `edpo dlq list`)."""
        return Reply(200, monitor.dead_letters(limit=200))

    return app


def decode(app: ServiceApp, name: str, event: Any) -> Message | None:
    """The record's message; None (logged and counted, not dead-lettered: its owner does that) for
    what the monitor cannot read."""
    msg = read_record(event)
    if isinstance(msg, Unread):
        app.count("records skipped")
        # A newer producer's message type is no fault; a broken record is (its owner dead-letters it).
        logger.log(logging.INFO if msg.reason == "unknown_type" else logging.WARNING, "%s: %s at %s[%d]@%d skipped",
                   name, msg.detail, event.message.topic, event.message.partition, event.message.offset)
        return None
    return msg
