"""The tool catalog and quotes: `GET /v1/tools`, `POST /v1/quotes`, `GET /v1/quotes/{id}`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import authenticated, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.calls import (
    approval_threshold,
    find_tool,
    parse_tool_params,
    project_for,
)
from toolcallstore.controls.quotes import Quote, approval_reasons, get_quote, insert_quote
from toolcallstore.db import SyncTransaction
from toolcallstore.events import record_event
from toolcallstore.idempotency import idempotency_key
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.documents import tool_entry
from toolcallstore.site.operations import Operation
from toolcallstore.tools import Estimate
from toolcallstore.tools.registry import QuoteContext
from toolcallstore.validation import Field, invalid, read_json_object, validate

QUOTE_FIELDS = {
    "tool": Field(str, required=True, max_length=100),
    "params": Field(dict, required=True),
    "project_id": Field(str, max_length=64),
    "expires_in": Field(int),
}
MIN_TTL_S, MAX_TTL_S = 60, 86_400


def estimate_object(estimate: Estimate, *, operator: bool) -> dict[str, Any]:
    sources = {line.get("price_source", "models.json") for line in estimate.breakdown}
    source = sources.pop() if len(sources) == 1 else "mixed"
    breakdown: dict[str, Any] = {"lines": estimate.breakdown, "price_source": source}
    if operator:
        breakdown["provider"] = estimate.provider
        breakdown["provider_cost_usd"] = micros_to_usd(estimate.provider_cost_micros)
    return breakdown


def quote_object(quote: Quote, *, operator: bool) -> dict[str, Any]:
    status = quote.state
    if status == "open" and quote.expires_at <= now_us():
        status = "expired"
    return {
        "id": quote.id,
        "object": "quote",
        "tool": quote.tool,
        "params": quote.params,
        "status": status,
        "price_usd": micros_to_usd(quote.estimate.price_micros),
        "max_cost_usd": micros_to_usd(quote.estimate.max_cost_micros),
        "requires_approval": quote.requires_approval,
        "approval_reasons": quote.approval_reasons,
        "breakdown": estimate_object(quote.estimate, operator=operator),
        "project_id": quote.project_id,
        "livemode": quote.livemode,
        "inline": quote.inline,
        "expires_at": quote.expires_at // 1_000_000,
        "created": quote.created_at // 1_000_000,
    }


async def create_quote(request: Request) -> Response:
    principal = require_scope(request, "quotes:create")
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, QUOTE_FIELDS)
    tool = find_tool(request, fields["tool"])
    require_scope(request, tool.scope)
    params = parse_tool_params(tool, fields["params"])
    ttl = fields.get("expires_in", services(request).settings.quote_ttl_seconds)
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise invalid("expires_in", f"'expires_in' must be {MIN_TTL_S}-{MAX_TTL_S} seconds.")
    pricing = services(request).tools.pricing
    if tool.estimate_live is not None:
        context = QuoteContext(principal.tenant_id, principal.livemode, principal.key.project_id)
        estimate = await tool.estimate_live(context, params, pricing)
    else:
        estimate = tool.price(params, pricing)

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        project_id = project_for(tx, principal, fields.get("project_id"))
        threshold = approval_threshold(tx, principal.tenant_id)
        quote = insert_quote(
            tx,
            principal=principal,
            project_id=project_id,
            tool=tool,
            params=params,
            estimate=estimate,
            reasons=approval_reasons(tool, estimate, threshold),
            ttl_s=ttl,
        )
        context_of(request).quote_id = quote.id
        data = {
            "quote_id": quote.id,
            "tool": tool.name,
            "max_cost_micros": estimate.max_cost_micros,
        }
        record_event(tx, principal.tenant_id, "quote.created", data, livemode=quote.livemode)
        return 200, quote_object(quote, operator=principal.has("admin"))

    return await services(request).idempotency.run_sync(request, principal, key, body, execute)


async def retrieve_quote(request: Request) -> Response:
    principal = require_scope(request, "quotes:create")
    quote = await get_quote(services(request).db, principal, request.path_params["quote_id"])
    return JSONResponse(quote_object(quote, operator=principal.has("admin")))


async def list_tools(request: Request) -> Response:
    authenticated(request)
    tools = services(request).tools
    data = [tool_entry(tool, tools.pricing) for tool in tools.all()]
    return JSONResponse({"object": "list", "url": "/v1/tools", "data": data, "has_more": False})


routes = [
    Route("/v1/tools", list_tools, methods=["GET"]),
    Route("/v1/quotes", create_quote, methods=["POST"]),
    Route("/v1/quotes/{quote_id}", retrieve_quote, methods=["GET"]),
]

operations = [
    Operation("GET", "/v1/tools", "The tool catalog: scope, risk, approval rule, price, params",
              "tools", None, responses={200: "ToolList"}),
    Operation("POST", "/v1/quotes", "Quote a tool call (price, worst case, approval needed)",
              "quotes", "quotes:create", body=QUOTE_FIELDS, idempotency="required",
              responses={200: "Quote"},
              errors={404: ("not_found", "model_not_found"), 409: ("domain_unavailable",),
                      422: ("max_cost_too_low", "invalid_record", "invalid_domain"),
                      502: ("provider_error", "all_providers_failed"),
                      503: ("provider_not_configured",)}),
    Operation("GET", "/v1/quotes/{quote_id}", "A quote", "quotes", "quotes:create",
              responses={200: "Quote"}),
]  # fmt: skip
