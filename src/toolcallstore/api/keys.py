"""API keys: create (secret shown once), list, retrieve, revoke; and `/v1/me` for the caller.

No auto-escalation: a key grants only scopes it holds, a test key creates only test keys, a
project-bound key stays inside its project, and no key revokes one that holds more than it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import SCOPES, Principal, authenticated, require_scope, target_tenant
from toolcallstore.db import Transaction
from toolcallstore.db import keys as repo
from toolcallstore.db.keys import ApiKey
from toolcallstore.db.tenants import admin_refused, get_project, get_tenant, is_operator_tenant
from toolcallstore.errors import NotFound, PermissionDenied
from toolcallstore.idempotency import idempotency_key
from toolcallstore.money import usd_to_micros
from toolcallstore.objects import key_object, list_object
from toolcallstore.ratelimit import rate_limit_of
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, invalid, page_params, read_json_object, validate

KEY_FIELDS = {
    "name": Field(str),
    "scopes": Field(list, required=True, choices=frozenset(SCOPES), max_items=len(SCOPES)),
    "mode": Field(str, choices=frozenset({"live", "test"})),
    "project_id": Field(str, max_length=64),
    "tenant_id": Field(str, max_length=64),
    "auto_quote_max_usd": Field(object),
    # The key's own token bucket (admin keys only): requests per second, and burst.
    "rate_limit_per_s": Field(object),
    "rate_limit_burst": Field(int),
}


def _refuse(code: str, message: str, **details: Any) -> PermissionDenied:
    return PermissionDenied(message, code=code, **details)


def _grantable(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    """The new key's settings, or 403 if they would give it more than the caller has."""
    scopes = tuple(sorted(set(params["scopes"])))
    missing = [s for s in scopes if not principal.has(s)]
    if missing:
        raise _refuse(
            "insufficient_scope",
            f"A key cannot grant scopes it lacks: {', '.join(missing)}.",
            required_scope=missing[0],
            missing_scopes=missing,
        )
    mode = params.get("mode", principal.key.mode)
    if mode == "live" and not principal.livemode:
        raise _refuse("live_mode_forbidden", "A test-mode key cannot create live-mode keys.")
    project_id = params.get("project_id", principal.key.project_id)
    if principal.key.project_id not in (None, project_id):
        raise _refuse("project_forbidden", "A project key can only create keys for its project.")
    auto_quote = None
    if "auto_quote_max_usd" in params:
        try:
            auto_quote = usd_to_micros(params["auto_quote_max_usd"])
        except ValueError as exc:
            raise invalid("auto_quote_max_usd", f"'auto_quote_max_usd' {exc}.") from None
        ceiling = principal.key.auto_quote_max_micros
        if not principal.has("admin") and (ceiling is None or auto_quote > ceiling):
            raise _refuse(
                "auto_quote_forbidden",
                "A key cannot grant a higher 'auto_quote_max_usd' than its own.",
            )
    rate, burst = rate_limit_of(params)
    if (rate is not None or burst is not None) and not principal.has("admin"):
        raise _refuse(
            "rate_limit_forbidden",
            "Only an admin key can set a key's 'rate_limit_per_s' or 'rate_limit_burst'.",
        )
    return {"scopes": scopes, "mode": mode, "project_id": project_id, "auto_quote": auto_quote,
            "rate": rate, "burst": burst}  # fmt: skip


