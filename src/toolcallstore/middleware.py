"""Pure ASGI middleware: request context and observation, body size limit.

The access log line of a request is written by the AuditWriter once its audit row commits, in
batches, so that logging costs the request path nothing and log and audit always agree."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolcallstore.audit import AuditWriter
from toolcallstore.context import SCOPE_KEY, RequestContext
from toolcallstore.errors import APIError, InternalError, NotFound, RequestTooLarge
from toolcallstore.head_limits import head_refusal
from toolcallstore.ids import new_request_id, now_us
from toolcallstore.metrics import Metrics
from toolcallstore.responses import send_error
from toolcallstore.validation import invalid

error_log = logging.getLogger("toolcallstore.errors")

# nginx's "client closed request": the client left before it could be answered.
CLIENT_CLOSED = 499
# Probes are not actions: they are measured but neither audited nor access-logged.
UNAUDITED_PATHS = frozenset({"/healthz", "/readyz"})
# Answers that carry a decision against the caller: their audit row commits before the end
# of the answer is sent (issue 22 item 5), as does the row of every request that may change
# something (any method but these).
DENIED_STATUSES = frozenset({401, 402, 403, 409, 429})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def durable_before_answer(method: str, status: int, ctx: RequestContext) -> bool:
    """Whether the request's audit row must be committed before its answer ends: a denial, or
    any request but a read (every billable call is a POST). Reads are buffered and committed
    within TOOLCALLSTORE_AUDIT_FLUSH_MS, so a kill -9 can lose the rows of that last window."""
    return method not in READ_METHODS or ctx.decision == "denied" or status in DENIED_STATUSES


class ObserveMiddleware:
    """Gives each request an id and context; measures, logs and audits it when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics, audit: AuditWriter) -> None:
        self.app = app
        self.metrics = metrics
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        ctx = RequestContext(request_id=new_request_id(), ip=client[0] if client else None)
        scope[SCOPE_KEY] = ctx
        request_id_header = (b"toolcall-request-id", ctx.request_id.encode())
        status = 500
        response_started = False
        audited = False
        audit_path = scope["path"] not in UNAUDITED_PATHS

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, audited
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), request_id_header]
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and audit_path
                and not audited
                and durable_before_answer(scope["method"], status, ctx)
            ):
                # The answer's last bytes wait for its audit row's commit (a group commit).
                audited = True
                row = self._row(scope, ctx, status, time.perf_counter() - started)
                await self.audit.record_durable(row)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
            if not response_started:
                status = CLIENT_CLOSED  # the app had no one left to answer
        except ClientDisconnect:
            status = CLIENT_CLOSED
        except Exception:
            error_log.exception("unhandled error", extra={"request_id": ctx.request_id})
            if not response_started:
                error = InternalError("Something went wrong on our side; it has been logged.")
                await send_error(send_with_id, error, ctx.request_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe_request(_route(scope), scope["method"], status, seconds)
            if audit_path and not audited:
                await self.audit.record(self._row(scope, ctx, status, seconds))

    def _row(
        self, scope: Scope, ctx: RequestContext, status: int, seconds: float
    ) -> dict[str, Any]:
        principal = ctx.principal
        method = scope["method"]
        route = _route(scope)
        return {
            "ts": now_us(),
            "request_id": ctx.request_id,
            "tenant_id": principal.tenant_id if principal else None,
            "api_key_id": principal.key_id if principal else None,
            "method": method,
            # A refused path may hold a NUL, which Postgres text refuses: the row must be kept.
            "path": scope["path"][:500].replace("\x00", "\ufffd"),
            "route": route,
            "tool": ctx.tool,
            "scope": ctx.scope_needed,
            "decision": ctx.decision,
            "reason": ctx.reason,
            "status": status,
            "cost_micros": ctx.cost_micros,
            "quote_id": ctx.quote_id,
            "approval_id": ctx.approval_id,
            "receipt_id": ctx.receipt_id,
            "ip": ctx.ip,
            "latency_us": int(seconds * 1_000_000),
        }


def _route(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", None) or "unmatched"


class InputLimitsMiddleware:
    """Refuses what no route can take: bodies over `max_bytes` (413, whether announced or
    streamed), headers over the caps of head_limits.py (431), and a NUL character in the path
    (404) or the query (400). No id contains one, and Postgres text cannot hold one: left to the
    routes it would reach a query as a 500."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _nul_refusal(scope) or head_refusal(scope["headers"])
        if refusal is not None:
            await send_error(send, refusal, scope[SCOPE_KEY].request_id)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                ctx: RequestContext = scope[SCOPE_KEY]
                await send_error(send, self._too_large(), ctx.request_id)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"The request body exceeds the limit of {self.max_bytes} bytes.")


def _nul_refusal(scope: Scope) -> APIError | None:
    if "\x00" in scope["path"]:
        return NotFound("No such resource: the path contains a NUL character.")
    if b"%00" not in scope["query_string"]:  # a raw NUL never gets past the HTTP parser
        return None
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return invalid(name.replace("\x00", ""), "Query parameters must not contain NUL.")
    return None


class SandboxMount:
    """Serves the sandbox providers under /sandbox/ ahead of every other middleware: they are
    the fake upstreams of test mode (DESIGN §8), authenticated like the real providers, not by
    our keys, and not requests of our customers to audit."""

    PREFIX = "/sandbox"

    def __init__(self, app: ASGIApp, sandbox: ASGIApp) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(self.PREFIX + "/"):
            root = scope.get("root_path", "") + self.PREFIX
            await self.sandbox({**scope, "root_path": root}, receive, send)
            return
        await self.app(scope, receive, send)
