"""Mail: `POST/GET /v1/email/domains[/{domain}]` (setup, a job) and
`POST/GET/DELETE /v1/email/mailboxes[/{id}]`, `POST .../{id}/reset-password`.

Both creations are the tools `email.domain.setup` and `email.mailbox.create` run under every
control (quote, approval, hold, receipt); refusals a caller can fix (a domain not held, an
address outside a set-up domain, a taken address) come first and are not stored. A password is
in the answer that made it and nowhere else: the stored replay has `"password": null`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, require_scope
from toolcallstore.context import context_of
from toolcallstore.controls.calls import Opened, Plan, open_call, plan_from_quote, plan_inline
from toolcallstore.controls.executions import Origin, close_execution, outcome_response, run_tool
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import APIError, NotFound, StateConflict, Unavailable
from toolcallstore.idempotency import (
    UNSTORED_STATUSES,
    KeyClaim,
    claim_in,
    idempotency_key,
    release_claim,
    replay_response,
    store_response,
)
from toolcallstore.ids import now_us
from toolcallstore.mail import store
from toolcallstore.mail.objects import domain_object, mailbox_object
from toolcallstore.mail.tools import (
    CREATE,
    SETUP,
    MailTools,
    check_domain,
    mailbox_exists,
    not_set_up,
    parse_create,
)
from toolcallstore.objects import list_object
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.tools import Outcome, ToolCall
from toolcallstore.tools.registry import CostlyFailure
from toolcallstore.validation import Field, page_params, read_json_object, validate

SCOPE = "email:provision"
CALL_FIELDS = {
    "quote_id": Field(str, max_length=64),
    "approval_id": Field(str, max_length=64),
    "project_id": Field(str, max_length=64),
}
DOMAIN_FIELDS = {"domain": Field(str, required=True, max_length=253), **CALL_FIELDS}
MAILBOX_FIELDS = {
    "address": Field(str, required=True, max_length=254),
    "display_name": Field(str, max_length=200),
    "quota_mb": Field(int),
    **CALL_FIELDS,
}


def _mail(request: Request) -> MailTools:
    mail = services(request).mail
    if mail is None:
        raise Unavailable("Mail is not configured on this server.", code="provider_not_configured")
    return mail


async def _plan(request: Request, principal: Principal, fields: dict[str, Any], tool: str,
                params: dict[str, Any]) -> Plan:  # fmt: skip
    f: dict[str, Any] = {"tool": tool, "params": params}
    if "quote_id" in fields:
        f.update({k: fields[k] for k in ("quote_id", "approval_id") if k in fields})
        if "project_id" in fields:
            f["project_id"] = fields["project_id"]
        return await plan_from_quote(request, principal, f)
    if "approval_id" in fields:
        f["approval_id"] = fields["approval_id"]
    return plan_inline(
        request,
        principal,
        {**f, **({"project_id": fields["project_id"]} if "project_id" in fields else {})},
    )


async def _same_request(request: Request, execution_id: str, principal: Principal, key: str
                        ) -> bool:  # fmt: skip
    """Whether `execution_id` was opened by this key and Idempotency-Key (a replay)."""
    row = await services(request).db.fetch_one(
        "SELECT api_key_id, idempotency_key FROM executions WHERE id = :id", {"id": execution_id}
    )
    return row is not None and (row["api_key_id"], row["idempotency_key"]) == (
        principal.key_id,
        key,
    )


def _origin(request: Request, principal: Principal, key: str) -> Origin:
    ctx = context_of(request)
    return Origin(ctx.request_id, principal.key_id, ctx.ip, path=request.url.path,
                  idempotency_key=key)  # fmt: skip


async def create_domain(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, DOMAIN_FIELDS)
    name = check_domain(fields["domain"])
    mail, svc = _mail(request), services(request)
    if not await mail.dns.held(tenant_id=principal.tenant_id, livemode=principal.livemode,
                               name=name, project_id=principal.key.project_id):  # fmt: skip
        raise NotFound(f"You hold no domain {name}: register it first (domains).",
                       param="domain")  # fmt: skip
    existing = await store.find_domain(svc.db, principal.tenant_id, principal.livemode, name)
    if (
        existing is not None
        and existing["execution_state"] != "failed"
        and not await _same_request(request, existing["execution_id"], principal, key)
    ):
        raise StateConflict(f"Mail for {name} is already set up (or being set up).",
                            code="mail_domain_exists", param="domain")  # fmt: skip
    plan = await _plan(request, principal, fields, SETUP, {"domain": name})
    claim = svc.idempotency.claim_for(request, principal, key, body)
    origin = _origin(request, principal, key)
    opened = await svc.db.run_sync(open_call, svc, principal, plan, origin, claim)
    if not isinstance(opened, Opened):
        return replay_response(opened, request)
    assert opened.answer is not None
    context_of(request).quote_id = opened.quote.id
    svc.jobs.wake()
    return JSONResponse(opened.answer, status_code=202,
                        headers={"ToolCall-Quote-Id": opened.quote.id})  # fmt: skip


async def _refreshed(mail: MailTools, row: Row) -> Row:
    """A domain still verifying, with its DNS change's latest status."""
    if row["state"] != "publishing" or row["dns_change_id"] is None:
        return row
    status = await mail.dns.status(row["dns_change_id"])
    state = status.get("status")
    changes: dict[str, Any] = {"dns_status": state, "missing": status.get("missing", [])}
    if state == "verified":
        changes.update(state="active", missing=[])
    updated = await store.update_domain(mail.svc.db, row["id"], **changes)
    return {**updated, "execution_state": row["execution_state"]}


