"""openapi.json (OpenAPI 3.1) from the app's routes and the operations the api modules declare.

Each Starlette `Route` of the app must have exactly one `Operation` per method; a route
without one (or a declaration without a route) raises `UndeclaredRoute` naming it, so a
new module cannot ship undocumented.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Route

from toolcallstore.auth import SUSPENDED_ALLOWED
from toolcallstore.errors import ToolCallError
from toolcallstore.site.fields import body_schema, field_schema
from toolcallstore.site.operations import Operation
from toolcallstore.site.schemas import SCHEMAS
from toolcallstore.validation import Field

TITLE = "ToolCall Store API"
VERSION = "1"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
STATUS_TEXT = {
    400: "Bad request", 401: "No valid API key", 402: "A spend cap would be exceeded",
    403: "Not allowed for this key", 404: "Not found", 409: "Conflict", 410: "Gone",
    413: "Body too large", 416: "Range not satisfiable", 422: "Unprocessable",
    429: "Too many requests",
    500: "Interrupted", 502: "Upstream failed", 503: "Unavailable",
}  # fmt: skip


class UndeclaredRoute(ToolCallError):
    pass


def declared_operations() -> list[Operation]:
    """Every `operations` list of the modules of toolcallstore.api (found, not listed: a new
    module is picked up as it lands)."""
    import toolcallstore.api as package

    found: list[Operation] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.extend(getattr(module, "operations", []))
    return found


def route_keys(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                keys.append((method, route.path))
    return keys


def match(routes: Iterable[BaseRoute], operations: Iterable[Operation]) -> list[Operation]:
    """The declared operation of every route, in the routes' order; raises naming what is
    missing or left over."""
    by_key: dict[tuple[str, str], Operation] = {}
    for op in operations:
        if op.key in by_key:
            raise UndeclaredRoute(f"{op.method} {op.path} is declared twice.")
        by_key[op.key] = op
    matched: list[Operation] = []
    for key in route_keys(routes):
        if key not in by_key:
            raise UndeclaredRoute(
                f"{key[0]} {key[1]} has no Operation: add one to the `operations` list of its"
                " api module (toolcallstore.site.operations) so openapi.json documents it."
            )
        matched.append(by_key.pop(key))
    if by_key:
        left = ", ".join(f"{m} {p}" for m, p in sorted(by_key))
        raise UndeclaredRoute(f"Declared but not routed: {left}.")
    return matched


def error_codes(op: Operation) -> dict[int, list[str]]:
    """Every error code the route can answer, by status: those of its kind, then its own."""
    codes: dict[int, list[str]] = {400: ["invalid_parameter"]}
    if op.scope != "public":
        codes[401] = ["unauthenticated", "invalid_api_key"]
        codes[403] = ["insufficient_scope"]
        if not op.path.startswith(SUSPENDED_ALLOWED):
            codes[403].append("account_suspended")  # live keys, payment failing past grace
        codes[429] = ["rate_limited"]  # the key's or the tenant's bucket (ratelimit.py)
    if op.body is not None or op.body_schema is not None:
        codes[400] += ["invalid_json", "unknown_parameter", "missing_parameter"]
        codes[413] = ["request_too_large"]
    if op.query:
        codes[400].append("unknown_parameter")
    named = [*(op.body or {}), *op.query, *((op.body_schema or {}).get("properties", {}))]
    if "{" in op.path or any(name.endswith("_id") for name in named):
        codes[404] = ["not_found"]  # an id in the path, body or query names nothing visible
    if op.idempotency is not None:
        if op.idempotency == "required":
            codes[400].append("idempotency_key_required")
        codes[400].append("idempotency_key_invalid")
        codes.setdefault(409, []).append("idempotency_key_in_use")
        codes.setdefault(422, []).append("idempotency_key_reused")
    for status, extra in op.errors.items():
        codes.setdefault(status, []).extend(extra)
    return {status: sorted(set(found)) for status, found in sorted(codes.items())}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in re.findall(r"{([a-z_]+)}", op.path):
        params.append({"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 64}})  # fmt: skip
    for name, spec in op.query.items():
        params.append({"name": name, "in": "query", "required": spec.required,
                       "schema": _query_schema(name, spec)})  # fmt: skip
    if op.idempotency is not None:
        params.append({"$ref": "#/components/parameters/IdempotencyKey"
                       if op.idempotency == "required" else
                       "#/components/parameters/OptionalIdempotencyKey"})  # fmt: skip
    return params


def _query_schema(name: str, spec: Field) -> dict[str, Any]:
    if name == "limit":
        return {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}
    return field_schema(spec)


def _success(op: Operation, status: int, schema_name: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if schema_name == "Empty":
        return {"description": "Headers only", "content": {}}
    if schema_name == "Binary":
        binary = {"schema": {"type": "string", "format": "binary"}}
        text = "The asset's bytes (a range of them: 206)"
        return {"description": text, "content": {media: binary for media in ASSET_TYPES}}
    if schema_name == "Metrics":
        content["text/plain"] = {"schema": {"type": "string"}}
    else:
        content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
    for media in op.streams:
        content[media] = {"schema": {"type": "string", "description": "Server-Sent Events"}}
    text = "Accepted: it runs as a job; poll it" if status == 202 else "Success"
    return {"description": text, "content": content}


ASSET_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "video/mp4", "video/webm",
               "application/octet-stream")  # fmt: skip
REQUEST_ID = {"$ref": "#/components/headers/RequestId"}
REPLAYED = {"$ref": "#/components/headers/IdempotentReplayed"}
RATE_HEADERS = {
    "RateLimit-Limit": {"$ref": "#/components/headers/RateLimitLimit"},
    "RateLimit-Remaining": {"$ref": "#/components/headers/RateLimitRemaining"},
    "RateLimit-Reset": {"$ref": "#/components/headers/RateLimitReset"},
}
RETRY_AFTER = {"$ref": "#/components/headers/RetryAfter"}
_INT_HEADER = {"type": "string", "pattern": "^[0-9]+$"}
HEADERS = {
    "RateLimitLimit": {"description": "The burst of the key's or tenant's token bucket nearer"
                       " to empty (IETF draft RateLimit fields).", "schema": _INT_HEADER},
    "RateLimitRemaining": {"description": "Requests left in that bucket now.",
                           "schema": _INT_HEADER},
    "RateLimitReset": {"description": "Seconds until that bucket is full again.",
                       "schema": _INT_HEADER},
    "RetryAfter": {"description": "Seconds to wait before the next request will be admitted.",
                   "required": True, "schema": _INT_HEADER},
    "RequestId": {"description": "This request's id (also in error bodies and audit rows).",
                  "required": True, "schema": {"type": "string", "minLength": 1}},
    "IdempotentReplayed": {"description": "true: the stored answer of an earlier request with"
                           " this Idempotency-Key; nothing ran again.",
                           "schema": {"type": "string", "enum": ["true"]}},
}  # fmt: skip


def operation_object(op: Operation) -> dict[str, Any]:
    headers: dict[str, Any] = {"ToolCall-Request-Id": REQUEST_ID}
    if op.idempotency is not None:
        headers["Idempotent-Replayed"] = REPLAYED
    if op.scope != "public":
        headers.update(RATE_HEADERS)
    responses: dict[str, Any] = {}
    for status, name in op.responses.items():
        responses[str(status)] = {**_success(op, status, name), "headers": headers}
    for status, codes in error_codes(op).items():
        responses[str(status)] = {
            "description": f"{STATUS_TEXT.get(status, 'Error')}: {', '.join(codes)}",
            "headers": {**headers, "Retry-After": RETRY_AFTER} if status == 429 else headers,
            "content": {"application/json": {"schema": ERROR_REF}},
            "x-error-codes": codes,
        }
    out: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.scope == "public":
        out["security"] = []
    elif op.scope is not None:
        out["x-required-scope"] = op.scope
    parameters = _parameters(op)
    if parameters:
        out["parameters"] = parameters
    schema = op.body_schema if op.body_schema is not None else (
        body_schema(op.body) if op.body is not None else None)  # fmt: skip
    if schema is not None:
        content = {"application/json": {"schema": dict(schema)}}
        out["requestBody"] = {"required": True, "content": content}
    return out


def _operation_id(op: Operation) -> str:
    words = re.sub(r"[{}]", "", op.path).strip("/").replace("/", "_").replace("-", "_")
    return f"{op.method.lower()}_{words.replace('.', '_')}"


def build_openapi(routes: Iterable[BaseRoute], operations: Iterable[Operation]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in match(routes, operations):
        if op.external is not None:
            continue
        paths.setdefault(op.path, {})[op.method.lower()] = operation_object(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "summary": "Quoted, capped, approved, idempotent, receipted tool calls for agents.",
            "description": "See /llms.txt for the flow an agent follows.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "tcs_live_... or tcs_test_... (an API key)",
                },  # fmt: skip
            },
            "headers": HEADERS,
            "parameters": {
                "IdempotencyKey": _idempotency_header(required=True),
                "OptionalIdempotencyKey": _idempotency_header(required=False),
            },
            "schemas": SCHEMAS,
        },
    }


def _idempotency_header(*, required: bool) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": required,
        "description": "1-255 printable characters (a UUID). A retry with the same key replays"
        " the first answer with 'Idempotent-Replayed: true'; the same key with another body is"
        " 422 idempotency_key_reused; while the first runs, 409 idempotency_key_in_use.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^[\\x20-\\x7e]+$",
        },  # fmt: skip
    }
