"""A service's HTTP contract: operations declared with msgspec types, served by the worker's
Faust web server, described as OpenAPI 3.1 at /openapi.json and browsable at /docs.

One declaration gives three things: the route, the validation of path, query and body (the
types' constraints; errors as ``{"errors": [{"field", "message"}]}``), and the operation in the
OpenAPI document, with every status code it can answer. What no handler may decide alone is
done here for every route, Faust's own views included (`guard`):

- a bearer token (EDPO_API_TOKEN), when set, for every request but the open reads;
- a JSON error body for what aiohttp refuses itself (404, 405, 413);
- a server outage (PostgreSQL, Kafka, the engine) answered with 503 and Retry-After, never 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from edpo.models.api import PATTERN_MESSAGES, ErrorItem, Errors

logger = logging.getLogger(__name__)

# Largest request body any endpoint takes (an order of 100 lines is about 6 KiB).
MAX_BODY = 64 * 1024
RETRY_AFTER = "2"
# Idempotency keys: printable ASCII, spaces inside allowed (UUIDs, hashes, "order 17 retry"); no
# space at either end, which HTTP would strip.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,198}[\x21-\x7e])?")
# Reads anyone may make when a token is set: nothing personal, nothing that changes state.
ALWAYS_OPEN = ("/health", "/openapi.json", "/docs", "/docs/")
DOCS_STATIC = "/docs/static"


class Problem(Exception):
    """A request the handler refuses: status, the field at fault and why (4xx)."""

    def __init__(self, status: int, field: str, message: str, *, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class Unavailable(Exception):
    """A server the request needs is away: 503 with Retry-After; nothing was stored."""


@dataclass(frozen=True)
class Reply:
    """What a handler answers: status, a body (Struct, dict or list) and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """A validated request: path parameters, query (a Struct), body (a Struct), headers."""

    request: web.Request
    path: dict[str, Any]
    query: Any
    body: Any

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    def idempotency_key(self) -> str | None:
        """The Idempotency-Key header, checked: printable ASCII, 1..200 characters, no space at either end."""
        key = self.request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise Problem(400, "Idempotency-Key", "Idempotency-Key must be 1..200 printable ASCII characters, "
                          "not starting or ending with a space")
        return key


Handler = Callable[[Call], Awaitable[Reply | web.StreamResponse]]


