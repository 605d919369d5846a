"""Receipts, usage and the operator's reconciliation report."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import require_scope
from toolcallstore.billing.reconciliation import stripe_side
from toolcallstore.controls.ledger import receipt_object
from toolcallstore.controls.reconciliation import reconcile
from toolcallstore.controls.spend import period_of
from toolcallstore.db.tenants import get_project
from toolcallstore.errors import NotFound
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, invalid, page_params

PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _period(request: Request) -> str:
    period = request.query_params.get("period", period_of(now_us()))
    if not PERIOD.match(period):
        raise invalid("period", "'period' must be a month as YYYY-MM, e.g. 2026-11.")
    return period


def _unix(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # not '²': int() refuses it
        raise invalid(name, f"'{name}' must be a unix time in seconds.")
    return int(raw) * 1_000_000


def _no_unknown(request: Request, allowed: tuple[str, ...]) -> None:
    for name in request.query_params:
        if name not in allowed:
            raise invalid(name, f"Unknown query parameter '{name}'.", "unknown_parameter")


async def retrieve_receipt(request: Request) -> Response:
    principal = require_scope(request, "receipts:read")
    row = await services(request).db.fetch_one(
        "SELECT * FROM receipts WHERE id = :id AND tenant_id = :t",
        {"id": request.path_params["receipt_id"], "t": principal.tenant_id},
    )
    if (
        row is None
        or bool(row["livemode"]) != principal.livemode  # test and live data stay apart
        or principal.key.project_id not in (None, row["project_id"])
    ):
        raise NotFound("No such receipt.", param="receipt_id")
    return JSONResponse(receipt_object(row, operator=principal.has("admin")))


async def list_receipts(request: Request) -> Response:
    """Newest first; `project_id`, `from` and `to` (unix seconds, inclusive) narrow the list."""
    principal = require_scope(request, "receipts:read")
    page = page_params(request, extra=("project_id", "from", "to"))
    clauses = ["tenant_id = :t", "livemode = :l"]
    values: dict[str, Any] = {"t": principal.tenant_id, "l": int(principal.livemode)}
    project_id = principal.key.project_id or request.query_params.get("project_id")
    if project_id is not None:
        if request.query_params.get("project_id", project_id) != project_id:
            raise NotFound("No such project.", param="project_id")
        clauses.append("project_id = :p")
        values["p"] = project_id
    for name, op in (("from", ">="), ("to", "<")):
        bound = _unix(request, name)
        if bound is not None:
            clauses.append(f"created_at {op} :{name}")
            values[name] = bound + (1_000_000 if name == "to" else 0)
    if page.starting_after is not None:
        clauses.append("id < :after")
        values["after"] = page.starting_after
    values["n"] = page.limit + 1
    rows = await services(request).db.fetch_all(
        f"SELECT * FROM receipts WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT :n", values
    )
    operator = principal.has("admin")
    data = [receipt_object(r, operator=operator) for r in rows[: page.limit]]
    return JSONResponse({"object": "list", "url": "/v1/receipts", "data": data,
                         "has_more": len(rows) > page.limit})  # fmt: skip


async def usage(request: Request) -> Response:
    """Charges of one month by project and tool, from the ledger."""
    principal = require_scope(request, "receipts:read")
    _no_unknown(request, ("period", "project_id", "tool"))
    period = _period(request)
    clauses = ["tenant_id = :t", "period = :period", "livemode = :l", "kind = 'charge'"]
    values: dict[str, Any] = {"t": principal.tenant_id, "period": period,
                              "l": int(principal.livemode)}  # fmt: skip
    asked = request.query_params.get("project_id")
    if asked is not None and (
        principal.key.project_id not in (None, asked)
        or await get_project(services(request).db, principal.tenant_id, asked) is None
    ):  # another tenant's project, or not the project of a project-bound key
        raise NotFound("No such project.", param="project_id")
    project_id = principal.key.project_id or asked
    if project_id is not None:
        clauses.append("project_id = :p")
        values["p"] = project_id
    if "tool" in request.query_params:
        clauses.append("tool = :tool")
        values["tool"] = request.query_params["tool"]
    rows = await services(request).db.fetch_all(
        "SELECT project_id, tool, COUNT(*) AS calls, SUM(amount_micros) AS amount"
        f" FROM ledger_entries WHERE {' AND '.join(clauses)}"
        " GROUP BY project_id, tool ORDER BY project_id, tool",
        values,
    )
    data = [
        {"project_id": r["project_id"], "tool": r["tool"], "calls": int(r["calls"]),
         "amount_usd": micros_to_usd(int(r["amount"]))}
        for r in rows
    ]  # fmt: skip
    total = sum(int(r["amount"]) for r in rows)
    return JSONResponse({"object": "usage", "period": period, "livemode": principal.livemode,
                         "data": data, "total_usd": micros_to_usd(total)})  # fmt: skip


async def reconciliation(request: Request) -> Response:
    require_scope(request, "admin")
    _no_unknown(request, ("period", "livemode"))
    raw = request.query_params.get("livemode", "true")
    if raw not in ("true", "false"):
        raise invalid("livemode", "'livemode' must be true or false.")
    if "period" not in request.query_params:
        raise invalid("period", "'period' (YYYY-MM) is required.", "missing_parameter")
    svc = services(request)
    period = _period(request)
    report = await reconcile(svc.db, period, raw == "true")
    # Stripe meters live usage only: its side is compared for livemode=true when billing is on.
    if raw == "true" and svc.payments is not None:
        report["stripe_metered_usage"] = await stripe_side(svc.db, svc.payments, period)
    return JSONResponse(report)


routes = [
    Route("/v1/receipts", list_receipts, methods=["GET"]),
    Route("/v1/receipts/{receipt_id}", retrieve_receipt, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/admin/reconciliation", reconciliation, methods=["GET"]),
]

ID_QUERY = Field(str, max_length=64)
operations = [
    Operation("GET", "/v1/receipts", "Receipts, newest first", "receipts", "receipts:read",
              query={**PAGE_QUERY, "project_id": ID_QUERY, "from": Field(int), "to": Field(int)},
              responses={200: "ReceiptList"}),
    Operation("GET", "/v1/receipts/{receipt_id}", "A receipt", "receipts", "receipts:read",
              responses={200: "Receipt"}),
    Operation("GET", "/v1/usage", "Charges of a month by project and tool", "receipts",
              "receipts:read", query={"period": Field(str, max_length=7), "project_id": ID_QUERY,
                                      "tool": Field(str, max_length=100)},
              responses={200: "Usage"}),
    Operation("GET", "/v1/admin/reconciliation", "Operator: provider cost, price and margin,"
              " and every mismatch against the ledger", "admin", "admin",
              query={"period": Field(str, required=True, max_length=7),
                     "livemode": Field(str, choices=frozenset({"true", "false"}))},
              responses={200: "Reconciliation"}),
]  # fmt: skip
