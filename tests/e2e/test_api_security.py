"""The API token and the API descriptions, on the running stack (make test sets EDPO_API_TOKEN).

Which routes a worker has is read from its own app: each service's app is built here as the
worker builds it (`edpo.agents.create_app`, its operations mounted, Faust's views added) and its aiohttp
router listed, so Faust's views (/, /table/..., /router/...), absent from the OpenAPI documents,
are covered too, and no route needs to be added to the services for it. That the running
workers serve this very table is checked on each: their documents list the same operations,
and with the token every route is found. The open routes expected are the README's list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from openapi_spec_validator import validate

from edpo.agents import create_app
from edpo.config import WORKERS, Settings
from edpo.runtime.app import ServiceApp

from .conftest import Api

ROOT = Path(__file__).resolve().parents[2]
METHOD_AND_PATH = re.compile(r"`(GET|HEAD|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")
# A value for each path parameter that a request could really carry: a catalog SKU, a well-formed
# order id no order has (a cancellation of it changes nothing), a file the route serves. {name}
# is a table of the service in Faust's views and a file on the monitor's /static/.
PLAUSIBLE = {"sku": "CABLE", "order_id": "0" * 32, "key": "CABLE", "file": "swagger-ui-bundle.js"}
STATIC_NAME = {"/static/{name}": "app.js"}


def documented_open_routes() -> dict[str, set[tuple[str, str]]]:
    """{service: {(method, path)}} the README's REST API section lists as open to all (the bullet
    "A token, when set": lines of `service: routes` parts, "every service" for all of them)."""
    section = (ROOT / "README.md").read_text().split("\n## REST API\n", 1)[1].split("\n## ", 1)[0]
    bullet = section.split("- **A token, when set**", 1)[1].split("\n\n", 1)[0]
    open_routes: dict[str, set[tuple[str, str]]] = {service: set() for service in WORKERS}
    for line in (line for line in bullet.splitlines() if line.startswith("  - ")):
        for part in line.removeprefix("  - ").split("; "):
            name, _, routes = part.partition(": ")
            for service in (WORKERS if name == "every service" else (name,)):
                open_routes[service] |= set(METHOD_AND_PATH.findall(routes))
    assert all(open_routes.values()), f"the README's list of open routes could not be read: {open_routes}"
    return open_routes


def route_table(settings: Settings, service: str) -> tuple[set[tuple[str, str]], ServiceApp]:
    """Every (method, path) the service's worker serves, read from its app's aiohttp router after
    the worker's own steps (its operations, then Faust's views): static files as PREFIX/{file}."""
    app = create_app(service, settings)
    app.mount_api()
    app.web.init_server()
    routes = set()
    for route in app.web.web_app.router.routes():
        resource = route.resource
        path = f"{resource.canonical}/{{file}}" if isinstance(resource, web.StaticResource) else resource.canonical
        routes.add((route.method, path))
    return routes, app


def plausible_url(path: str, table: str) -> str:
    """path with a plausible value in each parameter."""
    if path in STATIC_NAME:
        return path.replace("{name}", STATIC_NAME[path])
    values = {**PLAUSIBLE, "name": table}

    def value(m: re.Match[str]) -> str:
        assert m.group(1) in values, f"give the path parameter {m.group(1)!r} of {path} a plausible value"
        return values[m.group(1)]

    return re.sub(r"{(\w+)}", value, path)


async def _ask(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]) -> tuple[int, bool, Any]:
    """(status, refused by the token guard?, body of a 404/405); a stream (the monitor's feed) is not read."""
    body = {"json": {}} if method == "POST" else {}
    async with http.request(method, url, headers=headers, allow_redirects=False, **body) as r:
        refused = r.status == 401 and r.headers.get("WWW-Authenticate", "").startswith("Bearer")
        found = await r.json(content_type=None) if r.status in (404, 405) and method != "HEAD" else None
        return r.status, refused, found


def _no_such_route(status: int, body: Any) -> bool:
    """aiohttp's own answer when no route matches the path or its method (the guard's error body)."""
    return status in (404, 405) and isinstance(body, dict) and body.get("errors", [{}])[0].get("field") == ""


async def _workers(http: aiohttp.ClientSession, settings: Settings, service: str) -> list[str]:
    """The base URL of every running worker of service (the stack may run `--instances N`)."""
    urls = []
    for n in range(1, 5):
        url = f"http://{settings.host}:{settings.web_port(service, n)}"
        try:
            async with http.get(f"{url}/health"):
                urls.append(url)
        except aiohttp.ClientConnectionError:
            break
    assert urls, f"no {service} worker answers"
    return urls


async def test_every_route_of_every_service_needs_the_token_but_the_documented_open_ones(api: Api) -> None:
    """Every method of every route in each worker's route table (its operations and Faust's own
    views), asked without the token, with a wrong one and with the right one."""
    documented = documented_open_routes()
    right = {"Authorization": f"Bearer {api.s.api_token}"}
    wrong = {"Authorization": "Bearer not-the-token"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for service in WORKERS:
            routes, app = route_table(api.s, service)
            table = next(iter(app.tables), "no-such-table")  # the order service keeps no Faust table
            declared = {(op.method, op.path) for op in app.api.operations}
            assert documented[service] <= routes, (service, "in the README, not served:", documented[service] - routes)
            expected_open = documented[service] | {("HEAD", p) for m, p in documented[service] if m == "GET"}
            for base in await _workers(http, api.s, service):
                # The routes read here are the worker's: it serves the operations this checkout declares.
                async with http.get(f"{base}/openapi.json") as r:
                    served = {(m.upper(), p) for p, ops in (await r.json())["paths"].items() for m in ops}
                assert served == declared, f"{base} runs other code than this checkout: restart the stack"
                open_ = set()
                for method, path in sorted(routes):
                    url = base + plausible_url(path, table)
                    status, refused, _ = await _ask(http, method, url, {})
                    wrong_status, wrong_refused, _ = await _ask(http, method, url, wrong)
                    status_with, refused_with, body = await _ask(http, method, url, right)
                    # With the token the route is found: the worker serves the route table read here.
                    assert not refused_with and not _no_such_route(status_with, body), (method, url, status_with, body)
                    if not refused:
                        open_.add((method, path))
                    assert refused == wrong_refused, (method, url, status, wrong_status)
                if api.s.api_token:
                    assert open_ == expected_open & routes, (base, "open but not in the README:",
                                                             open_ - expected_open, "in the README, refused:",
                                                             (expected_open & routes) - open_)
                else:  # no token configured (pytest run by hand): every route is open, as documented
                    assert open_ == routes, (base, routes - open_)


async def test_every_service_describes_itself_in_valid_openapi_3_1(api: Api) -> None:
    for service in ("order", "warehouse", "factory", "delivery"):
        status, document = await api.call("GET", f"http://{api.s.host}:{api.s.web_port(service)}/openapi.json")
        assert status == 200
        validate(document)
        assert document["openapi"] == "3.1.0"
        if api.s.api_token:
            assert "bearer" in document["components"]["securitySchemes"]
    status, document = await api.call("GET", f"{api.orders}/openapi.json")
    assert {"/orders", "/orders/{order_id}", "/orders/{order_id}/cancel", "/catalog", "/health"} \
        <= set(document["paths"])
    async with api.http.get(f"{api.orders}/docs") as r:
        page = await r.text()
    assert "swagger-ui-bundle.js" in page and "//cdn" not in page and "unpkg" not in page
    async with api.http.get(f"{api.orders}/docs/static/swagger-ui-bundle.js") as r:
        assert r.status == 200 and len(await r.read()) > 100_000


async def test_a_get_with_a_body_is_refused_and_spoils_nothing_for_the_next_requests(api: Api) -> None:
    """A GET forwarded between workers carried a Content-Length without its body, and the next
    request on that connection failed (2 instances): a GET with a body is refused instead."""
    for _ in range(3):
        async with api.http.get(f"{api.warehouse}/stock/CABLE", data=b'{"x": 1}',
                                headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["errors"][0]["message"] == "a GET request takes no body"
        for sku in ("CABLE", "DOCK", "LAMP", "MOUSE"):
            assert (await api.stock(sku))["sku"] == sku