@dataclass(frozen=True)
class Answer:
    """One documented response of an operation."""

    description: str
    type: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description
    # OpenAPI links: name -> (operationId, {parameter: runtime expression}), e.g. the order a
    # POST created -> GET /orders/{order_id} with "$response.body#/order_id".
    links: Mapping[str, tuple[str, Mapping[str, str]]] = field(default_factory=dict)
    # The body's media type: JSON, or e.g. text/plain for /metrics (type str).
    media_type: str = "application/json"


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    answers: dict[int, Answer]
    body: Any = None
    query: Any = None
    path_types: dict[str, Any] = field(default_factory=dict)
    open: bool = False  # readable without the token
    idempotency_key: bool = False
    tag: str = ""

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def _field_of(error: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    """(field path, message) from msgspec's error text: "Expected ... - at `$.items[0].sku`"."""
    text = str(error)
    message, _, where = text.partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    for pattern, meaning in PATTERN_MESSAGES.items():
        if f"matching regex {pattern!r}" in message:
            message = meaning
    missing = re.search(r"(?:missing required|unknown) field `([^`]+)`", message)
    if missing:
        where = f"{where}.{missing.group(1)}" if where else missing.group(1)
    return where, message


def _integral(value: Any) -> Any:
    """value with every float that is a whole number (6693.0) as an int, as JSON Schema counts it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def decode_body(decoder: msgspec.json.Decoder, body_type: Any, raw: bytes) -> Any:
    """The body as body_type, or a Problem: 400 for malformed JSON, 422 naming the field at fault.

    JSON Schema's integers include 6693.0; msgspec's do not: a body refused only for such a
    number is decoded again with whole floats made ints (a rare, slower path)."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as e:
        if "got `float`" not in str(e):
            raise Problem(422, *_field_of(e)) from None
        first = e
    except msgspec.DecodeError as e:
        raise Problem(400, "", f"malformed JSON: {e}") from None
    try:
        return msgspec.convert(_integral(msgspec.json.decode(raw)), body_type)
    except RecursionError:
        raise Problem(400, "", "the body is nested too deeply") from None
    except msgspec.ValidationError:
        raise Problem(422, *_field_of(first)) from None


def error_body(http_status: int, field: str, message: str, extra: Mapping[str, Any] | None = None) -> web.Response:
    """The error body every EDPO endpoint uses: {"errors": [{"field", "message"}]} (+ extra keys)."""
    body = {"errors": [{"field": field, "message": message}], **(extra or {})}
    return web.Response(body=msgspec.json.encode(body), status=http_status, content_type="application/json")


class Api:
    """The operations of one service, the OpenAPI document describing them and the guard."""

    def __init__(self, title: str, description: str, token: str = "", version: str = "1.0.0") -> None:
        self.title = title
        self.description = description
        self.version = version
        self.token = token
        self.operations: list[Operation] = []
        self._open: set[tuple[str, str]] = set()  # (method, route pattern)
        self._document: bytes | None = None
        self._refinements: list[tuple[str, str, dict[str, Any]]] = []
        # Another credential a service accepts instead of the bearer token (the monitor's session cookie).
        self.also_authorized: Callable[[web.Request], bool] | None = None

    # --- declaring ---------------------------------------------------------------------------

    def operation(self, method: str, path: str, *, summary: str, answers: Mapping[int, Answer],
                  body: Any = None, query: Any = None, path_types: Mapping[str, Any] | None = None,
                  open: bool = False, idempotency_key: bool = False, tag: str = "") -> Callable[[Handler], Handler]:
        """Declare an operation; the decorated handler gets a validated `Call` and returns a `Reply`."""

        def register(handler: Handler) -> Handler:
            params = re.findall(r"{(\w+)}", path)
            types = dict(path_types or {})
            self.operations.append(Operation(
                method.upper(), path, handler, summary, dict(answers), body, query,
                {p: types.get(p, str) for p in params}, open, idempotency_key, tag))
            if open:
                self._open.add((method.upper(), path))
            self._document = None
            return handler

        return register

    def refine(self, schema: str, prop: str, **keywords: Any) -> None:
        """Tell the document more about a property than its type knows (the catalog's SKUs as an
        enum, known only when the service starts)."""
        self._refinements.append((schema, prop, keywords))
        self._document = None

    # --- serving -----------------------------------------------------------------------------

    def mount(self, router: web.UrlDispatcher, docs_assets: Path | None) -> None:
        """Add every operation, /openapi.json and /docs to the router."""
        for op in self.operations:
            router.add_route(op.method, op.path, self._serve(op))
        router.add_route("GET", "/openapi.json", self._openapi_json)
        router.add_route("GET", "/docs", self._docs_page)
        if docs_assets is not None:
            router.add_static(DOCS_STATIC, docs_assets)

    def _serve(self, op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        query_type, body_type = op.query, op.body
        body_decoder = msgspec.json.Decoder(body_type) if body_type is not None else None
        known_query = {f.encode_name for f in msgspec.structs.fields(query_type)} if query_type is not None else set()

        async def serve(request: web.Request) -> web.StreamResponse:
            try:
                path = {name: _convert(request.match_info[name], t, name) for name, t in op.path_types.items()}
                unknown = sorted(set(request.query) - known_query)
                if unknown:
                    raise Problem(422, unknown[0], f"unknown query parameter {unknown[0]!r}"
                                  + (f"; this operation takes {', '.join(sorted(known_query))}" if known_query else ""))
                repeated = sorted(name for name in set(request.query) if len(request.query.getall(name)) > 1)
                if repeated:
                    raise Problem(422, repeated[0], f"query parameter {repeated[0]!r} given more than once")
                query = _convert(dict(request.query), query_type, "") if query_type is not None else None
                body = None
                if body_decoder is not None:
                    if request.content_type not in ("application/json",) and not request.content_type.endswith("+json"):
                        raise Problem(415, "Content-Type", f"send the body as application/json, not {request.content_type}")
                    body = decode_body(body_decoder, body_type, await request.read())
                call = Call(request, path, query, body)
                if op.idempotency_key:
                    call.idempotency_key()  # checked before the handler stores anything
                reply = await op.handler(call)
            except Problem as p:
                response = error_body(p.status, p.field, p.message, p.extra)
                response.headers.update(p.headers)
                return response
            if isinstance(reply, web.StreamResponse):
                return reply
            payload = b"" if reply.body is None else msgspec.json.encode(reply.body)
            return web.Response(body=payload, status=reply.status, headers=reply.headers,
                                content_type="application/json" if reply.body is not None else None)

        serve.__name__ = op.operation_id
        return serve

    async def _openapi_json(self, request: web.Request) -> web.Response:
        if self._document is None:
            self._document = msgspec.json.encode(self.openapi())
        return web.Response(body=self._document, content_type="application/json")

    async def _docs_page(self, request: web.Request) -> web.Response:
        return web.Response(text=DOCS_HTML.replace("{title}", self.title), content_type="text/html")

    # --- guarding ----------------------------------------------------------------------------

    def is_open(self, method: str, pattern: str) -> bool:
        """A request anyone may make, token or not."""
        if method in ("GET", "HEAD") and (pattern in ALWAYS_OPEN or pattern.startswith(DOCS_STATIC)):
            return True
        return (("GET" if method == "HEAD" else method), pattern) in self._open

    def authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        if self.also_authorized is not None and self.also_authorized(request):
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def guard(self, transient: tuple[type[BaseException], ...]) -> Any:
        """aiohttp middleware for every route of the worker (Faust's views too)."""

        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            route = request.match_info.route
            pattern = route.resource.canonical if route.resource is not None else request.path
            if not self.is_open(request.method, pattern) and not self.authorized(request):
                return _unauthorized()
            if request.method in ("GET", "HEAD") and (request.content_length or "Transfer-Encoding" in request.headers):
                # Faust forwards a read to the worker owning the key with the request's headers but
                # not its body: a Content-Length without its bytes desynchronised the connection
                # between the workers, and the next request on it failed (seen with 2 instances).
                return error_body(400, "", "a GET request takes no body")
            try:
                return await handler(request)
            except web.HTTPException as e:
                if e.status < 400:
                    raise
                response = error_body(e.status, "", e.reason if e.status != 413 else
                                      f"the body is larger than {MAX_BODY} bytes")
                for name in ("Allow", "Retry-After"):
                    if name in e.headers:
                        response.headers[name] = e.headers[name]
                return response
            except (Unavailable, *transient) as e:
                logger.warning("%s %s: a server is unavailable (%s: %s)", request.method, request.path,
                               type(e).__name__, e)
                response = error_body(503, "", "a server this request needs is unavailable; nothing was stored, "
                                      "retry shortly (with the same Idempotency-Key)")
                response.headers["Retry-After"] = RETRY_AFTER
                return response
            except Exception:  # noqa: BLE001 - a bug: logged with its trace, answered in the usual shape
                logger.exception("%s %s failed", request.method, request.path)
                return error_body(500, "", "internal error (logged by the service)")

        return middleware

    # --- describing --------------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every operation, schemas from the same msgspec types."""
        types: list[Any] = [Errors]
        for op in self.operations:
            types.extend(a.type for a in op.answers.values() if a.type is not None)
            if op.body is not None:
                types.append(op.body)
        unique = list(dict.fromkeys(types))
        refs, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
        schema_of = dict(zip(unique, refs))
        for name, prop, keywords in self._refinements:
            components[name]["properties"][prop].update(keywords)
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = self._describe(op, schema_of)
        document: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": {"schemas": components},
        }
        if self.token:
            document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        return document

    def _describe(self, op: Operation, schema_of: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
        parameters = [{"name": name, "in": "path", "required": True, "schema": _schema(t)}
                      for name, t in op.path_types.items()]
        if op.query is not None:
            for f in msgspec.structs.fields(op.query):
                parameters.append({"name": f.encode_name, "in": "query",
                                   "required": f.required, "schema": _schema(f.type)})
        if op.idempotency_key:
            parameters.append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Makes a retry safe: the same key answers with the first result instead of doing it twice",
                "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"}})
        answers = dict(op.answers)
        error = Answer
        if parameters or op.body is not None:
            answers.setdefault(422, error("A path, query or body value breaks its constraints", Errors))
        # Any request can be malformed below HTTP's application layer: aiohttp answers a request
        # line or header over 8190 bytes itself, in plain text, before any EDPO code runs.
        answers.setdefault(400, error("Malformed request: malformed JSON or header (JSON body), or a request line "
                                      "or header over 8190 bytes (plain text, from the HTTP server)", Errors))
        if op.body is not None:
            answers.setdefault(413, error(f"The body is larger than {MAX_BODY} bytes", Errors))
            answers.setdefault(415, error("The body is not application/json", Errors))
        needs_token = bool(self.token) and not self.is_open(op.method, op.path)
        if needs_token:
            answers.setdefault(401, error("The API token is missing or wrong", Errors))
        responses: dict[str, Any] = {}
        for status, answer in sorted(answers.items()):
            entry: dict[str, Any] = {"description": answer.description}
            if answer.type is not None:
                entry["content"] = {answer.media_type: {"schema": schema_of[answer.type]}}
            if status == 400:
                entry.setdefault("content", {})["text/plain"] = {"schema": {"type": "string"}}
            if answer.links:
                entry["links"] = {name: {"operationId": target, "parameters": dict(parameters)}
                                  for name, (target, parameters) in answer.links.items()}
            if answer.headers:
                entry["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                    for name, text in answer.headers.items()}
            responses[str(status)] = entry
        described: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                     "description": (op.handler.__doc__ or "").strip(), "responses": responses}
        if op.tag:
            described["tags"] = [op.tag]
        if parameters:
            described["parameters"] = parameters
        if op.body is not None:
            described["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": schema_of[op.body]}}}
        if needs_token:
            described["security"] = [{"bearer": []}]
        return described


