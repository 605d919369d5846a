"""`POST /v1/chat/completions` (OpenAI protocol, every control on) and `GET /v1/models`.

The call is quoted (inline under the key's `auto_quote_max_usd`, or by `quote_id`), its worst
case held, before any byte goes upstream; `ChatCall` (chat.py) runs and settles it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, authenticated, require_scope
from toolcallstore.byok import tenant_keys
from toolcallstore.context import context_of
from toolcallstore.controls.calls import Opened, Plan, find_tool, open_call, quote_required
from toolcallstore.controls.executions import Origin
from toolcallstore.controls.ledger import receipt_id_for
from toolcallstore.controls.quotes import get_quote, params_hash
from toolcallstore.errors import Unprocessable
from toolcallstore.idempotency import optional_idempotency_key, replay_response
from toolcallstore.ids import now_us
from toolcallstore.lanes.catalog import Catalog
from toolcallstore.lanes.chat import SSE_HEADERS, ChatCall
from toolcallstore.lanes.openai_out import replay_chunks
from toolcallstore.lanes.plan import CallPlan, plan_call, plan_quoted_call, priced
from toolcallstore.lanes.prices import LivePrices
from toolcallstore.lanes.request import CHAT_SCHEMA, budget_of, parse_chat_params
from toolcallstore.media.catalog import media_models
from toolcallstore.money import micros_to_usd
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import Operation
from toolcallstore.tools import Tool
from toolcallstore.tools.llm import CHAT_TOOL
from toolcallstore.validation import invalid, read_json_object

PATH = "/v1/chat/completions"


async def create_chat_completion(request: Request) -> Response:
    principal = require_scope(request, "llm:chat")
    key = optional_idempotency_key(request)
    body = await read_json_object(request)
    params = parse_chat_params(body)
    stream = _stream_flag(body)
    svc = services(request)
    tool = find_tool(request, CHAT_TOOL)
    # Live calls to a provider the tenant brought its own key for go out with that key.
    byok = await tenant_keys(svc.db, svc.keyring, principal.tenant_id) if principal.livemode else {}
    if body.get("quote_id") is not None:
        plan, call_plan = await _from_quote(request, principal, tool, params, body, byok)
    else:
        plan, call_plan = _inline(principal, tool, params, body, svc.lanes, svc.prices, byok)
    ctx = context_of(request)
    claim = None if key is None else svc.idempotency.claim_for(request, principal, key, body)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip, path=PATH, idempotency_key=key)
    opened = await svc.db.run_sync(open_call, svc, principal, plan, origin, claim)
    if not isinstance(opened, Opened):
        return _replay(opened, request, stream)
    ctx.quote_id, ctx.approval_id = opened.quote.id, opened.execution["approval_id"]
    receipt_id = receipt_id_for(opened.execution["id"])
    return ChatCall(
        svc=svc,
        execution=opened.execution,
        plan=call_plan,
        params=opened.quote.params,
        stream=stream,
        origin=origin,
        claim=claim,
        receipt_id=receipt_id,
        ctx=ctx,
        operator=principal.has("admin"),
        headers_out={"ToolCall-Quote-Id": opened.quote.id, "ToolCall-Receipt-Id": receipt_id},
        byok=byok,
        max_seconds=tool.timeout_s,  # the hold lasts this plus the grace period
    )


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("stream", "'stream' must be true or false.")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid("stream_options", "'stream_options' is only allowed with stream: true.")
        if not isinstance(options, dict) or any(
            k not in ("include_usage", "include_obfuscation") or not isinstance(v, bool)
            for k, v in options.items()
        ):
            raise invalid("stream_options", "'stream_options' takes include_usage (a boolean).")
    return bool(stream)


def _an_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 64 and "\x00" not in value


async def _from_quote(
    request: Request, principal: Principal, tool: Tool, params: dict[str, Any],
    body: dict[str, Any], byok: dict[str, str],
) -> tuple[Plan, CallPlan]:  # fmt: skip
    quote_id, approval_id = body["quote_id"], body.get("approval_id")
    if not _an_id(quote_id):
        raise invalid("quote_id", "'quote_id' must be a quote id (q_...).")
    if approval_id is not None and not _an_id(approval_id):
        raise invalid("approval_id", "'approval_id' must be an approval id (appr_...).")
    if body.get("project_id") is not None:
        raise invalid("project_id", "'project_id' comes from the quote; leave it out here.")
    svc = services(request)
    quote = await get_quote(svc.db, principal, quote_id)
    if quote.tool != tool.name or params_hash(tool.name, params) != quote.params_hash:
        raise Unprocessable(
            "This request differs from the one quoted (tool, model, messages, tools or limits);"
            " create a new quote for it.",
            code="quote_mismatch",
            param="quote_id",
        )
    if approval_id is not None and not quote.requires_approval:
        raise invalid("approval_id", "This quote needs no approval; leave 'approval_id' out.")
    call_plan = plan_quoted_call(svc.lanes, quote.params,
                                 held_micros=quote.estimate.max_cost_micros,
                                 livemode=principal.livemode, prices=svc.prices,
                                 byok_providers=frozenset(byok))  # fmt: skip
    plan = Plan(tool, quote.id, approval_id, quote.params, quote.project_id, None)
    return plan, call_plan


def _inline(
    principal: Principal, tool: Tool, params: dict[str, Any], body: dict[str, Any],
    catalog: Catalog, prices: LivePrices, byok: dict[str, str],
) -> tuple[Plan, CallPlan]:  # fmt: skip
    if body.get("approval_id") is not None:
        raise invalid("approval_id", "An approval belongs to a quote; send its 'quote_id' too.")
    project_id = body.get("project_id")
    if project_id is not None and (not isinstance(project_id, str) or len(project_id) > 64):
        raise invalid("project_id", "'project_id' must be a project id.")
    limit = principal.key.auto_quote_max_micros
    asked = budget_of(params)
    budget = limit if asked is None else asked if limit is None else min(asked, limit)

    def plan(budget: int | None) -> CallPlan:
        return plan_call(catalog, params, livemode=principal.livemode, budget_micros=budget,
                         prices=prices, byok_providers=frozenset(byok))  # fmt: skip

    try:
        call_plan = plan(budget)
    except Unprocessable as refused:
        if refused.code != "max_cost_too_low" or limit is None or budget != limit:
            raise  # the caller's own max_cost_usd cannot pay for the call
        # The key's inline limit cannot, where the caller's budget (if any) can: a quote can.
        wider = plan(asked)
        raise quote_required(tool, wider.estimate(wider.lane.id),
                             f"It may cost up to {micros_to_usd(wider.hold_micros)} USD, above"
                             f" this key's auto_quote_max_usd of {micros_to_usd(limit)}.",
                             ) from None  # fmt: skip
    estimate = call_plan.estimate(call_plan.lane.id)
    if limit is None:
        raise quote_required(tool, estimate, "This key has no auto_quote_max_usd.")
    if asked is not None and call_plan.hold_micros > limit:
        raise quote_required(tool, estimate, f"It may cost {micros_to_usd(call_plan.hold_micros)}"
                             f" USD, above this key's auto_quote_max_usd of"
                             f" {micros_to_usd(limit)}.")  # fmt: skip
    # The budget is part of the quoted params, so the quote alone fixes what the call may do.
    assert budget is not None
    quoted = {**params, "max_cost_usd": micros_to_usd(budget)}
    return Plan(tool, None, None, quoted, project_id, estimate), call_plan


def _replay(answer: tuple[int, Any], request: Request, stream: bool) -> Response:
    status, content = answer
    toolcall = content.get("toolcall") or content.get("error", {}).get("toolcall") or {}
    ids = {"ToolCall-Quote-Id": toolcall.get("quote_id"),
           "ToolCall-Receipt-Id": toolcall.get("receipt_id")}  # fmt: skip
    if not stream or status != 200:
        response = replay_response(answer, request)
    else:
        context_of(request).reason = "idempotent_replay"
        headers = {k.decode(): v.decode() for k, v in SSE_HEADERS}
        headers["Idempotent-Replayed"] = "true"
        response = Response(b"".join(replay_chunks(content)), headers=headers)
    for name, value in ids.items():
        if value:
            response.headers[name] = value
    return response


async def list_models(request: Request) -> Response:
    authenticated(request)
    catalog = services(request).lanes
    data: list[dict[str, Any]] = []
    for lane in catalog.lanes.values():
        data.append({"id": lane.id, "object": "model", "created": 0, "owned_by": "toolcallstore",
                     "kind": "lane", "description": lane.description,
                     "targets": list(lane.targets),
                     "policy": {"order": lane.order, "hedge_after_ms": lane.hedge_after_ms,
                                "max_parallel": lane.max_parallel,
                                "resume_mid_stream": lane.resume_mid_stream}})  # fmt: skip
    for alias, goal in catalog.aliases.items():
        data.append({"id": alias, "object": "model", "created": 0, "owned_by": "toolcallstore",
                     "kind": "alias", "alias_of": goal})  # fmt: skip
    now, prices = now_us(), services(request).prices
    for listed in catalog.models.values():
        model, source = priced(listed, prices, now)  # what a call made now pays
        data.append({"id": model.id, "object": "model", "created": 0,
                     "owned_by": model.target.provider, "kind": "target",
                     "context_tokens": model.context_tokens,
                     "max_output_tokens": model.max_output_tokens,
                     "supports_tools": model.supports_tools,
                     "pricing": {"input_usd_per_mtok": catalog.list_price(model.input_per_mtok),
                                 "output_usd_per_mtok": catalog.list_price(model.output_per_mtok),
                                 "fee_usd_per_call": str(catalog.fee),
                                 "price_source": source}})  # fmt: skip
    media = services(request).media
    if media is not None:
        data += media_models(media.catalog)
    return JSONResponse({"object": "list", "data": data})


routes = [
    Route(PATH, create_chat_completion, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]

operations = [
    Operation("POST", PATH, "Chat completions (OpenAI protocol), quoted, capped and receipted;"
              " `stream: true` answers Server-Sent Events", "llm", "llm:chat",
              body_schema=CHAT_SCHEMA, idempotency="optional", responses={200: "ChatCompletion"},
              streams=("text/event-stream",),
              errors={400: ("content_policy_violation", "context_length_exceeded"),
                      402: ("spend_cap_exceeded",),
                      403: ("quote_required", "approval_required"),
                      404: ("not_found", "model_not_found"),
                      409: ("quote_already_used", "quote_stale"), 410: ("quote_expired",),
                      422: ("max_cost_too_low", "quote_mismatch"),
                      500: ("execution_interrupted",),
                      502: ("all_providers_failed", "provider_error"),
                      503: ("provider_not_configured",)},
              description="The last chunk (or the body) carries `usage` and `toolcall`"
              " (receipt_id, cost_usd, target, attempts); headers ToolCall-Quote-Id and"
              " ToolCall-Receipt-Id. A stream that fails after its first token ends with a"
              " chunk carrying `error` and no [DONE]."),
    Operation("GET", "/v1/models", "Lanes, aliases and targets with our prices per million"
              " tokens", "llm", None, responses={200: "Models"}),
]  # fmt: skip
