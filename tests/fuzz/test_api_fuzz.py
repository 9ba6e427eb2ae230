"""Fuzzing the live services from their own OpenAPI documents (schemathesis + hypothesis).

Every operation of the four services gets generated requests, valid and invalid, and every
response is checked: no 5xx, status codes, headers and bodies as documented, invalid input
refused, valid input accepted, protected operations refusing a request without the token.
Afterwards the stored state must keep its invariants: every order whole and clean, every SKU's
stock consistent, and every order the fuzzer placed able to finish (it is cancelled, and must
reach a final status).

`make test` runs FUZZ_EXAMPLES (default 60) examples per operation, and asserts that at least
FUZZ_MIN_REQUESTS (1,000) requests were made; `make fuzz` runs many more.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import schemathesis
# Imported now, at collection: schemathesis imports it lazily, deep inside a running test, where
# pytest's assertion rewriter parsing it hit CPython 3.11.7's "SystemError: AST constructor
# recursion depth mismatch" (seen only after the end-to-end tests had run in the same session).
import schemathesis.generation.jsonschema.builder  # noqa: F401
import schemathesis.generation.jsonschema.strategy  # noqa: F401
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from edpo.config import Settings
from edpo.config.catalog import load_catalog
from edpo.runtime.http import bearer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
MIN_REQUESTS = int(os.environ.get("FUZZ_MIN_REQUESTS", "1000"))
FINAL = {"DELIVERED", "CANCELLED", "REJECTED"}
HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck),
                      phases=[Phase.explicit, Phase.generate])


class Tally:
    """What the fuzzer sent and got back, for the assertions and the report."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.placed: set[str] = set()

    def record(self, case: Any, response: Any) -> None:
        self.requests += 1
        self.by_status[f"{case.operation.method.upper()} {case.operation.path} {response.status_code}"] += 1
        if case.operation.path == "/orders" and case.operation.method.upper() == "POST" and response.status_code == 201:
            self.placed.add(response.json()["order_id"])


TALLY = Tally()


def _placed_by_the_fuzzer() -> set[str]:
    """The orders the fuzzing above placed in this session; the checks after fuzzing fail without
    any (run alone, they would pass on whatever state the stack happens to hold)."""
    assert TALLY.placed, ("the fuzzer placed no order in this session: the checks after fuzzing need the "
                          "fuzzing tests before them (run tests/fuzz whole)")
    return set(TALLY.placed)


def _modest(case: Any) -> None:
    """Valid quantities of orders and receipts made a few units, not up to 10,000 and 1,000,000:
    the stack's stock stays usable for whoever uses it next (orders for thousands of units set
    the factory to work for many minutes, receipts bury the SKUs). Quantities out of range are
    left as generated: they are what a negative case is about. (Negative cases whose only fault
    is the Authorization header carry a valid body too: the token sent overrides the header.)
    The ranges themselves are checked here by the negative cases and in tests/unit."""
    body = case.body
    if case.operation.method.upper() != "POST" or not isinstance(body, dict):
        return

    def small(value: Any, top: int, keep: int) -> Any:
        # Whole floats (3520.0) are integers to JSON Schema and to the services.
        whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
        return 1 + int(value) % keep if whole and 1 <= value <= top else value

    if case.operation.path == "/orders" and isinstance(body.get("items"), list):
        for line in body["items"]:
            if isinstance(line, dict) and "quantity" in line:
                line["quantity"] = small(line["quantity"], 10_000, 3)
    elif case.operation.path.endswith("/receipts") and "quantity" in body:
        body["quantity"] = small(body["quantity"], 1_000_000, 5)


