"""The HTTP contract: request validation from the msgspec types, the guard (token, error bodies,
outages), pages and cursors, and the OpenAPI documents of the four services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from edpo.agents.order.store import order_cursor, parse_order_cursor
from edpo.config import Settings
from edpo.domain.order import InvalidOrder, NewOrder, new_order
from edpo.models import Line
from edpo.models.api import Errors, PlaceOrder, Receipt
from edpo.runtime.http import MAX_BODY, Answer, Api, Call, Problem, Reply, Unavailable, _field_of, page

CATALOG = {"BOLT", "NUT"}


def order_body(**overrides: Any) -> dict[str, Any]:
    valid: dict[str, Any] = {"customer_id": "c-1", "delivery_address": "Main St 1",
                             "items": [{"sku": "BOLT", "quantity": 2}]}
    return {**valid, **overrides}


def decode(body: Any) -> PlaceOrder:
    return msgspec.json.decode(msgspec.json.encode(body), type=PlaceOrder)


def refused(body: Any) -> tuple[str, str]:
    with pytest.raises(msgspec.ValidationError) as e:
        decode(body)
    return _field_of(e.value)


# --- what PlaceOrder refuses, with the field it names ----------------------------------------


def test_valid_order_is_stripped_and_its_lines_kept_as_given() -> None:
    new = new_order(decode(order_body(customer_id="  c-1 ", items=[{"sku": "BOLT", "quantity": 2},
                                                                   {"sku": "BOLT", "quantity": 1}])), CATALOG)
    assert new == NewOrder(customer_id="c-1", delivery_address="Main St 1",
                           items=[Line(sku="BOLT", quantity=2), Line(sku="BOLT", quantity=1)])


@pytest.mark.parametrize("text", ["a\x00b", "line\nbreak", "tab\there", "\x7f", "\x9b", "   ", ""])
def test_control_characters_and_blank_text_are_refused(text: str) -> None:
    field, message = refused(order_body(delivery_address=text))
    assert field == "delivery_address"
    assert "control characters" in message or "length" in message


def test_unicode_text_is_accepted() -> None:
    assert decode(order_body(delivery_address="Bahnhofstraße 1, 8001 Zürich 🚚")).delivery_address.endswith("🚚")


def test_overlong_strings_are_refused() -> None:
    assert refused(order_body(customer_id="x" * 201))[0] == "customer_id"
    assert refused(order_body(delivery_address="x" * 501))[0] == "delivery_address"


def test_unknown_fields_are_refused_by_name() -> None:
    assert refused(order_body(coupon="FREE"))[0] == "coupon"
    assert refused(order_body(items=[{"sku": "BOLT", "quantity": 1, "price": 0}]))[0] == "items[0].price"


def test_missing_fields_are_named() -> None:
    body = order_body()
    del body["items"]
    assert refused(body)[0] == "items"


@pytest.mark.parametrize("quantity", [0, -1, 10_001, 10**30, 1.5, True, "2", None])
def test_quantity_must_be_an_integer_1_to_10000(quantity: Any) -> None:
    assert refused(order_body(items=[{"sku": "BOLT", "quantity": quantity}]))[0] == "items[0].quantity"


def test_items_must_be_1_to_100_lines() -> None:
    assert refused(order_body(items=[]))[0] == "items"
    assert refused(order_body(items=[{"sku": "BOLT", "quantity": 1}] * 101))[0] == "items"


def test_body_must_be_an_object() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode([order_body()])


def test_every_unknown_sku_is_named() -> None:
    with pytest.raises(InvalidOrder) as e:
        new_order(decode(order_body(items=[{"sku": "BOLT", "quantity": 1}, {"sku": "GEAR", "quantity": 1},
                                           {"sku": "COG", "quantity": 1}])), CATALOG)
    assert [x["field"] for x in e.value.errors] == ["items[1].sku", "items[2].sku"]


def test_lone_surrogates_are_malformed_json() -> None:
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(b'{"customer_id": "\\ud800"}', type=PlaceOrder)


# --- pages and cursors -----------------------------------------------------------------------


def test_pages_walk_every_key_once_in_order() -> None:
    items = [(f"k{i:03}", i) for i in range(25)]
    seen: list[int] = []
    after = None
    while True:
        values, after = page(reversed(items), 10, after)
        seen += values
        if after is None:
            break
    assert seen == list(range(25))


def test_the_last_full_page_has_no_next_cursor() -> None:
    assert page([("a", 1), ("b", 2)], 2, None) == ([1, 2], None)
    assert page([("a", 1), ("b", 2), ("c", 3)], 2, None) == ([1, 2], "b")


def test_order_cursor_round_trips_and_garbage_is_refused() -> None:
    at = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
    assert parse_order_cursor(order_cursor(at, "abc")) == (at, "abc")
    for garbage in ["", "abc", "-abc", "12-", "x1-abc", "9" * 18 + "-a"]:
        assert parse_order_cursor(garbage) is None, garbage


# --- the guard, over real HTTP ---------------------------------------------------------------


class Outage(ConnectionError):
    pass


def demo_api(token: str) -> Api:
    api = Api("test", "", token=token)

    @api.operation("GET", "/things", summary="list", open=True, answers={200: Answer("ok")})
    async def things(call: Call) -> Reply:
        return Reply(200, {"things": []})

    @api.operation("GET", "/secrets/{name}", summary="personal", answers={200: Answer("ok")})
    async def secret(call: Call) -> Reply:
        if call.path["name"] == "down":
            raise Outage("database restarting")
        if call.path["name"] == "kafka":
            raise Unavailable("Kafka away")
        return Reply(200, {"name": call.path["name"]})

    @api.operation("POST", "/receipts", summary="write", body=Receipt, idempotency_key=True,
                   answers={202: Answer("ok")})
    async def receipt(call: Call) -> Reply:
        if call.body.quantity == 13:
            raise Problem(409, "quantity", "unlucky", extra={"status": "x"})
        return Reply(202, {"quantity": call.body.quantity, "key": call.idempotency_key()})

    return api


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    api = demo_api(getattr(request, "param", "s3cret"))
    app = web.Application(client_max_size=MAX_BODY, middlewares=[api.guard((Outage,))])
    api.mount(app.router, None)
    async with TestClient(TestServer(app)) as c:
        yield c


async def status_and_body(response: Any) -> tuple[int, Any]:
    return response.status, msgspec.json.decode(await response.read())


async def test_writes_and_personal_reads_need_the_token_open_reads_do_not(client: TestClient) -> None:
    assert (await client.get("/things")).status == 200
    assert (await client.get("/openapi.json")).status == 200
    denied = await client.get("/secrets/x")
    assert denied.status == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
    msgspec.json.decode(await denied.read(), type=Errors)
    assert (await client.get("/secrets/x", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.post("/receipts", json={"quantity": 1})).status == 401
    ok = await client.get("/secrets/x", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    # Unknown paths are refused before they are looked up: nothing about them leaks.
    assert (await client.get("/nowhere")).status == 401


@pytest.mark.parametrize("client", [""], indirect=True)
async def test_without_a_token_everything_is_open(client: TestClient) -> None:
    assert (await client.get("/secrets/x")).status == 200
    assert (await client.post("/receipts", json={"quantity": 1})).status == 202


AUTH = {"Authorization": "Bearer s3cret"}


async def test_bad_requests_get_a_4xx_with_an_error_body(client: TestClient) -> None:
    cases = [
        (client.post("/receipts", data=b'{"quantity": 1}', headers={**AUTH, "Content-Type": "text/plain"}), 415),
        (client.post("/receipts", data=b'{"quantity": ', headers={**AUTH, "Content-Type": "application/json"}), 400),
        (client.post("/receipts", json={"quantity": 0}, headers=AUTH), 422),
        (client.post("/receipts", json={"quantity": 1, "extra": 1}, headers=AUTH), 422),
        (client.post("/receipts", data=b"[" * 100_000, headers={**AUTH, "Content-Type": "application/json"}), 413),
        (client.post("/receipts", json={"quantity": 1}, headers={**AUTH, "Idempotency-Key": "k" * 201}), 400),
        (client.post("/receipts", json={"quantity": 1}, headers={**AUTH, "Idempotency-Key": "caf\u00e9"}), 400),
        (client.post("/receipts", json={"quantity": 1}, headers={**AUTH, "Idempotency-Key": ""}), 400),
        (client.post("/receipts", json={"quantity": 13}, headers=AUTH), 409),
        (client.delete("/things"), 401),
        (client.get("/things?unknown=1"), 422),
        (client.get("/things", data=b"{}"), 400),
        (client.get("/secrets/x?a=1&a=2", headers=AUTH), 422),
        (client.get("/nowhere", headers=AUTH), 404),
        (client.delete("/things", headers=AUTH), 405),
    ]
    for request, expected in cases:
        response = await request
        status, body = await status_and_body(response)
        assert status == expected, body
        assert msgspec.convert(body, Errors).errors, body
    _, conflict = await status_and_body(await client.post("/receipts", json={"quantity": 13}, headers=AUTH))
    assert conflict["status"] == "x"


async def test_an_outage_is_a_503_with_retry_after(client: TestClient) -> None:
    for name in ("down", "kafka"):
        response = await client.get(f"/secrets/{name}", headers=AUTH)
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        msgspec.json.decode(await response.read(), type=Errors)


async def test_a_valid_write_answers_with_its_idempotency_key(client: TestClient) -> None:
    response = await client.post("/receipts", json={"quantity": 3}, headers={**AUTH, "Idempotency-Key": "r-1"})
    assert await status_and_body(response) == (202, {"quantity": 3, "key": "r-1"})
    response = await client.post("/receipts", json={"quantity": 3}, headers={**AUTH, "Idempotency-Key": "retry 2 of 7"})
    assert await status_and_body(response) == (202, {"quantity": 3, "key": "retry 2 of 7"})


# --- the services' documents -----------------------------------------------------------------


@pytest.mark.parametrize("service", ["order", "warehouse", "delivery", "factory", "monitor"])
def test_each_service_document_is_valid_openapi_3_1_and_matches_its_routes(service: str) -> None:
    from edpo import agents

    app = agents.create_app(service, Settings(api_token="t"))
    document = app.api.openapi()
    validate(document)
    assert document["openapi"] == "3.1.0"
    router = web.UrlDispatcher()
    app.api.mount(router, None)
    served = {(r.method, r.resource.canonical) for r in router.routes() if r.resource is not None}
    served -= {("GET", "/openapi.json"), ("GET", "/docs")}
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            # A success, or for the monitor's sign-in form a redirect (303) to where the browser goes on.
            assert any(s.startswith(("2", "3")) for s in op["responses"]), (method, path)
            secured = "security" in op
            assert secured == (not app.api.is_open(method.upper(), path)), (method, path)
            if secured:
                assert "401" in op["responses"]


def test_whole_floats_are_integers_as_in_json_schema_others_are_refused() -> None:
    from edpo.runtime.http import decode_body

    decoder = msgspec.json.Decoder(Receipt)
    assert decode_body(decoder, Receipt, b'{"quantity": 6693.0}') == Receipt(quantity=6693)
    for raw, status in [(b'{"quantity": 1.5}', 422), (b'{"quantity": 1e400}', 422), (b'{"quantity": "2"}', 422),
                        (b"{\"quantity\": " + b"[" * 30000, 422), (b'{"quantity": 0.0}', 422)]:
        with pytest.raises(Problem) as e:
            decode_body(decoder, Receipt, raw)
        assert e.value.status == status, raw[:30]


async def test_faust_views_of_a_table_the_service_lacks_answer_404_naming_its_tables() -> None:
    """Faust's /router/{name}/ raised KeyError for an unknown table (a 500); its key views said 503."""
    from edpo import agents

    app = agents.create_app("factory", Settings(api_token=""))
    app.mount_api()
    app.web.init_server()  # Faust's own views, as when the worker's web server starts
    async with TestClient(TestServer(app.web.web_app)) as c:
        for path in ("/router/nope/", "/router/nope/k/", "/table/nope/", "/table/nope/k/"):
            status, body = await status_and_body(await c.get(path))
            assert status == 404, (path, body)
            assert body["errors"][0] == {"field": "name",
                                         "message": "no table 'nope'; this service has production_by_sku"}
        status, body = await status_and_body(await c.get("/table/production_by_sku/"))
        assert (status, body["name"]) == (200, "production_by_sku")