def _schema(t: Any) -> dict[str, Any]:
    return msgspec.json.schema(t)


def _convert(value: Any, t: Any, name: str) -> Any:
    """A path or query value as type t (strings converted: "5" -> 5), or a 422."""
    try:
        return msgspec.convert(value, t, strict=False)
    except msgspec.ValidationError as e:
        where, message = _field_of(e)
        raise Problem(422, where or name, message) from None


def _unauthorized() -> web.Response:
    response = error_body(401, "Authorization", "this request needs the API token: Authorization: Bearer <EDPO_API_TOKEN>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="edpo"'
    return response


def bearer(token: str) -> dict[str, str]:
    """The header a client sends with the API token (none when no token is set)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def request_json(method: str, url: str, body: Any = None, token: str = "", timeout: float = 10) -> tuple[int, Any]:
    """A blocking JSON request as the command line makes it: (status, decoded body). A server
    that cannot be reached raises urllib.error.URLError."""
    data = msgspec.json.encode(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **bearer(token)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def swagger_assets() -> Path | None:
    """Swagger UI's files, from the swagger-ui-py package (no CDN)."""
    try:
        import swagger_ui
    except ImportError:  # pragma: no cover - a dependency of the package
        return None
    return Path(swagger_ui.__file__).parent / "static"


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


def page(items: Iterable[tuple[str, Any]], limit: int, after: str | None) -> tuple[list[Any], str | None]:
    """One page of (key, value) pairs in key order: the values after `after`, at most limit, and
    the cursor of the next page (None on the last)."""
    ordered = sorted(((k, v) for k, v in items if after is None or k > after), key=lambda kv: kv[0])
    chosen = ordered[:limit]
    return [v for _, v in chosen], (chosen[-1][0] if len(ordered) > limit else None)


__all__ = ["Answer", "Api", "Call", "bearer", "ErrorItem", "Errors", "MAX_BODY", "Problem", "Reply", "Unavailable", "page",
           "swagger_assets"]
