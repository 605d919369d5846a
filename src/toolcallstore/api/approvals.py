"""Approvals: `POST /v1/approvals {quote_id}`, grant/deny by another key, list and retrieve."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, authenticated, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.approvals import decide_approval, get_approval, request_approval
from toolcallstore.controls.quotes import Quote, get_quote, get_quote_in
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.idempotency import idempotency_key, optional_idempotency_key
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, invalid, page_params, read_json_object, validate

STATES = frozenset({"pending", "granted", "denied", "expired", "used"})


def approval_object(row: Row) -> dict[str, Any]:
    status = row["state"]
    if status in ("pending", "granted") and row["expires_at"] <= now_us():
        status = "expired"
    return {
        "id": row["id"],
        "object": "approval",
        "quote_id": row["quote_id"],
        "tool": row["tool"],
        "status": status,
        "approval_reasons": row["approval_reasons"],
        "max_cost_usd": micros_to_usd(int(row["max_cost_micros"])),
        "requested_by": row["requested_by_key_id"],
        "decided_by": row["decided_by_key_id"],
        "note": row["note"],
        "expires_at": row["expires_at"] // 1_000_000,
        "created": row["created_at"] // 1_000_000,
        "decided": None if row["decided_at"] is None else row["decided_at"] // 1_000_000,
    }


def _full(quote: Quote, approval: Row) -> dict[str, Any]:
    return approval_object(
        {
            **approval,
            "tool": quote.tool,
            "approval_reasons": quote.approval_reasons,
            "max_cost_micros": quote.estimate.max_cost_micros,
        }
    )


def _reader(request: Request) -> Principal:
    principal = authenticated(request)
    if not principal.has("approvals:grant"):
        require_scope(request, "quotes:create")
    return principal


async def create_approval(request: Request) -> Response:
    principal = require_scope(request, "quotes:create")
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, {"quote_id": Field(str, required=True, max_length=64)})

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        quote = get_quote_in(tx, principal, fields["quote_id"])
        row = request_approval(tx, principal, quote)
        context_of(request).quote_id = quote.id
        context_of(request).approval_id = row["id"]
        return 200, _full(quote, row)

    return await services(request).idempotency.run_sync(request, principal, key, body, execute)


async def _decide(request: Request, *, grant: bool) -> Response:
    principal = require_scope(request, "approvals:grant")
    key = optional_idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, {"note": Field(str, max_length=1000)})
    approval_id = request.path_params["approval_id"]
    context_of(request).approval_id = approval_id

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        row = decide_approval(tx, principal, approval_id, grant=grant, note=fields.get("note"))
        return 200, _full(get_quote_in(tx, principal, row["quote_id"]), row)

    svc = services(request)
    if key is not None:
        return await svc.idempotency.run_sync(request, principal, key, body, execute)
    status, content = await svc.db.run_sync(execute)
    return JSONResponse(content, status_code=status)


async def grant_approval(request: Request) -> Response:
    return await _decide(request, grant=True)


async def deny_approval(request: Request) -> Response:
    return await _decide(request, grant=False)


async def retrieve_approval(request: Request) -> Response:
    principal = _reader(request)
    db = services(request).db
    row = await get_approval(db, principal, request.path_params["approval_id"])
    return JSONResponse(_full(await get_quote(db, principal, row["quote_id"]), row))


async def list_approvals(request: Request) -> Response:
    """Newest first; `?status=pending` is what a human approver's inbox asks for."""
    principal = _reader(request)
    state = request.query_params.get("status")
    if state is not None and state not in STATES:
        raise invalid("status", f"'status' must be one of: {', '.join(sorted(STATES))}.")
    page = page_params(request, extra=("status",))
    clauses = ["a.tenant_id = :t", "q.livemode = :live"]  # test and live data stay apart
    values: dict[str, Any] = {"t": principal.tenant_id, "live": int(principal.livemode),
                              "n": page.limit + 1, "now": now_us()}  # fmt: skip
    if state in ("pending", "granted"):
        clauses.append("a.state = :s AND a.expires_at > :now")
    elif state == "expired":
        clauses.append(
            "(a.state = :s OR (a.state IN ('pending', 'granted') AND a.expires_at <= :now))"
        )
    elif state is not None:
        clauses.append("a.state = :s")
    if state is not None:
        values["s"] = state
    if principal.key.project_id is not None:
        clauses.append("q.project_id = :p")
        values["p"] = principal.key.project_id
    if page.starting_after is not None:
        clauses.append("a.id < :after")
        values["after"] = page.starting_after
    rows = await services(request).db.fetch_all(
        "SELECT a.*, q.tool AS tool, q.approval_reasons AS reasons, q.max_cost_micros"
        " FROM approvals a JOIN quotes q ON q.id = a.quote_id"
        f" WHERE {' AND '.join(clauses)} ORDER BY a.id DESC LIMIT :n",
        values,
    )
    data = [
        approval_object({**r, "approval_reasons": orjson.loads(r["reasons"])})
        for r in rows[: page.limit]
    ]
    body = {"object": "list", "url": "/v1/approvals", "data": data,
            "has_more": len(rows) > page.limit}  # fmt: skip
    return JSONResponse(body)


routes = [
    Route("/v1/approvals", create_approval, methods=["POST"]),
    Route("/v1/approvals", list_approvals, methods=["GET"]),
    Route("/v1/approvals/{approval_id}", retrieve_approval, methods=["GET"]),
    Route("/v1/approvals/{approval_id}/grant", grant_approval, methods=["POST"]),
    Route("/v1/approvals/{approval_id}/deny", deny_approval, methods=["POST"]),
]

operations = [
    Operation("POST", "/v1/approvals", "Ask a human to approve a quote", "approvals",
              "quotes:create", body={"quote_id": Field(str, required=True, max_length=64)},
              idempotency="required", responses={200: "Approval"},
              errors={409: ("approval_not_required", "approval_already_requested",
                            "quote_already_used"), 410: ("quote_expired",)}),
    Operation("GET", "/v1/approvals", "Approvals, newest first (`?status=pending`: the inbox)",
              "approvals", None, query={**PAGE_QUERY, "status": Field(str, choices=STATES)},
              responses={200: "ApprovalList"}),
    Operation("GET", "/v1/approvals/{approval_id}", "An approval", "approvals", None,
              responses={200: "Approval"}),
    Operation("POST", "/v1/approvals/{approval_id}/grant", "Grant an approval (not your own)",
              "approvals", "approvals:grant", body={"note": Field(str, max_length=1000)},
              idempotency="optional", responses={200: "Approval"},
              errors={403: ("self_approval_forbidden",),
                      409: ("approval_already_decided",), 410: ("approval_expired",)}),
    Operation("POST", "/v1/approvals/{approval_id}/deny", "Deny an approval", "approvals",
              "approvals:grant", body={"note": Field(str, max_length=1000)},
              idempotency="optional", responses={200: "Approval"},
              errors={403: ("self_approval_forbidden",),
                      409: ("approval_already_decided",), 410: ("approval_expired",)}),
]  # fmt: skip
