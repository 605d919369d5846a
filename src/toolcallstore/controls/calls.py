"""Opening a billable call, shared by `/v1/executions` and `/v1/chat/completions`: the tool,
the plan (a stored quote or an inline one), and phase one's transaction (key, quote, approval,
hold, execution)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from toolcallstore.auth import Principal, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.approvals import use_approval
from toolcallstore.controls.executions import (
    Origin,
    close_abandoned,
    close_execution,
    execution_object,
    open_execution,
    outcome_response,
)
from toolcallstore.controls.quotes import (
    Quote,
    approval_reasons,
    get_quote,
    insert_quote,
    params_hash,
    use_quote,
)
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.errors import APIError, InvalidRequest, NotFound, PermissionDenied, Unprocessable
from toolcallstore.idempotency import Answer, KeyClaim, claim_in, store_response
from toolcallstore.money import micros_to_usd
from toolcallstore.services import Services, services
from toolcallstore.tools import Estimate, Outcome, Tool
from toolcallstore.tools.registry import CostlyFailure
from toolcallstore.validation import invalid


def find_tool(request: Request, name: str) -> Tool:
    tool = services(request).tools.get(name)
    if tool is None:
        raise NotFound(f"No such tool '{name[:100]}'; GET /v1/tools lists them.", param="tool")
    context_of(request).tool = tool.name
    return tool


def parse_tool_params(tool: Tool, params: dict[str, Any]) -> dict[str, Any]:
    """The tool's own validation, with `param` naming the field inside `params`."""
    try:
        return tool.parse_params(params)
    except InvalidRequest as error:
        if "param" in error.details and not str(error.details["param"]).startswith("params."):
            error.details["param"] = f"params.{error.details['param']}"
        raise


def project_for(tx: SyncTransaction, principal: Principal, project_id: str | None) -> str | None:
    """The project a call is billed to: the key's own, or one of its tenant's projects."""
    bound = principal.key.project_id
    if bound is not None:
        if project_id not in (None, bound):
            raise NotFound("No such project.", param="project_id")
        return bound
    if project_id is not None:
        found = tx.fetch_val(
            "SELECT id FROM projects WHERE id = :id AND tenant_id = :t",
            {"id": project_id, "t": principal.tenant_id},
        )
        if found is None:
            raise NotFound("No such project.", param="project_id")
    return project_id


def approval_threshold(tx: SyncTransaction, tenant_id: str) -> int | None:
    value = tx.fetch_val(
        "SELECT approval_threshold_micros FROM tenants WHERE id = :id", {"id": tenant_id}
    )
    return None if value is None else int(value)


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


def close_call(
    tx: SyncTransaction, execution: Row, origin: Origin, claim: KeyClaim, result: Outcome | APIError
) -> tuple[Row, int, dict[str, Any]] | None:
    """A call run in the request, closed in one transaction: settle or release, receipt, ledger,
    and the answer its Idempotency-Key replays (shared by `/v1/executions` and media)."""
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