def _sent_as_is(value: Any) -> bool:
    """Does the HTTP client put this query value on the wire? A null, an empty list or a null
    inside a list is dropped (CI saw `?x=[]&after=...` arrive as `?after=...`)."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_sent_as_is(v) for v in value)
    return isinstance(value, (str, int, float, bool))


def _sendable(case: Any) -> None:
    """Skip cases the HTTP client cannot send as generated: a query parameter without a name or
    with a value it drops never reaches the service, whose 200 would then be a false finding."""
    query = case.query or {}
    assume("" not in query and all(_sent_as_is(value) for value in query.values()))


def _exercise(case: Any, stack: Settings, service: str) -> None:
    """Send the case with the token and check the response with every schemathesis check."""
    _modest(case)
    _sendable(case)
    base = f"http://{stack.host}:{stack.web_port(service)}"
    response = case.call(base_url=base, headers=bearer(stack.api_token), timeout=30)
    TALLY.record(case, response)
    case.validate_response(response, headers=bearer(stack.api_token))


def _has_input(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def _describe(e: BaseException) -> str:
    """A failure's text, with every sub-failure of a group (schemathesis reports several at once)."""
    if isinstance(e, BaseExceptionGroup):
        return "\n".join(_describe(sub) for sub in e.exceptions)
    return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("service", ["order", "warehouse", "delivery", "factory"])
