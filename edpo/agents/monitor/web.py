"""The monitor's web side: the dashboard page, its sign-in, and the read operations behind it
(overview, live feed, orders, one order's timeline, dead letters), with the structs they answer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from edpo.agents.monitor.handlers import Monitor
from edpo.agents.monitor.watch import GroupLag, Link, Listing, Urls, Watcher
from edpo.domain.monitor import (
    Brief,
    Deliveries,
    Letter,
    Minute,
    OrderView,
    ProductionView,
    SkuView,
    Step,
    timeline,
)
from edpo.models.api import OrderId
from edpo.runtime.app import ServiceApp
from edpo.runtime.http import Answer, Call, Problem, Reply

logger = logging.getLogger(__name__)
SESSION_COOKIE = "edpo_monitor"
# The live feed: how often it looks for changes, and how long one stream lasts before the browser
# reconnects (EventSource does so by itself): a worker stopping never waits long for open streams.
FEED_CHECK = 0.5
FEED_KEEPALIVE = 15.0
FEED_LIFETIME = 60.0
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}


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


def stock_rows(monitor: Monitor) -> list[StockRow]:
    """Stock per SKU as last announced, with the units orders wait for and the factory makes."""
    waiting = monitor.board.waiting_by_sku()
    levels = dict(monitor.stock.local_items())
    lines = dict(monitor.production.local_items())
    rows = []
    for sku in sorted(set(levels) | set(lines) | set(waiting)):
        level = levels.get(sku) or SkuView(sku=sku)
        line = lines.get(sku) or ProductionView(sku=sku)
        rows.append(StockRow(sku=sku, on_hand=level.on_hand, reserved=level.reserved,
                             available=level.on_hand - level.reserved, waiting=waiting.get(sku, 0),
                             in_production=sum(b.quantity for b in line.batches), produced=line.produced))
    return rows


def batch_rows(monitor: Monitor) -> list[BatchRow]:
    """Factory batches in production, oldest first."""
    return sorted((BatchRow(sku=sku, production_id=b.production_id, quantity=b.quantity, started_at=b.started_at)
                   for sku, line in monitor.production.local_items() for b in line.batches),
                  key=lambda b: b.started_at)


def dead_letters(monitor: Monitor, limit: int = 20) -> DeadLetters:
    """Dead letters not replayed yet, counted, and the latest ones."""
    boxes = [box for _, box in monitor.letters.local_items()]
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


# --- the operations ------------------------------------------------------------------------------


def add_routes(app: ServiceApp, monitor: Monitor, watcher: Watcher, urls: Urls) -> None:
    """The dashboard and its data on the app's API."""
    board, orders = monitor.board, monitor.orders
    cached: dict[str, Any] = {"key": None, "body": b""}

    def overview() -> bytes:
        """The overview, encoded once per change (every client of the feed gets the same bytes)."""
        monitor.ensure_board()
        now = datetime.now(UTC)
        key = (monitor.changes, board.version, watcher.version, now.replace(second=0, microsecond=0))
        if cached["key"] != key:
            outside = watcher.last
            cached["body"] = msgspec.json.encode(Overview(
                time=now, orders=len(board.briefs), counts=board.counts(), throughput=board.throughput(now),
                recent=board.recent(), stock=stock_rows(monitor), batches=batch_rows(monitor),
                deliveries=board.deliveries(), escalations=outside.escalations, incidents=outside.incidents,
                dead_letters=dead_letters(monitor), lag=outside.lag, looked_at=outside.time,
                problems=outside.errors, cockpit=urls.cockpit, tasklist=urls.tasklist))
            cached["key"] = key
        return cached["body"]

    api = app.api
    token = app.settings.api_token
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
        monitor.ensure_board()
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
        return Reply(200, dead_letters(monitor, limit=200))
