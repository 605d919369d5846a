"""Media generations: `POST /v1/media/generations` (a `media.image` or `media.video` execution
run as a job), `GET` one (`?wait=` long-polls) or a list, its events (SSE), cancel, delete (its
assets go), publish (`media.publish`, high risk), and `POST /v1/provider-webhooks/{provider}`
(a provider's hint to poll now, never taken as a result).

Visibility is the execution's: the same tenant, mode and (for a key bound to one) project; 404
otherwise."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from toolcallstore.auth import Principal, authenticated, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.approvals import approval_required
from toolcallstore.controls.calls import (
    Opened,
    Plan,
    approval_threshold,
    close_call,
    find_tool,
    open_call,
    parse_tool_params,
    plan_from_quote,
    plan_inline,
    project_for,
)
from toolcallstore.controls.executions import Origin, outcome_response, run_tool
from toolcallstore.controls.quotes import approval_reasons, insert_quote
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.errors import InternalError, NotFound, PermissionDenied, StateConflict
from toolcallstore.idempotency import idempotency_key, replay_response, store_response
from toolcallstore.media.replicate import verify_webhook
from toolcallstore.media.service import (
    GENERATION_SELECT,
    MediaService,
    generation_object,
    terminal,
    view_of,
)
from toolcallstore.objects import list_object
from toolcallstore.responses import JSONResponse
from toolcallstore.services import Services, services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.tools import ToolCall
from toolcallstore.tools.media import PARAMS, PUBLISH_TOOL, TOOL_OF_KIND
from toolcallstore.validation import (
    Field,
    invalid,
    page_params,
    read_json_object,
    validate,
    wait_seconds,
)

MAX_WAIT_S = 60
SSE_PING_S = 15.0
SCOPE = "media:generate"
GENERATION_FIELDS = {
    **PARAMS,
    "prompt": Field(str, max_length=4000),  # required unless a quote_id pins the params
    "quote_id": Field(str, max_length=64),
    "approval_id": Field(str, max_length=64),
    "project_id": Field(str, max_length=64),
}
PUBLISH_FIELDS = {
    "quote_id": Field(str, max_length=64),
    "approval_id": Field(str, max_length=64),
}
TRANSPORT = ("quote_id", "approval_id", "project_id")


def _media(request: Request) -> MediaService:
    media = services(request).media
    assert media is not None, "the app builds the media service"
    return media


async def create_generation(request: Request) -> Response:
    principal = authenticated(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, GENERATION_FIELDS)
    svc = services(request)
    params = {k: v for k, v in fields.items() if k not in TRANSPORT}
    if "quote_id" in fields:
        plan = await plan_from_quote(request, principal, _quoted(fields, params))
        if plan.tool.name not in TOOL_OF_KIND.values():
            raise invalid("quote_id", f"That quote is for '{plan.tool.name}', not a generation.")
    else:
        if "approval_id" in fields:
            raise invalid("approval_id", "An approval belongs to a quote; send its 'quote_id'.")
        tool = find_tool(request, TOOL_OF_KIND[params.get("kind", "image")])
        require_scope(request, tool.scope)
        clean = parse_tool_params(tool, params)
        if tool.risk == "high":
            await _refuse_unapproved(svc, principal, tool.name, clean, fields.get("project_id"))
        inline = {"tool": tool.name, "params": clean}
        if "project_id" in fields:
            inline["project_id"] = fields["project_id"]
        plan = plan_inline(request, principal, inline)
    ctx = context_of(request)
    claim = svc.idempotency.claim_for(request, principal, key, body)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip, path="/v1/media/generations",
                    idempotency_key=key)  # fmt: skip

    def open_generation(tx: SyncTransaction) -> Any:
        opened = open_call(tx, svc, principal, plan, origin, claim)
        if not isinstance(opened, Opened):
            return opened
        row = tx.fetch_one(GENERATION_SELECT + " WHERE g.execution_id = :e",
                           {"e": opened.execution["id"]})  # fmt: skip
        assert row is not None
        answer = generation_object(row, [])
        store_response(tx, claim.api_key_id, claim.key, 202, answer)
        return opened, answer

    result = await svc.db.run_sync(open_generation)
    if not isinstance(result, tuple):
        return replay_response(result, request)
    opened, answer = result
    ctx.quote_id, ctx.approval_id = opened.quote.id, opened.execution["approval_id"]
    svc.jobs.wake()
    return JSONResponse(answer, status_code=202, headers={"ToolCall-Quote-Id": opened.quote.id})


def _quoted(fields: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    if "project_id" in fields:
        raise invalid("project_id", "'project_id' comes from the quote; leave it out here.")
    quoted: dict[str, Any] = {"quote_id": fields["quote_id"]}
    if "approval_id" in fields:
        quoted["approval_id"] = fields["approval_id"]
    if set(params) - {"kind"}:
        quoted["params"] = params
    return quoted


async def _refuse_unapproved(
    svc: Services, principal: Principal, tool_name: str, params: dict[str, Any],
    project_id: str | None,
) -> None:  # fmt: skip
    """A high-risk generation asked for without a quote: quote it, and answer 403
    approval_required naming that quote, so that the agent can ask a human for it."""
    tool = svc.tools.get(tool_name)
    assert tool is not None
    estimate = tool.price(params, svc.tools.pricing)

    def quote_it(tx: SyncTransaction) -> Any:
        project = project_for(tx, principal, project_id)
        reasons = approval_reasons(tool, estimate, approval_threshold(tx, principal.tenant_id))
        return insert_quote(tx, principal=principal, project_id=project, tool=tool, params=params,
                            estimate=estimate, reasons=reasons,
                            ttl_s=svc.settings.quote_ttl_seconds)  # fmt: skip

    quote = await svc.db.run_sync(quote_it)
    raise approval_required(quote, f"A {tool_name} generation is high risk and needs a human"
                            " approval; it was quoted for you.")  # fmt: skip


async def _own(request: Request, principal: Principal) -> Row:
    row = await services(request).db.fetch_one(
        GENERATION_SELECT + " WHERE g.id = :id AND g.tenant_id = :t",
        {"id": request.path_params["generation_id"], "t": principal.tenant_id},
    )
    if (
        row is None
        or bool(row["livemode"]) != principal.livemode
        or principal.key.project_id not in (None, row["project_id"])
    ):
        raise NotFound("No such generation.", param="generation_id")
    return row


async def _assets(request: Request, row: Row) -> list[dict[str, Any]]:
    """The generation's assets with fresh signed URLs (none once deleted)."""
    if row["deleted_at"] is not None or row["status"] != "succeeded":
        return []
    assets = services(request).assets
    out = []
    for asset_id in orjson.loads(row["assets"]):
        asset = await assets.get(asset_id)
        if asset is None:
            continue
        out.append({"id": asset.id, "object": "asset", "url": assets.signed_url(asset),
                    "content_type": asset.content_type, "size": asset.size,
                    "sha256": asset.sha256, "published_url": asset.published_url})  # fmt: skip
    return out


