"""`POST /v1/executions`: run a quoted tool (or quote it inline) under every control;
`GET /v1/executions/{id}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.api.quotes import (
    approval_threshold,
    find_tool,
    parse_tool_params,
    project_for,
)
from toolcallstore.approvals import use_approval
from toolcallstore.auth import Principal, authenticated, require_scope
from toolcallstore.context import context_of
from toolcallstore.db import Row, Transaction
from toolcallstore.errors import APIError, InternalError, NotFound, PermissionDenied, Unprocessable
from toolcallstore.executions import (
    Origin,
    close_execution,
    execution_object,
    open_execution,
    outcome_response,
    run_tool,
)
from toolcallstore.idempotency import Claim, idempotency_key
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd
from toolcallstore.quotes import Quote, approval_reasons, get_quote, insert_quote, params_hash
from toolcallstore.quotes import use_quote as take_quote
from toolcallstore.responses import JSONResponse
from toolcallstore.services import Services, services
from toolcallstore.tools import Estimate, Tool, ToolCall
from toolcallstore.validation import Field, invalid, read_json_object, validate

EXECUTION_FIELDS = {
    "quote_id": Field(str, max_length=64),
    "approval_id": Field(str, max_length=64),
    "tool": Field(str, max_length=100),
    "params": Field(dict),
    "project_id": Field(str, max_length=64),
}


@dataclass(frozen=True)
class Plan:
    """A checked request: run `quote_id`, or quote `params` inline first."""

    tool: Tool
    quote_id: str | None
    approval_id: str | None
    params: dict[str, Any]
    project_id: str | None
    estimate: Estimate | None  # inline only


async def plan_from_quote(request: Request, principal: Principal, f: dict[str, Any]) -> Plan:
    if "project_id" in f:
        raise invalid("project_id", "'project_id' comes from the quote; leave it out here.")
    quote = await get_quote(services(request).db, principal, f["quote_id"])
    tool = find_tool(request, quote.tool)
    require_scope(request, tool.scope)
    if "tool" in f and f["tool"] != quote.tool:
        raise Unprocessable(f"The quote is for '{quote.tool}', not '{f['tool'][:100]}'.",
                            code="quote_mismatch", param="tool")  # fmt: skip
    if "params" in f and params_hash(tool.name, parse_tool_params(tool, f["params"])) != (
        quote.params_hash
    ):
        raise Unprocessable(
            "These params differ from the ones quoted; create a new quote for them.",
            code="quote_mismatch",
            param="params",
        )
    if "approval_id" in f and not quote.requires_approval:
        raise invalid("approval_id", "This quote needs no approval; leave 'approval_id' out.")
    return Plan(tool, quote.id, f.get("approval_id"), quote.params, quote.project_id, None)


def plan_inline(request: Request, principal: Principal, f: dict[str, Any]) -> Plan:
    if "tool" not in f or "params" not in f:
        raise invalid("quote_id", "Send 'quote_id', or 'tool' and 'params' to quote inline.",
                      "missing_parameter")  # fmt: skip
    if "approval_id" in f:
        raise invalid("approval_id", "An approval belongs to a quote; send its 'quote_id' too.")
    tool = find_tool(request, f["tool"])
    require_scope(request, tool.scope)
    params = parse_tool_params(tool, f["params"])
    estimate = tool.price(params, services(request).tools.pricing)
    limit = principal.key.auto_quote_max_micros
    if tool.risk == "high":
        raise quote_required(tool, estimate, "It is high risk and needs a human approval.")
    if limit is None or estimate.max_cost_micros > limit:
        why = (
            "This key has no auto_quote_max_usd."
            if limit is None
            else f"It may cost {micros_to_usd(estimate.max_cost_micros)} USD, above this key's"
            f" auto_quote_max_usd of {micros_to_usd(limit)}."
        )
        raise quote_required(tool, estimate, why)
    return Plan(tool, None, None, params, f.get("project_id"), estimate)


def quote_required(tool: Tool, estimate: Estimate, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"This call cannot be quoted inline. {why} Create a quote first (POST /v1/quotes).",
        code="quote_required",
        tool=tool.name,
        max_cost_usd=micros_to_usd(estimate.max_cost_micros),
    )


async def take_inline_quote(tx: Transaction, principal: Principal, plan: Plan) -> Quote:
    assert plan.estimate is not None
    project_id = await project_for(tx, principal, plan.project_id)
    reasons = approval_reasons(
        plan.tool, plan.estimate, await approval_threshold(tx, principal.tenant_id)
    )
    if reasons:
        raise quote_required(
            plan.tool, plan.estimate, "It is above the tenant's approval threshold."
        )
    return await insert_quote(tx, principal=principal, project_id=project_id, tool=plan.tool,
                              params=plan.params, estimate=plan.estimate, reasons=[], ttl_s=60,
                              inline=True)  # fmt: skip


async def create_execution(request: Request) -> Response:
    principal = authenticated(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, EXECUTION_FIELDS)
    if "quote_id" in fields:
        plan = await plan_from_quote(request, principal, fields)
    else:
        plan = plan_inline(request, principal, fields)
    svc = services(request)
    claim = await svc.idempotency.begin(request, principal, key, body)
    if isinstance(claim, Response):
        return claim
    ctx = context_of(request)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip, idempotency_key=key)
    try:
        quote, execution, answer = await _open(svc, principal, plan, origin, claim)
    except BaseException:
        await claim.release()  # refused or failed before anything ran: nothing to replay
        raise
    ctx.quote_id, ctx.approval_id = quote.id, execution["approval_id"]
    headers = {"ToolCall-Quote-Id": quote.id}
    if answer is not None:  # a job tool: its job settles it; the caller polls the execution
        svc.jobs.wake()
        return JSONResponse(answer, status_code=202, headers=headers)
    call = ToolCall(execution["id"], quote.tenant_id, quote.project_id, quote.livemode,
                    quote.params, quote.estimate)  # fmt: skip
    result = await run_tool(plan.tool, call)
    async with svc.db.transaction() as tx:
        if isinstance(result, APIError):
            done = await close_execution(tx, execution, origin, error=result)
        else:
            done = await close_execution(tx, execution, origin, outcome=result)
        if done is None:  # the sweep released it first and stored the answer
            raise InternalError("The execution was interrupted.", code="execution_interrupted")
        status, content = outcome_response(done)
        await claim.store(tx, status, content)
    ctx.receipt_id, ctx.cost_micros = done["receipt_id"], done["price_micros"]
    headers["ToolCall-Receipt-Id"] = done["receipt_id"]
    return JSONResponse(content, status_code=status, headers=headers)


async def _open(
    svc: Services, principal: Principal, plan: Plan, origin: Origin, claim: Claim
) -> tuple[Quote, Row, dict[str, Any] | None]:
    """Phase one in one transaction: quote, approval, hold, execution (and job)."""
    settings = svc.settings
    if plan.tool.mode == "job":
        hold_s = float(settings.job_hold_seconds)
    else:
        hold_s = plan.tool.timeout_s + settings.hold_grace_seconds
    async with svc.db.transaction() as tx:
        if plan.quote_id is None:
            quote = await take_inline_quote(tx, principal, plan)
        else:
            quote = await take_quote(tx, principal, plan.quote_id)
        approval_id = None
        if quote.requires_approval:
            approval_id = await use_approval(tx, principal, plan.approval_id, quote)
        execution = await open_execution(tx, quote=quote, tool=plan.tool, approval_id=approval_id,
                                         origin=origin, hold_seconds=hold_s,
                                         jobs=svc.job_store)  # fmt: skip
        # Until the hold can have expired, a retry with this key waits (409) rather than taking
        # the key over: the sweep stores the answer of an execution whose process died.
        await tx.execute(
            "UPDATE idempotency_keys SET locked_at = :until WHERE api_key_id = :k AND key = :key",
            {"until": now_us() + int(hold_s * 1_000_000), **_claim_ids(claim)},
        )
        answer = None
        if plan.tool.mode == "job":
            answer = execution_object(execution)
            await claim.store(tx, 202, answer)
    return quote, execution, answer


def _claim_ids(claim: Claim) -> dict[str, str]:
    return {"k": claim.ids["api_key_id"], "key": claim.ids["key"]}


async def retrieve_execution(request: Request) -> Response:
    principal = authenticated(request)
    svc = services(request)
    row = await svc.db.fetch_one(
        "SELECT * FROM executions WHERE id = :id AND tenant_id = :t",
        {"id": request.path_params["execution_id"], "t": principal.tenant_id},
    )
    if (
        row is None
        or bool(row["livemode"]) != principal.livemode
        or principal.key.project_id not in (None, row["project_id"])
    ):
        raise NotFound("No such execution.", param="execution_id")
    if not principal.has("receipts:read"):
        tool = svc.tools.get(row["tool"])
        require_scope(request, tool.scope if tool is not None else "receipts:read")
    return JSONResponse(execution_object(row))


routes = [
    Route("/v1/executions", create_execution, methods=["POST"]),
    Route("/v1/executions/{execution_id}", retrieve_execution, methods=["GET"]),
]