def _visible(principal: Principal, row: Row | None) -> bool:
    return row is not None and principal.key.project_id in (None, row["project_id"])


async def retrieve_domain(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    mail = _mail(request)
    name = check_domain(request.path_params["domain"])
    row = await store.find_domain(mail.svc.db, principal.tenant_id, principal.livemode, name)
    if row is None or not _visible(principal, row):
        raise NotFound("No such mail domain.", param="domain")
    return JSONResponse(domain_object(await _refreshed(mail, row)))


async def list_domains(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    page = page_params(request)
    rows = await store.list_domains(services(request).db, principal.tenant_id,
                                    principal.livemode, limit=page.limit,
                                    starting_after=page.starting_after)  # fmt: skip
    seen = [domain_object(r) for r in rows[: page.limit] if _visible(principal, r)]
    return JSONResponse(list_object(seen, len(rows) > page.limit, request.url.path))


async def create_mailbox(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    key = idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, MAILBOX_FIELDS)
    params = parse_create({k: fields[k] for k in ("address", "display_name", "quota_mb")
                           if k in fields})  # fmt: skip
    _mail(request)  # 503 before anything if mail is off
    svc = services(request)
    name = params["address"].partition("@")[2]
    domain = await store.find_domain(svc.db, principal.tenant_id, principal.livemode, name)
    # Another project's mail domain is, to a key bound to a project, one not set up.
    if domain is None or not _visible(principal, domain) or domain["state"] not in store.SET_UP:
        raise not_set_up(name)
    taken = await store.active_mailbox(svc.db, principal.livemode, params["address"])
    if taken is not None and not await _same_request(request, taken["execution_id"], principal,
                                                     key):  # fmt: skip
        raise mailbox_exists(params["address"])
    plan = await _plan(request, principal, fields, CREATE, params)
    claim = svc.idempotency.claim_for(request, principal, key, body)
    origin = _origin(request, principal, key)
    opened = await svc.db.run_sync(open_call, svc, principal, plan, origin, claim)
    if not isinstance(opened, Opened):
        return replay_response(opened, request)
    quote, execution = opened.quote, opened.execution
    call = ToolCall(execution["id"], quote.tenant_id, quote.project_id, quote.livemode,
                    quote.params, quote.estimate)  # fmt: skip
    result = await run_tool(plan.tool, call)
    done, status, content = await svc.db.run_sync(_close_mailbox, execution, origin, claim,
                                                  result)  # fmt: skip
    headers = {"ToolCall-Quote-Id": quote.id, "ToolCall-Receipt-Id": done["receipt_id"]}
    if isinstance(result, Outcome) and status == 200:
        content = {**content, **result.once}  # this answer only
    ctx = context_of(request)
    ctx.quote_id, ctx.receipt_id, ctx.cost_micros = (
        quote.id,
        done["receipt_id"],
        done["price_micros"],
    )
    return JSONResponse(content, status_code=status, headers=headers)


def _close_mailbox(
    tx: SyncTransaction, execution: Row, origin: Origin, claim: KeyClaim,
    result: Outcome | APIError,
) -> tuple[Row, int, dict[str, Any]]:  # fmt: skip
    if isinstance(result, APIError):
        spent = result.outcome if isinstance(result, CostlyFailure) else None
        done = close_execution(tx, execution, origin, error=result, outcome=spent)
    else:
        done = close_execution(tx, execution, origin, outcome=result)
    if done is None:  # the sweep closed it first (the hold expired): it stored the answer
        raise StateConflict("The call was interrupted.", code="execution_interrupted")
    status: int
    content: dict[str, Any]
    if done["state"] == "succeeded":
        status = 200
        content = {**orjson.loads(done["result"]), "receipt_id": done["receipt_id"],
                   "password": None}  # fmt: skip
    elif isinstance(result, APIError) and result.status in (409, 422):
        status, content = result.status, result.envelope(done["request_id"])
        content["error"].update(execution_id=done["id"], receipt_id=done["receipt_id"])
    else:
        status, content = outcome_response(done)
    store_response(tx, claim.api_key_id, claim.key, status, content)
    return done, status, content


async def _own_mailbox(request: Request, principal: Principal) -> Row:
    row = await store.get_mailbox(services(request).db, principal.tenant_id, principal.livemode,
                                  request.path_params["mailbox_id"])  # fmt: skip
    if row is None or not _visible(principal, row):
        raise NotFound("No such mailbox.", param="mailbox_id")
    return row


async def retrieve_mailbox(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    return JSONResponse(mailbox_object(await _own_mailbox(request, principal)))


async def list_mailboxes(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    page = page_params(request)
    after = "" if page.starting_after is None else " AND id < :after"
    key_project = principal.key.project_id
    project = "" if key_project is None else " AND project_id = :project"
    rows = await services(request).db.fetch_all(
        f"SELECT * FROM mailboxes WHERE tenant_id = :t AND livemode = :l{after}{project}"
        " ORDER BY id DESC LIMIT :n",
        {"t": principal.tenant_id, "l": int(principal.livemode), "after": page.starting_after,
         "project": key_project, "n": page.limit + 1},
    )  # fmt: skip
    data = [mailbox_object(r) for r in rows[: page.limit]]
    return JSONResponse(list_object(data, len(rows) > page.limit, request.url.path))


async def delete_mailbox(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    mail = _mail(request)
    row = await _own_mailbox(request, principal)
    if row["state"] == "deleted":
        return JSONResponse(mailbox_object(row))
    domain = await store.mailbox_domain(mail.svc.db, row)
    provider, _ = mail.provider(principal.livemode)
    await provider.delete_account(store.open_admin(mail.keyring(), domain),
                                  row["stalwart_account_id"])  # fmt: skip
    deleted = await _write(
        mail.svc.db,
        "UPDATE mailboxes SET state = 'deleted', deleted_at = :now WHERE id = :id RETURNING *",
        row["id"],
    )
    assert deleted is not None
    return JSONResponse(mailbox_object(deleted))


async def _write(db: Database, sql: str, mailbox_id: str) -> Row | None:
    def write(tx: SyncTransaction) -> Row | None:
        return tx.fetch_one(sql, {"now": now_us(), "id": mailbox_id})

    return await db.run_sync(write)


async def reset_password(request: Request) -> Response:
    principal = require_scope(request, SCOPE)
    key = idempotency_key(request)
    body = await read_json_object(request)
    validate(body, {})
    mail, svc = _mail(request), services(request)
    row = await _own_mailbox(request, principal)
    claim = svc.idempotency.claim_for(request, principal, key, body)
    replay = await svc.db.run_sync(claim_in, claim, svc.idempotency.lock_us)
    if replay is not None:
        return replay_response(replay, request)
    try:
        if row["state"] != "active":
            raise StateConflict("This mailbox is deleted.", code="mailbox_deleted")
        password = store.new_password()
        domain = await store.mailbox_domain(svc.db, row)
        provider, _ = mail.provider(principal.livemode)
        await provider.update_account(store.open_admin(mail.keyring(), domain),
                                      row["stalwart_account_id"], password=password)  # fmt: skip
        updated = await _write(
            svc.db,
            "UPDATE mailboxes SET password_set_at = :now WHERE id = :id RETURNING *",
            row["id"],
        )
    except APIError as error:
        if error.status in UNSTORED_STATUSES:
            await svc.db.run_sync(release_claim, claim)
            raise
        status, content = await svc.idempotency.store_failure(claim, error)
        return JSONResponse(content, status_code=status)
    assert updated is not None
    answer = {**mailbox_object(updated), "password": None}
    await svc.db.run_sync(store_response, claim.api_key_id, claim.key, 200, answer)
    return JSONResponse({**answer, "password": password})


routes = [
    Route("/v1/email/domains", create_domain, methods=["POST"]),
    Route("/v1/email/domains", list_domains, methods=["GET"]),
    Route("/v1/email/domains/{domain}", retrieve_domain, methods=["GET"]),
    Route("/v1/email/mailboxes", create_mailbox, methods=["POST"]),
    Route("/v1/email/mailboxes", list_mailboxes, methods=["GET"]),
    Route("/v1/email/mailboxes/{mailbox_id}", retrieve_mailbox, methods=["GET"]),
    Route("/v1/email/mailboxes/{mailbox_id}", delete_mailbox, methods=["DELETE"]),
    Route("/v1/email/mailboxes/{mailbox_id}/reset-password", reset_password, methods=["POST"]),
]

_CALL_ERRORS = {403: ("quote_required", "approval_required"), 402: ("spend_cap_exceeded",),
                409: ("quote_already_used",), 410: ("quote_expired",),
                422: ("quote_mismatch",), 502: ("provider_error",),
                503: ("provider_not_configured",)}  # fmt: skip
operations = [
    Operation("POST", "/v1/email/domains", "Set a domain you hold up for mail (a job: Stalwart,"
              " DKIM, MX/SPF/DKIM/DMARC through DNS)", "email", SCOPE, body=DOMAIN_FIELDS,
              idempotency="required", responses={202: "Execution"},
              errors={**_CALL_ERRORS, 404: ("not_found",), 409: ("quote_already_used",
                      "mail_domain_exists")},
              description="Quote `email.domain.setup` first and have it approved; poll the"
              " execution or GET /v1/email/domains/{domain} for status and missing records."),
    Operation("GET", "/v1/email/domains", "Your mail domains", "email", SCOPE, query=PAGE_QUERY,
              responses={200: "MailDomainList"}),
    Operation("GET", "/v1/email/domains/{domain}", "A mail domain: status, records, what DNS"
              " still misses", "email", SCOPE, responses={200: "MailDomain"}),
    Operation("POST", "/v1/email/mailboxes", "Create a mailbox (its password is shown once)",
              "email", SCOPE, body=MAILBOX_FIELDS, idempotency="required",
              responses={200: "Mailbox"},
              errors={**_CALL_ERRORS, 409: ("quote_already_used", "mailbox_exists"),
                      422: ("quote_mismatch", "domain_not_set_up")},
              description="Quote `email.mailbox.create` (priced per month) and have it"
              " approved. A replay answers `password: null`: reset it if it was lost."),
    Operation("GET", "/v1/email/mailboxes", "Your mailboxes", "email", SCOPE, query=PAGE_QUERY,
              responses={200: "MailboxList"}),
    Operation("GET", "/v1/email/mailboxes/{mailbox_id}", "A mailbox", "email", SCOPE,
              responses={200: "Mailbox"}),
    Operation("DELETE", "/v1/email/mailboxes/{mailbox_id}", "Delete a mailbox (it is no longer"
              " charged)", "email", SCOPE, responses={200: "Mailbox"},
              errors={502: ("provider_error",)}),
    Operation("POST", "/v1/email/mailboxes/{mailbox_id}/reset-password", "A new password,"
              " shown once", "email", SCOPE, idempotency="required", responses={200: "Mailbox"},
              errors={409: ("mailbox_deleted",), 502: ("provider_error",)}),
]  # fmt: skip
