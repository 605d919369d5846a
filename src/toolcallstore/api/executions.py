"""`POST /v1/executions`: run a quoted tool (or quote it inline) under every control;
`GET /v1/executions/{id}`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import authenticated, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.calls import (
    Opened,
    close_call,
    open_call,
    plan_from_quote,
    plan_inline,
)
from toolcallstore.controls.executions import (
    Origin,
    execution_object,
    run_tool,
)
from toolcallstore.errors import InternalError, NotFound
from toolcallstore.idempotency import (
    idempotency_key,
    replay_response,
)
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import Operation
from toolcallstore.tools import Outcome, ToolCall
from toolcallstore.validation import Field, read_json_object, validate

EXECUTION_FIELDS = {
    "quote_id": Field(str, max_length=64),
    "approval_id": Field(str, max_length=64),
    "tool": Field(str, max_length=100),
    "params": Field(dict),
    "project_id": Field(str, max_length=64),
}


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
    closed = await svc.db.run_sync(close_call, execution, origin, claim, result)
    if closed is None:  # the sweep released it first and stored the answer
        raise InternalError("The execution was interrupted.", code="execution_interrupted")
    done, status, content = closed
    if isinstance(result, Outcome) and result.once and status == 200:
        # Shown in this answer only: the stored result and replays never carry it.
        content = {**content, "result": {**(content["result"] or {}), **result.once}}
    ctx.receipt_id, ctx.cost_micros = done["receipt_id"], done["price_micros"]
    headers["ToolCall-Receipt-Id"] = done["receipt_id"]
    return JSONResponse(content, status_code=status, headers=headers)


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

operations = [
    Operation("POST", "/v1/executions", "Run a tool: a quote (with its approval), or quoted"
              " inline under the key's auto_quote_max_usd", "executions", None,
              body=EXECUTION_FIELDS, idempotency="required",
              responses={200: "Execution", 202: "Execution"},
              errors={400: ("content_policy_violation", "context_length_exceeded"),
                      402: ("spend_cap_exceeded",),
                      403: ("quote_required", "approval_required"),
                      404: ("not_found", "model_not_found"),
                      409: ("quote_already_used", "quote_stale"), 410: ("quote_expired",),
                      422: ("quote_mismatch", "max_cost_too_low"),
                      500: ("execution_interrupted",),
                      502: ("provider_error", "tool_timeout", "all_providers_failed"),
                      503: ("provider_not_configured",)},
              description="A sync tool answers 200 with its result and `receipt_id`; a job"
              " tool answers 202 with `job_id`: poll GET /v1/executions/{id} or the job."),
    Operation("GET", "/v1/executions/{execution_id}", "An execution: status, result, receipt",
              "executions", None, responses={200: "Execution"}),
]  # fmt: skip
