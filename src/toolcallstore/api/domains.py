"""Domains and DNS: `POST /v1/domains/check`, `POST /v1/domains` (register: a quoted, approved
job), `GET /v1/domains[/{name}]`, `GET|PUT /v1/domains/{name}/dns` (the live zone; apply a
desired record set whose diff was quoted and approved)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, authenticated, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.calls import Opened, Plan, find_tool, open_call, parse_tool_params
from toolcallstore.controls.executions import (
    Origin,
    close_execution,
    execution_object,
    run_tool,
)
from toolcallstore.controls.quotes import Quote, get_quote, params_hash
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.domains import service
from toolcallstore.domains.records import check_domain_name, zone_fingerprint
from toolcallstore.domains.tools import (
    CHECK_PARAMS,
    RECORDS_SCHEMA,
    REGISTER_PARAMS,
    parse_check,
)
from toolcallstore.errors import APIError, InternalError, NotFound, StateConflict, Unprocessable
from toolcallstore.idempotency import KeyClaim, idempotency_key, replay_response, store_response
from toolcallstore.responses import JSONResponse
from toolcallstore.services import Services, services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.tools import Outcome, ToolCall
from toolcallstore.tools.registry import CostlyFailure
from toolcallstore.validation import Field, invalid, page_params, read_json_object, validate

FLOW_FIELDS = {
    "quote_id": Field(str, required=True, max_length=64),
    "approval_id": Field(str, max_length=64),
}
REGISTER_FIELDS = {**REGISTER_PARAMS, **FLOW_FIELDS}
DNS_BODY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["records", "quote_id"],
    "properties": {"records": RECORDS_SCHEMA, "quote_id": {"type": "string"},
                   "approval_id": {"type": "string"}},
}  # fmt: skip


async def check_domains(request: Request) -> Response:
    principal = require_scope(request, "domains:check")
    fields = validate(await read_json_object(request), CHECK_PARAMS)
    names = parse_check(fields)["names"]
    svc = services(request)
    _, found = await service.check_availability(svc, principal.livemode, names)
    data = [service.availability_object(f, svc.tools.pricing) for f in found]
    return JSONResponse({"object": "list", "data": data, "has_more": False})


def _checked_quote(quote: Quote, tool_name: str, params: dict[str, Any]) -> None:
    if quote.tool != tool_name:
        raise Unprocessable(f"The quote is for '{quote.tool}', not '{tool_name}'.",
                            code="quote_mismatch", param="quote_id")  # fmt: skip
    if params_hash(tool_name, params) != quote.params_hash:
        raise Unprocessable("This request differs from the one quoted; quote it again.",
                            code="quote_mismatch", param="quote_id")  # fmt: skip


async def _replay_stored(svc: Services, principal: Principal, key: str) -> bool:
    """Whether the key already has a stored answer (its replay skips the live checks)."""
    found = await svc.db.fetch_val(
        "SELECT state FROM idempotency_keys WHERE api_key_id = :k AND key = :key",
        {"k": principal.key_id, "key": key},
    )
    return found is not None


async def register_domain(request: Request) -> Response:
    principal = authenticated(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, REGISTER_FIELDS)
    svc = services(request)
    tool = find_tool(request, service.REGISTER_TOOL)
    require_scope(request, tool.scope)
    params = parse_tool_params(tool, {k: v for k, v in fields.items() if k in REGISTER_PARAMS})
    quote = await get_quote(svc.db, principal, fields["quote_id"])
    _checked_quote(quote, tool.name, params)
    name = params["name"]
    if not await _replay_stored(svc, principal, key):
        # Taken now is a clean 409 with nothing held: no registrar is asked to buy it.
        _, (found,) = await service.check_availability(svc, principal.livemode, [name])
        if not found.available:
            raise StateConflict(f"{name} is not available for registration.",
                                code="domain_unavailable", param="name")  # fmt: skip
    ctx = context_of(request)
    plan = Plan(tool, quote.id, fields.get("approval_id"), quote.params, quote.project_id, None)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip, path="/v1/domains",
                    idempotency_key=key)  # fmt: skip
    claim = svc.idempotency.claim_for(request, principal, key, body)

    def open_registration(tx: SyncTransaction) -> Any:
        opened = open_call(tx, svc, principal, plan, origin, claim)
        if not isinstance(opened, Opened):
            return opened
        if service.name_is_held(tx, quote.livemode, name):
            raise StateConflict(f"{name} is already registered here.",
                                code="domain_unavailable", param="name")  # fmt: skip
        execution = opened.execution
        row = service.insert_domain_row(tx, tenant_id=quote.tenant_id,
                                        project_id=quote.project_id, livemode=quote.livemode,
                                        name=name, years=params["years"],
                                        execution_id=execution["id"])  # fmt: skip
        assert row is not None
        answer = {**service.domain_object(row, None, "running", None),
                  "job_id": execution["job_id"], "quote_id": quote.id,
                  "execution": execution_object(execution)}  # fmt: skip
        store_response(tx, claim.api_key_id, claim.key, 202, answer)
        return opened, answer

    result = await svc.db.run_sync(open_registration)
    if not isinstance(result, tuple) or not isinstance(result[0], Opened):
        return replay_response(result, request)
    opened, answer = result
    ctx.quote_id, ctx.approval_id = quote.id, opened.execution["approval_id"]
    svc.jobs.wake()
    return JSONResponse(answer, status_code=202, headers={"ToolCall-Quote-Id": quote.id})


def _visible(principal: Principal) -> tuple[str, dict[str, Any]]:
    where = "d.tenant_id = :t AND d.livemode = :m"
    values: dict[str, Any] = {"t": principal.tenant_id, "m": int(principal.livemode)}
    if principal.key.project_id is not None:
        where += " AND d.project_id = :p"
        values["p"] = principal.key.project_id
    return where, values


_DOMAIN_SELECT = (
    "SELECT d.*, e.receipt_id AS receipt_id, e.state AS execution_state FROM domains d"
    " LEFT JOIN executions e ON e.id = d.execution_id"
)


async def _domain_row(request: Request, principal: Principal) -> Row:
    try:
        name = check_domain_name(request.path_params["name"], "name")
    except Unprocessable:  # no domain has that name
        raise NotFound("No such domain here.", param="name") from None
    where, values = _visible(principal)
    row = await services(request).db.fetch_one(
        f"{_DOMAIN_SELECT} WHERE {where} AND d.name = :n ORDER BY d.created_at DESC LIMIT 1",
        {**values, "n": name},
    )
    if row is None:
        raise NotFound(f"No domain {name} here.", param="name")
    return row


async def _object(svc: Services, row: Row) -> dict[str, Any]:
    change = None
    if row["dns_change_id"] is not None:
        change = await svc.db.fetch_one("SELECT * FROM dns_changes WHERE id = :id",
                                        {"id": row["dns_change_id"]})  # fmt: skip
    return service.domain_object(row, row["receipt_id"], row["execution_state"], change)


async def list_domains(request: Request) -> Response:
    principal = authenticated(request)
    page = page_params(request)
    where, values = _visible(principal)
    if page.starting_after is not None:
        where += " AND d.id < :after"
        values["after"] = page.starting_after
    svc = services(request)
    rows = await svc.db.fetch_all(
        f"{_DOMAIN_SELECT} WHERE {where} ORDER BY d.id DESC LIMIT :n",
        {**values, "n": page.limit + 1},
    )
    data = [await _object(svc, row) for row in rows[: page.limit]]
    return JSONResponse({"object": "list", "url": "/v1/domains", "data": data,
                         "has_more": len(rows) > page.limit})  # fmt: skip


async def retrieve_domain(request: Request) -> Response:
    principal = authenticated(request)
    row = await _domain_row(request, principal)
    return JSONResponse(await _object(services(request), row))


async def read_dns(request: Request) -> Response:
    principal = authenticated(request)
    row = await _domain_row(request, principal)
    if row["status"] != "registered":
        raise NotFound(f"{row['name']} is not registered (yet).", param="name")
    svc = services(request)
    live = await service.read_zone(svc, row)
    return JSONResponse({"object": "dns_zone", "domain": row["name"],
                         "records": [r.to_dict() for r in live],
                         "fingerprint": zone_fingerprint(live),
                         "dns_status": row["dns_status"]})  # fmt: skip


async def apply_dns(request: Request) -> Response:
    principal = authenticated(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    flow = validate({k: v for k, v in body.items() if k != "records"}, FLOW_FIELDS)
    if "records" not in body:
        raise invalid("records", "Missing required parameter 'records'.", "missing_parameter")
    svc = services(request)
    tool = find_tool(request, service.DNS_TOOL)
    require_scope(request, tool.scope)
    name = check_domain_name(request.path_params["name"], "name")
    params = tool.parse_params({"domain": name, "records": body["records"]})
    quote = await get_quote(svc.db, principal, flow["quote_id"])
    _checked_quote(quote, tool.name, params)
    if not await _replay_stored(svc, principal, key):
        # The approval is of the quoted diff: a zone changed since makes it a diff nobody saw.
        _, fingerprint = service.quoted_change(quote.estimate)
        domain = await service.held_or_404(
            svc, principal.tenant_id, principal.livemode, name, principal.key.project_id
        )
        if zone_fingerprint(await service.read_zone(svc, domain)) != fingerprint:
            raise service.stale("read just now")
    ctx = context_of(request)
    plan = Plan(tool, quote.id, flow.get("approval_id"), quote.params, quote.project_id, None)
    origin = Origin(ctx.request_id, principal.key_id, ctx.ip, method="PUT",
                    path=f"/v1/domains/{name}/dns", idempotency_key=key)  # fmt: skip
    claim = svc.idempotency.claim_for(request, principal, key, body)
    opened = await svc.db.run_sync(open_call, svc, principal, plan, origin, claim)
    if not isinstance(opened, Opened):
        return replay_response(opened, request)
    execution = opened.execution
    ctx.quote_id, ctx.approval_id = quote.id, execution["approval_id"]
    call = ToolCall(execution["id"], quote.tenant_id, quote.project_id, quote.livemode,
                    quote.params, quote.estimate)  # fmt: skip
    result = await run_tool(tool, call)
    closed = await svc.db.run_sync(_close, execution, origin, claim, result)
    if closed is None:
        raise InternalError("The execution was interrupted.", code="execution_interrupted")
    done, status, content = closed
    ctx.receipt_id, ctx.cost_micros = done["receipt_id"], done["price_micros"]
    headers = {"ToolCall-Quote-Id": quote.id, "ToolCall-Receipt-Id": done["receipt_id"]}
    return JSONResponse(content, status_code=status, headers=headers)


def _close(
    tx: SyncTransaction, execution: Row, origin: Origin, claim: KeyClaim, result: Outcome | APIError
) -> tuple[Row, int, dict[str, Any]] | None:
    """Settle (what the provider applied) or release, receipt, and the stored answer."""
    if isinstance(result, APIError):
        spent = result.outcome if isinstance(result, CostlyFailure) else None
        done = close_execution(tx, execution, origin, error=result, outcome=spent)
        if done is None:
            return None
        content = result.envelope(execution["request_id"])
        content["error"].update(execution_id=done["id"], receipt_id=done["receipt_id"])
        store_response(tx, claim.api_key_id, claim.key, result.status, content)
        return done, result.status, content
    done = close_execution(tx, execution, origin, outcome=result)
    if done is None:
        return None
    content = {**result.result, "execution_id": done["id"], "receipt_id": done["receipt_id"],
               "amount_usd": execution_object(done)["amount_usd"]}  # fmt: skip
    store_response(tx, claim.api_key_id, claim.key, 200, content)
    return done, 200, content


routes = [
    Route("/v1/domains/check", check_domains, methods=["POST"]),
    Route("/v1/domains", register_domain, methods=["POST"]),
    Route("/v1/domains", list_domains, methods=["GET"]),
    Route("/v1/domains/{name}", retrieve_domain, methods=["GET"]),
    Route("/v1/domains/{name}/dns", read_dns, methods=["GET"]),
    Route("/v1/domains/{name}/dns", apply_dns, methods=["PUT"]),
]

operations = [
    Operation("POST", "/v1/domains/check", "Availability and our prices of up to 50 domain"
              " names (first year, renewal, premium flagged)", "domains", "domains:check",
              body=CHECK_PARAMS, responses={200: "Object"},
              errors={422: ("invalid_domain",), 502: ("provider_error", "all_providers_failed"),
                      503: ("provider_not_configured",)}),
    Operation("POST", "/v1/domains", "Register a domain: its quote (domains.register) and the"
              " granted approval; runs as a job", "domains", "domains:register",
              body=REGISTER_FIELDS, idempotency="required", responses={202: "Object"},
              errors={402: ("spend_cap_exceeded",), 403: ("approval_required",),
                      409: ("domain_unavailable", "quote_already_used"),
                      410: ("quote_expired",), 422: ("quote_mismatch", "invalid_domain"),
                      502: ("provider_error", "all_providers_failed"),
                      503: ("provider_not_configured",)},
              description="Answers 202 with the domain (status `registering`) and its job;"
              " the job registers it at OpenProvider, failing over to Porkbun only when"
              " OpenProvider did nothing. GET /v1/domains/{name} shows the outcome."),
    Operation("GET", "/v1/domains", "The domains held (and being registered)", "domains",
              None, query=PAGE_QUERY, responses={200: "Object"}),
    Operation("GET", "/v1/domains/{name}", "A domain: status, registrar, expiry, nameservers,"
              " receipt, DNS change status", "domains", None, responses={200: "Object"}),
    Operation("GET", "/v1/domains/{name}/dns", "The live zone (read from the DNS host)",
              "domains", None, responses={200: "Object"},
              errors={502: ("provider_error",), 503: ("provider_not_configured",)}),
    Operation("PUT", "/v1/domains/{name}/dns", "Apply a desired record set: its quote"
              " (dns.apply, showing the diff) and the approval of that diff", "domains",
              "dns:write", body_schema=DNS_BODY_SCHEMA, idempotency="required",
              responses={200: "Object"},
              errors={402: ("spend_cap_exceeded",), 403: ("approval_required",),
                      409: ("quote_stale", "quote_already_used"), 410: ("quote_expired",),
                      422: ("invalid_record", "invalid_domain", "quote_mismatch"),
                      502: ("provider_error", "tool_timeout"),
                      503: ("provider_not_configured",)},
              description="A zone changed since the quote answers 409 `quote_stale`. A"
              " provider refusing part way answers 200 with `status: partial`, the records"
              " applied and not applied, charged for those applied. A `dns.verify` job then"
              " queries the authoritative nameservers (`dns.status` on the domain)."),
]  # fmt: skip
