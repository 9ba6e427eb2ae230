"""The API token and the API descriptions, on the running stack (make test sets EDPO_API_TOKEN)."""

from __future__ import annotations

import aiohttp
from openapi_spec_validator import validate

from edpo.config import Settings

from .conftest import Api

OPEN_READS = [("order", "/health"), ("order", "/openapi.json"), ("order", "/docs"), ("order", "/catalog"),
              ("warehouse", "/stock"), ("warehouse", "/stock/CABLE"), ("warehouse", "/docs"),
              ("factory", "/production"), ("delivery", "/health")]
PROTECTED = [("GET", "order", "/orders"), ("POST", "order", "/orders"), ("GET", "delivery", "/deliveries"),
             ("POST", "warehouse", "/stock/CABLE/receipts"), ("GET", "warehouse", "/table/"),
             ("GET", "delivery", "/table/deliveries_by_order/"), ("GET", "order", "/router/"),
             ("POST", "order", "/orders/x/cancel")]


async def _status(settings: Settings, method: str, service: str, path: str, headers: dict[str, str]) -> int:
    url = f"http://{settings.host}:{settings.web_port(service)}{path}"
    body = {"json": {}} if method == "POST" else {}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, **body) as r:
        return r.status


async def test_open_reads_need_no_token_and_everything_else_does_when_one_is_set(api: Api) -> None:
    for service, path in OPEN_READS:
        assert await _status(api.s, "GET", service, path, {}) == 200, path
    for method, service, path in PROTECTED:
        without = await _status(api.s, method, service, path, {})
        wrong = await _status(api.s, method, service, path, {"Authorization": "Bearer not-the-token"})
        right = await _status(api.s, method, service, path, {"Authorization": f"Bearer {api.s.api_token}"})
        if api.s.api_token:
            assert (without, wrong) == (401, 401), (method, path)
            assert right != 401, (method, path)
        else:  # no token configured (pytest run by hand): the APIs are open, as documented
            assert 401 not in (without, wrong, right), (method, path)


async def test_every_service_describes_itself_in_valid_openapi_3_1(api: Api) -> None:
    for service in ("order", "warehouse", "factory", "delivery"):
        status, document = await api.call("GET", f"http://{api.s.host}:{api.s.web_port(service)}/openapi.json")
        assert status == 200
        validate(document)
        assert document["openapi"] == "3.1.0"
        if api.s.api_token:
            assert "bearer" in document["components"]["securitySchemes"]
    status, document = await api.call("GET", f"{api.orders}/openapi.json")
    assert {"/orders", "/orders/{order_id}", "/orders/{order_id}/cancel", "/catalog", "/health"} <= set(document["paths"])
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
