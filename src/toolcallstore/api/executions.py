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
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.errors import APIError, InternalError, NotFound, PermissionDenied, Unprocessable
from toolcallstore.executions import (
    Origin,
    close_abandoned,
    close_execution,
    execution_object,
    open_execution,
    outcome_response,
    run_tool,
)
from toolcallstore.idempotency import (
    Answer,
    KeyClaim,
    claim_in,
    idempotency_key,
    replay_response,
    store_response,
)
from toolcallstore.money import micros_to_usd
from toolcallstore.quotes import (
    Quote,
    approval_reasons,
    get_quote,
    insert_quote,
    params_hash,
    use_quote,
)
from toolcallstore.responses import JSONResponse
from toolcallstore.services import Services, services
from toolcallstore.tools import Estimate, Outcome, Tool, ToolCall
from toolcallstore.tools.registry import CostlyFailure
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


def take_inline_quote(tx: SyncTransaction, principal: Principal, plan: Plan) -> Quote:
    assert plan.estimate is not None
    project_id = project_for(tx, principal, plan.project_id)
    threshold = approval_threshold(tx, principal.tenant_id)
    if approval_reasons(plan.tool, plan.estimate, threshold):
        why = "It is above the tenant's approval threshold."
        raise quote_required(plan.tool, plan.estimate, why)
    return insert_quote(tx, principal=principal, project_id=project_id, tool=plan.tool,
                        params=plan.params, estimate=plan.estimate, reasons=[], ttl_s=60,
                        inline=True)  # fmt: skip


@dataclass(frozen=True)
class Opened:
    quote: Quote
    execution: Row
    answer: dict[str, Any] | None  # a job tool's 202 body, stored already


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
    ctx = context_of(request)
    claim = svc.idempotency.claim_for(request, principal, key, body)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip, idempotency_key=key)
    # A refusal raised in here rolls the whole transaction back, the key's claim included:
    # nothing of a rejected request is stored, so the agent may fix it and retry the key.
    opened = await svc.db.run_sync(open_call, svc, principal, plan, origin, claim)
    if not isinstance(opened, Opened):
        return replay_response(opened, request)
    quote, execution = opened.quote, opened.execution
    ctx.quote_id, ctx.approval_id = quote.id, execution["approval_id"]
    headers = {"ToolCall-Quote-Id": quote.id}
    if opened.answer is not None:  # a job tool: its job settles it; the caller polls
        svc.jobs.wake()
        return JSONResponse(opened.answer, status_code=202, headers=headers)
    call = ToolCall(execution["id"], quote.tenant_id, quote.project_id, quote.livemode,
                    quote.params, quote.estimate)  # fmt: skip
    result = await run_tool(plan.tool, call)
    closed = await svc.db.run_sync(_close, execution, origin, claim, result)
    if closed is None:  # the sweep released it first and stored the answer
        raise InternalError("The execution was interrupted.", code="execution_interrupted")
    done, status, content = closed
    ctx.receipt_id, ctx.cost_micros = done["receipt_id"], done["price_micros"]
    headers["ToolCall-Receipt-Id"] = done["receipt_id"]
    return JSONResponse(content, status_code=status, headers=headers)


def open_call(
    tx: SyncTransaction, svc: Services, principal: Principal, plan: Plan, origin: Origin,
    claim: KeyClaim | None,
) -> Opened | Answer:  # fmt: skip
    """Phase one, one transaction: key, quote, approval, hold, execution (and job)."""
    if plan.tool.mode == "job":
        hold_s = float(svc.settings.job_hold_seconds)
    else:
        hold_s = plan.tool.timeout_s + svc.settings.hold_grace_seconds
    # Until the hold can have expired, a retry with this key waits (409) rather than taking
    # the key over: the sweep stores the answer of an execution whose process died.
    hold_us = int(hold_s * 1_000_000)
    replay = None if claim is None else claim_in(
        tx, claim, svc.idempotency.lock_us, fence_us=hold_us,
        abandoned=lambda tx: close_abandoned(tx, claim.api_key_id, claim.key),
    )  # fmt: skip
    if replay is not None:
        return replay
    if plan.quote_id is None:
        quote = take_inline_quote(tx, principal, plan)
    else:
        quote = use_quote(tx, principal, plan.quote_id)
    approval_id = None
    if quote.requires_approval:
        approval_id = use_approval(tx, principal, plan.approval_id, quote)
    execution = open_execution(tx, quote=quote, tool=plan.tool, approval_id=approval_id,
                               origin=origin, hold_seconds=hold_s,
                               jobs=svc.job_store)  # fmt: skip
    answer = None
    if plan.tool.mode == "job":
        assert claim is not None
        answer = execution_object(execution)
        store_response(tx, claim.api_key_id, claim.key, 202, answer)
    return Opened(quote, execution, answer)


def _close(
    tx: SyncTransaction, execution: Row, origin: Origin, claim: KeyClaim, result: Outcome | APIError
) -> tuple[Row, int, dict[str, Any]] | None:
    """Phase three, one transaction: settle or release, receipt, ledger, stored answer."""
    if isinstance(result, APIError):
        spent = result.outcome if isinstance(result, CostlyFailure) else None
        done = close_execution(tx, execution, origin, error=result, outcome=spent)
    else:
        done = close_execution(tx, execution, origin, outcome=result)
    if done is None:
        return None
    status, content = outcome_response(done)
    store_response(tx, claim.api_key_id, claim.key, status, content)
    return done, status, content


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