def test_every_operation_answers_generated_requests_as_documented(service: str, mode: GenerationMode,
                                                                   stack: Settings) -> None:
    schema = schemathesis.openapi.from_url(f"http://{stack.host}:{stack.web_port(service)}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @HYPOTHESIS
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            _exercise(case, stack, service)

        try:
            fuzz()
        except Unsatisfiable:
            if mode is GenerationMode.NEGATIVE and not _has_input(operation):
                continue  # nothing to make invalid: no parameters, no body
            raise
        except Exception as e:  # noqa: BLE001 - every operation is fuzzed; all failures are reported
            failures[operation.label] = _describe(e)[:4000]
    assert operations > 0
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def test_order_sequences_follow_the_documented_links(stack: Settings) -> None:
    """Stateful: sequences of calls that follow the order document's links (POST /orders, then
    GET and cancel of the very order it created), so the fuzzer reaches real orders' reads and
    cancellations, not only unknown ids."""
    base = f"http://{stack.host}:{stack.web_port('order')}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    token = bearer(stack.api_token)
    mine = Tally()  # what these sequences sent (TALLY holds the other tests' requests too)

    class OrderSequences(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            _modest(case)
            _sendable(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base, "headers": token, "timeout": 30}

        def after_call(self, response: Any, case: Any) -> None:
            TALLY.record(case, response)
            mine.record(case, response)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, headers=token)

    # Hypothesis replays a sequence's choices and requires the same rules to be open each time. A
    # cancellation's answer depends on timing (202 while the order waits, 409 once it has shipped),
    # so links that start from a 202 make generation itself flaky (FlakyStrategyDefinition); the
    # links into a cancellation, from a created or a read order, stay.
    for name in [n for n in dir(OrderSequences) if n.startswith("POST_orders_order_id_cancel___202_")]:
        setattr(OrderSequences, name, None)
    OrderSequences.run(settings=settings(max_examples=max(5, EXAMPLES // 3), stateful_step_count=6, deadline=None,
                                         database=None, suppress_health_check=list(HealthCheck)))
    followed = {k for k in mine.by_status if k.startswith(("GET /orders/{order_id} 200",
                                                           "POST /orders/{order_id}/cancel 202"))}
    assert followed, f"no sequence reached an order a POST created: {dict(mine.by_status)}"


def test_the_fuzzer_sent_enough_requests_and_no_server_error() -> None:
    """Runs after the fuzzing above (same module, later): the tally of what was sent."""
    server_errors = {k: n for k, n in TALLY.by_status.items() if k.endswith(tuple(f" 5{d:02}" for d in range(100)))}
    report = {"requests": TALLY.requests, "orders_placed": len(TALLY.placed), "server_errors": server_errors,
              "by_status": dict(sorted(TALLY.by_status.items()))}
    out = Path(os.environ.get("FUZZ_REPORT", Settings().run_dir / "fuzz-report.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    assert not server_errors, server_errors
    assert TALLY.requests >= MIN_REQUESTS, f"only {TALLY.requests} requests were generated (report: {out})"
    assert TALLY.placed, "no generated order was valid: the fuzzer never reached the order flow"


async def test_after_fuzzing_every_stored_order_is_whole_and_clean(stack: Settings) -> None:
    placed = _placed_by_the_fuzzer()
    catalog = load_catalog(stack.catalog).sku_set
    conn = await asyncpg.connect(stack.database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM orders WHERE order_id = ANY($1)", list(placed))
        without_lines = await conn.fetchval(
            "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.order_id)")
        without_history = await conn.fetchval(
            "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_history h WHERE h.order_id = o.order_id)")
        bad_lines = await conn.fetch(
            "SELECT order_id, sku, quantity FROM order_lines WHERE quantity < 1 OR quantity > 10000 OR NOT (sku = ANY($1))",
            list(catalog))
        # No control character, nothing blank, nothing over-long: what the API refuses never got in.
        dirty = await conn.fetch(
            "SELECT order_id FROM orders WHERE customer_id ~ '[\\x01-\\x1f\\x7f]' OR delivery_address ~ '[\\x01-\\x1f\\x7f]'"
            " OR btrim(customer_id) = '' OR btrim(delivery_address) = ''"
            " OR length(customer_id) > 200 OR length(delivery_address) > 500")
        unsent = await conn.fetchval(
            "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM outbox x WHERE x.key = o.order_id)"
            " AND o.created_at > now() - interval '1 hour'")
    finally:
        await conn.close()
    assert stored == len(placed), f"{len(placed) - stored} of the fuzzer's {len(placed)} orders are not stored"
    assert without_lines == 0 and without_history == 0
    assert not bad_lines, bad_lines[:5]
    assert not dirty, dirty[:5]
    assert unsent == 0, "an order was stored without its messages in the outbox"


async def test_after_fuzzing_stock_is_consistent_for_every_sku(stack: Settings) -> None:
    _placed_by_the_fuzzer()  # the fuzzer's orders reserved stock: the state checked is what fuzzing left
    url = f"http://{stack.host}:{stack.web_port('warehouse')}/stock"
    async with aiohttp.ClientSession() as http, http.get(url, params={"limit": "1000"}) as r:
        assert r.status == 200
        levels = (await r.json())["stock"]
    assert {s["sku"] for s in levels} == load_catalog(stack.catalog).sku_set
    for s in levels:
        assert 0 <= s["reserved"] <= s["on_hand"], s
        assert s["available"] == s["on_hand"] - s["reserved"], s


async def test_every_order_the_fuzzer_placed_finishes_once_cancelled(stack: Settings) -> None:
    """The fuzzer's orders (up to 10,000 units each) would hold their SKUs' queues: cancelling
    them must work, and each must reach a final status."""
    orders = f"http://{stack.host}:{stack.web_port('order')}/orders"
    placed = _placed_by_the_fuzzer()
    async with aiohttp.ClientSession(headers=bearer(stack.api_token)) as http:
        for order_id in placed:
            async with http.post(f"{orders}/{order_id}/cancel") as r:
                assert r.status in (202, 409), await r.text()  # 409: shipped or final already
        deadline = time.monotonic() + 240
        open_ = set(placed)
        while open_ and time.monotonic() < deadline:
            for order_id in list(open_):
                async with http.get(f"{orders}/{order_id}", params={"process": "false"}) as r:
                    if (await r.json())["status"] in FINAL:
                        open_.discard(order_id)
            await asyncio.sleep(1)
        stuck = {}
        for order_id in list(open_)[:5]:
            async with http.get(f"{orders}/{order_id}") as r:
                stuck[order_id] = await r.json()
    assert not open_, f"{len(open_)} fuzzed orders did not finish, e.g. {stuck}"