async def create_key(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    key = idempotency_key(request)
    body = await read_json_object(request)
    params = validate(body, KEY_FIELDS)
    tenant_id = target_tenant(request, principal, params.get("tenant_id"))
    grant = _grantable(principal, params)

    async def execute(tx: Transaction) -> tuple[int, Any]:
        if tenant_id != principal.tenant_id and await get_tenant(tx, tenant_id) is None:
            raise NotFound("No such tenant.", param="tenant_id")
        if "admin" in grant["scopes"] and not await is_operator_tenant(tx, tenant_id):
            raise _refuse("admin_scope_forbidden", admin_refused(tenant_id), param="scopes")
        project_id = grant["project_id"]
        if project_id is not None and await get_project(tx, tenant_id, project_id) is None:
            raise NotFound("No such project.", param="project_id")
        created, secret = await repo.insert_key(
            tx,
            tenant_id=tenant_id,
            project_id=project_id,
            name=params.get("name", ""),
            mode=grant["mode"],
            scopes=grant["scopes"],
            auto_quote_max_micros=grant["auto_quote"],
            created_by_key_id=principal.key_id,
            rate_limit_per_s=grant["rate"],
            rate_limit_burst=grant["burst"],
        )
        return 200, key_object(created, secret)

    return await services(request).idempotency.run(
        request, principal, key, body, execute, redact=_without_secret
    )


def _without_secret(body: dict[str, Any]) -> dict[str, Any]:
    # Replays return the key without its secret: secrets are shown once and never stored.
    return {**body, "secret": None} if "secret" in body else body


def _sees(principal: Principal, key: ApiKey) -> bool:
    """A project key sees its project's keys; a test key sees no live key."""
    if not principal.livemode and key.mode == "live":
        return False
    return principal.key.project_id in (None, key.project_id)


def _visible(principal: Principal, key: ApiKey | None) -> ApiKey:
    if key is None or not _sees(principal, key):
        raise NotFound("No such API key.", param="key_id")
    return key


async def list_keys(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    page = page_params(request)
    found, has_more = await repo.list_keys(
        services(request).db,
        principal.tenant_id,
        limit=page.limit,
        starting_after=page.starting_after,
    )
    data = [key_object(k) for k in found if _sees(principal, k)]
    return JSONResponse(list_object(data, has_more, "/v1/keys"))


async def get_key(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    db, key_id = services(request).db, request.path_params["key_id"]
    found = await repo.get_key(db, principal.tenant_id, key_id)
    if found is None and principal.has("admin") and principal.key.project_id is None:
        found = await repo.find_key(db, key_id)  # made for another tenant (tenant_id)
    return JSONResponse(key_object(_visible(principal, found)))


async def revoke_key(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    key_id = request.path_params["key_id"]
    svc = services(request)
    async with svc.db.transaction() as tx:
        target = _visible(principal, await repo.get_key(tx, principal.tenant_id, key_id))
        if target.id != principal.key_id and not set(target.scopes) <= set(principal.key.scopes):
            raise _refuse(
                "insufficient_scope", "A key cannot revoke a key that holds scopes it lacks."
            )
        revoked = await repo.revoke_key(tx, principal.tenant_id, key_id)
    svc.keys.forget(key_id)
    assert revoked is not None
    return JSONResponse(key_object(revoked))


async def me(request: Request) -> Response:
    return JSONResponse(key_object(authenticated(request).key))


routes = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{key_id}", get_key, methods=["GET"]),
    Route("/v1/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/v1/me", me, methods=["GET"]),
]

operations = [
    Operation("POST", "/v1/keys", "Create an API key (its secret is shown once)", "keys",
              "keys:manage", body=KEY_FIELDS, idempotency="required", responses={200: "ApiKey"},
              errors={403: ("live_mode_forbidden", "project_forbidden", "auto_quote_forbidden",
                            "rate_limit_forbidden", "admin_scope_forbidden"),
                      404: ("not_found",)}),
    Operation("GET", "/v1/keys", "List API keys", "keys", "keys:manage", query=PAGE_QUERY,
              responses={200: "ApiKeyList"}),
    Operation("GET", "/v1/keys/{key_id}", "An API key", "keys", "keys:manage",
              responses={200: "ApiKey"}),
    Operation("POST", "/v1/keys/{key_id}/revoke", "Revoke an API key", "keys", "keys:manage",
              responses={200: "ApiKey"}),
    Operation("GET", "/v1/me", "The calling key", "keys", None, responses={200: "Me"}),
]  # fmt: skip
