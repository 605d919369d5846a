"""Bring-your-own provider keys: `POST/GET/DELETE /v1/byok-keys` (DESIGN §7, BYOK).

Scope `keys:manage`: a provider key is a credential like an API key, and whoever may mint the
tenant's API keys already controls what its calls can do. Writes need a tenant-wide key, since
a stored key changes how every project of the tenant is routed and billed.

The plaintext key is read from the body, encrypted, and forgotten: it is never echoed in an
error, never part of the stored idempotent response (only `last4` is), and the idempotency
fingerprint sees a keyed digest of it, not the key.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, require_scope
from toolcallstore.byok import (
    ENV_NAME,
    ByokKey,
    Keyring,
    delete_key,
    get_key,
    list_keys,
    store_key,
)
from toolcallstore.db import SyncTransaction
from toolcallstore.errors import NotFound, PermissionDenied, Unavailable
from toolcallstore.idempotency import idempotency_key
from toolcallstore.objects import list_object
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, invalid, page_params, read_json_object, validate

MIN_KEY, MAX_KEY = 8, 500
BYOK_FIELDS = {
    "provider": Field(str, required=True, max_length=64),
    "key": Field(object, required=True),  # checked by `_checked_key`, which never echoes it
}


def byok_object(key: ByokKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "object": "byok_key",
        "provider": key.provider,
        "last4": key.last4,
        "created": key.created_at // 1_000_000,
    }


def _keyring(request: Request) -> Keyring:
    keyring = services(request).keyring
    if keyring is None:
        raise Unavailable(
            f"Bring-your-own keys are not enabled on this server: the operator must set "
            f"{ENV_NAME} (a 32-byte base64 AES key) and restart.",
            code="byok_unavailable",
        )
    return keyring


def _tenant_wide(principal: Principal) -> None:
    if principal.key.project_id is not None:
        raise PermissionDenied(
            "A project key cannot change the tenant's provider keys; use a tenant-wide key.",
            code="project_forbidden",
        )


def _checked_provider(request: Request, provider: str) -> str:
    # Never echo the value: a caller who swapped the fields would see their key in the reply.
    known = sorted({m.target.provider for m in services(request).lanes.models.values()})
    if provider not in known:
        raise invalid("provider", f"Unknown 'provider'; use one of: {', '.join(known)}.")
    return provider


def _checked_key(value: object) -> str:
    if (
        not isinstance(value, str)
        or not MIN_KEY <= len(value) <= MAX_KEY
        or not all(33 <= ord(c) <= 126 for c in value)
    ):
        raise invalid(
            "key",
            f"'key' must be {MIN_KEY}-{MAX_KEY} printable ASCII characters without spaces.",
        )
    return value


async def create_byok_key(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    keyring = _keyring(request)
    _tenant_wide(principal)
    idem = idempotency_key(request)
    params = validate(await read_json_object(request), BYOK_FIELDS)
    provider = _checked_provider(request, params["provider"])
    plaintext = _checked_key(params["key"])
    fingerprinted = {"provider": provider, "key": keyring.fingerprint(plaintext)}

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        stored = store_key(tx, keyring, principal.tenant_id, provider, plaintext)
        return 200, byok_object(stored)

    svc = services(request)
    try:
        return await svc.idempotency.run_sync(request, principal, idem, fingerprinted, execute)
    finally:
        keyring.forget(principal.tenant_id)  # after COMMIT: no process-local stale key


async def list_byok_keys(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    page = page_params(request)
    found, has_more = await list_keys(
        services(request).db,
        principal.tenant_id,
        limit=page.limit,
        starting_after=page.starting_after,
    )
    data = [byok_object(k) for k in found]
    return JSONResponse(list_object(data, has_more, "/v1/byok-keys"))


async def get_byok_key(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    byok_id = request.path_params["byok_id"]
    found = await get_key(services(request).db, principal.tenant_id, byok_id)
    if found is None:
        raise NotFound("No such BYOK key.", param="byok_id")
    return JSONResponse(byok_object(found))


async def delete_byok_key(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    _tenant_wide(principal)
    svc = services(request)
    byok_id = request.path_params["byok_id"]
    deleted = await svc.db.run_sync(delete_key, principal.tenant_id, byok_id)
    if svc.keyring is not None:
        svc.keyring.forget(principal.tenant_id)
    if deleted is None:
        raise NotFound("No such BYOK key.", param="byok_id")
    return JSONResponse({"id": deleted.id, "object": "byok_key", "deleted": True})


routes = [
    Route("/v1/byok-keys", create_byok_key, methods=["POST"]),
    Route("/v1/byok-keys", list_byok_keys, methods=["GET"]),
    Route("/v1/byok-keys/{byok_id}", get_byok_key, methods=["GET"]),
    Route("/v1/byok-keys/{byok_id}", delete_byok_key, methods=["DELETE"]),
]

operations = [
    Operation("POST", "/v1/byok-keys", "Store a provider key of your own (AES-256-GCM; only"
              " last4 is ever shown)", "byok", "keys:manage", body=BYOK_FIELDS,
              idempotency="required", responses={200: "ByokKey"},
              errors={403: ("project_forbidden",), 503: ("byok_unavailable",)}),
    Operation("GET", "/v1/byok-keys", "List your provider keys", "byok", "keys:manage",
              query=PAGE_QUERY, responses={200: "ByokKeyList"},
              errors={403: ("project_forbidden",), 503: ("byok_unavailable",)}),
    Operation("GET", "/v1/byok-keys/{byok_id}", "A provider key", "byok", "keys:manage",
              responses={200: "ByokKey"},
              errors={403: ("project_forbidden",), 503: ("byok_unavailable",)}),
    Operation("DELETE", "/v1/byok-keys/{byok_id}", "Delete a provider key", "byok",
              "keys:manage", responses={200: "Deleted"},
              errors={403: ("project_forbidden",), 503: ("byok_unavailable",)}),
]  # fmt: skip