async def _answer(request: Request, row: Row) -> dict[str, Any]:
    return generation_object(row, await _assets(request, row))


async def get_generation(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    wait = wait_seconds(request, MAX_WAIT_S)
    row = await _own(request, principal)
    watch = _media(request).watch
    deadline = time.monotonic() + wait
    first = view_of(row)
    while not terminal(row) and (left := deadline - time.monotonic()) > 0:
        if not await watch.wait(row["id"], int(row["updated_at"]), left):
            break
        row = await _own(request, principal)
        if view_of(row) != first:
            break
    return JSONResponse(await _answer(request, row))


async def generation_events(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    row = await _own(request, principal)
    watch = _media(request).watch

    async def events() -> AsyncIterator[bytes]:
        current = row
        last_view = None
        while True:
            if view_of(current) != last_view:
                last_view = view_of(current)
                answer = await _answer(request, current)
                name = current["status"]
                yield f"event: {name}\ndata: ".encode() + orjson.dumps(answer) + b"\n\n"
                if terminal(current):
                    return
            if not await watch.wait(current["id"], int(current["updated_at"]), SSE_PING_S):
                yield b": ping\n\n"
            current = await _own(request, principal)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def list_generations(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    page = page_params(request)
    values: dict[str, Any] = {"t": principal.tenant_id, "l": int(principal.livemode),
                              "n": page.limit + 1}  # fmt: skip
    where = "g.tenant_id = :t AND g.livemode = :l"
    if principal.key.project_id is not None:
        where, values["p"] = where + " AND g.project_id = :p", principal.key.project_id
    if page.starting_after is not None:
        where, values["after"] = where + " AND g.id < :after", page.starting_after
    rows = await services(request).db.fetch_all(
        f"{GENERATION_SELECT} WHERE {where} ORDER BY g.id DESC LIMIT :n", values
    )
    data = [await _answer(request, r) for r in rows[: page.limit]]
    return JSONResponse(list_object(data, len(rows) > page.limit, "/v1/media/generations"))


async def cancel_generation(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    row = await _own(request, principal)
    svc = services(request)
    if row["status"] in ("succeeded", "failed", "cancelled"):
        raise StateConflict(f"The generation has already {row['status']}.",
                            code="generation_finished", param="generation_id")  # fmt: skip

    def flag(tx: SyncTransaction) -> None:
        tx.execute(
            "UPDATE media_generations SET cancel_requested = 1, updated_at = :now WHERE id = :id",
            {"now": int(time.time() * 1_000_000), "id": row["id"]},
        )

    await svc.db.run_sync(flag)
    # Not started yet: the job is cancelled at once, and the sweep releases its hold.
    if row["job_id"] is not None:
        await svc.jobs.store.cancel(row["job_id"], unstarted_only=True)
    _media(request).watch.notify(row["id"])
    return JSONResponse(await _answer(request, await _own(request, principal)))


async def delete_generation(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    row = await _own(request, principal)
    svc = services(request)
    if not terminal(row):
        raise StateConflict("The generation is still running; cancel it first.",
                            code="generation_running", param="generation_id")  # fmt: skip
    await svc.assets.delete_for_owner("media_generation", row["id"])
    await _media(request).runner.set_generation(row["id"], deleted_at=int(time.time() * 1e6))
    return JSONResponse({"id": row["id"], "object": "media.generation", "deleted": True})


async def publish_generation(request: Request) -> Response:
    """`media.publish` for this generation: needs a quote and its granted approval."""
    principal = authenticated(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, PUBLISH_FIELDS)
    row = await _own(request, principal)
    svc = services(request)
    params = {"generation_id": row["id"]}
    if "quote_id" not in fields:
        tool = find_tool(request, PUBLISH_TOOL)
        require_scope(request, tool.scope)
        await _refuse_unapproved(svc, principal, PUBLISH_TOOL, params, row["project_id"])
    plan: Plan = await plan_from_quote(request, principal, {**fields, "tool": PUBLISH_TOOL,
                                                            "params": params})  # fmt: skip
    ctx = context_of(request)
    claim = svc.idempotency.claim_for(request, principal, key, body)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip,
                    path=f"/v1/media/generations/{row['id']}/publish",
                    idempotency_key=key)  # fmt: skip
    opened = await svc.db.run_sync(open_call, svc, principal, plan, origin, claim)
    if not isinstance(opened, Opened):
        return replay_response(opened, request)
    quote, execution = opened.quote, opened.execution
    call = ToolCall(execution["id"], quote.tenant_id, quote.project_id, quote.livemode,
                    quote.params, quote.estimate)  # fmt: skip
    result = await run_tool(plan.tool, call)
    closed = await svc.db.run_sync(close_call, execution, origin, claim, result)
    if closed is None:
        raise InternalError("The execution was interrupted.", code="execution_interrupted")
    done, status, content = closed
    ctx.receipt_id = done["receipt_id"]
    return JSONResponse(content, status_code=status)


async def provider_webhook(request: Request) -> Response:
    """A provider says a request changed: poll it now. The body is never taken as the result;
    Replicate's are verified (`webhook-signature`) first, fal's (unsigned) are only a hint."""
    provider = request.path_params["provider"]
    media = _media(request)
    config = media.catalog.providers.get(provider)
    if config is None:
        raise NotFound("No such media provider.", param="provider")
    raw = await request.body()
    if config.protocol == "replicate":
        secret = services(request).settings.replicate_webhook_secret
        if not secret or not verify_webhook(secret, request.headers, raw):
            raise PermissionDenied("The webhook signature does not verify.",
                                   code="invalid_signature")  # fmt: skip
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    request_id = None
    if isinstance(payload, dict):
        request_id = payload.get("request_id") or payload.get("id")
    if not isinstance(request_id, str) or len(request_id) > 200:
        raise invalid("request_id", "The webhook names no request ('request_id' or 'id').")
    poked = media.hints.poke(provider, request_id)
    return JSONResponse({"received": True, "polling": poked})


routes = [
    Route("/v1/media/generations", create_generation, methods=["POST"]),
    Route("/v1/media/generations", list_generations, methods=["GET"]),
    Route("/v1/media/generations/{generation_id}", get_generation, methods=["GET"]),
    Route("/v1/media/generations/{generation_id}", delete_generation, methods=["DELETE"]),
    Route("/v1/media/generations/{generation_id}/events", generation_events, methods=["GET"]),
    Route("/v1/media/generations/{generation_id}/cancel", cancel_generation, methods=["POST"]),
    Route("/v1/media/generations/{generation_id}/publish", publish_generation, methods=["POST"]),
    Route("/v1/provider-webhooks/{provider}", provider_webhook, methods=["POST"]),
]

_ERRORS = {403: ("quote_required", "approval_required"), 404: ("not_found", "model_not_found"),
           402: ("spend_cap_exceeded",), 409: ("quote_already_used", "quote_stale"),
           410: ("quote_expired",), 422: ("quote_mismatch", "max_cost_too_low")}  # fmt: skip

operations = [
    Operation("POST", "/v1/media/generations", "Generate images or a video (a media.image or"
              " media.video execution run as a job)", "media", SCOPE, body=GENERATION_FIELDS,
              idempotency="required", responses={202: "Object"}, errors=_ERRORS,
              description="`model` is a media lane, alias or target (default: the kind's"
              " default lane), so `{\"prompt\": ..., \"kind\": \"image\"}` alone works. Video"
              " needs a quote with a granted approval: without one the answer is 403"
              " `approval_required` naming the quote made for it."),
    Operation("GET", "/v1/media/generations", "Your generations, newest first", "media", SCOPE,
              query=PAGE_QUERY, responses={200: "Object"}),
    Operation("GET", "/v1/media/generations/{generation_id}", "A generation; `?wait=` long-polls"
              " up to 60 s for a change; assets carry signed expiring URLs", "media", SCOPE,
              query={"wait": Field(float)}, responses={200: "Object"}),
    Operation("DELETE", "/v1/media/generations/{generation_id}", "Delete a finished"
              " generation's assets", "media", SCOPE, responses={200: "Object"},
              errors={409: ("generation_running",)}),
    Operation("GET", "/v1/media/generations/{generation_id}/events", "A generation's changes as"
              " Server-Sent Events (queued, running with progress, succeeded with assets,"
              " failed, cancelled)", "media", SCOPE, responses={200: "Object"},
              streams=("text/event-stream",)),
    Operation("POST", "/v1/media/generations/{generation_id}/cancel", "Cancel a generation (its"
              " provider job is cancelled where the provider can)", "media", SCOPE,
              responses={200: "Object"}, errors={409: ("generation_finished",)}),
    Operation("POST", "/v1/media/generations/{generation_id}/publish", "Publish its assets at"
              " permanent public URLs (media.publish: high risk, needs an approved quote)",
              "media", SCOPE, body=PUBLISH_FIELDS, idempotency="required",
              responses={200: "Execution"},
              errors={**_ERRORS, 409: ("generation_not_succeeded", "quote_already_used")}),
    Operation("POST", "/v1/provider-webhooks/{provider}", "A media provider's webhook: a hint"
              " to poll the request now (Replicate's signature verified), never the result",
              "media", "public", responses={200: "Object"},
              errors={403: ("invalid_signature",)}),
]  # fmt: skip

__all__ = ["outcome_response"]
