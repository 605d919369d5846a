"""Webhook endpoints: `POST/GET/PATCH/DELETE /v1/webhook_endpoints`, `.../rotate_secret`,
`.../test` (scope `webhooks:manage`, tenant-wide keys; a key sees its mode's endpoints).

The signing secret is in the create and rotate answers only: their stored idempotent answers
carry `"secret": null`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, require_scope
from toolcallstore.byok import ENV_NAME, Keyring
from toolcallstore.db import SyncTransaction
from toolcallstore.errors import NotFound, PermissionDenied, StateConflict, Unavailable
from toolcallstore.idempotency import idempotency_key
from toolcallstore.objects import list_object
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, invalid, page_params, read_json_object, validate
from toolcallstore.webhooks import endpoints as repo
from toolcallstore.webhooks.deliveries import send_test_event
from toolcallstore.webhooks.endpoints import Endpoint
from toolcallstore.webhooks.guard import MAX_URL_LENGTH, url_problem

CREATE_FIELDS = {
    "url": Field(str, required=True, max_length=MAX_URL_LENGTH),
    "events": Field(list, required=True, max_length=100),
    "description": Field(str, max_length=500),
}
UPDATE_FIELDS = {
    "events": Field(list, max_length=100),
    "description": Field(str, max_length=500),
    "disabled": Field(bool),
}


def _seconds(us: int | None) -> int | None:
    return None if us is None else us // 1_000_000


def endpoint_object(endpoint: Endpoint, secret: str | None = None) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "description": endpoint.description,
        "events": endpoint.events,
        "livemode": endpoint.livemode,
        "status": "disabled" if endpoint.disabled else "enabled",
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": _seconds(endpoint.failing_since),
        "previous_secret_expires": _seconds(endpoint.previous_expires_at),
        "created": _seconds(endpoint.created_at),
        "secret": secret,
    }


def _without_secret(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "secret": None}


def _manager(request: Request) -> Principal:
    principal = require_scope(request, "webhooks:manage")
    if principal.key.project_id is not None:
        raise PermissionDenied(
            "Webhook endpoints belong to the tenant; use a tenant-wide key.",
            code="project_forbidden",
        )
    return principal


def _keyring(request: Request) -> Keyring:
    keyring = services(request).keyring
    if keyring is None:
        raise Unavailable(
            f"Webhooks are not enabled on this server: their signing secrets are stored"
            f" encrypted, and the operator must set {ENV_NAME} and restart.",
            code="webhooks_unavailable",
        )
    return keyring


def _checked_events(events: list[str]) -> list[str]:
    if not events:
        raise invalid("events", "'events' must list at least one event type, or '*'.")
    for i, pattern in enumerate(events):
        problem = repo.pattern_problem(pattern)
        if problem is not None:
            raise invalid(f"events[{i}]", f"'events[{i}]' {problem}.")
    return sorted(set(events))


async def create_endpoint(request: Request) -> Response:
    principal = _manager(request)
    keyring = _keyring(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    params = validate(body, CREATE_FIELDS)
    problem = url_problem(params["url"], livemode=principal.livemode)
    if problem is not None:
        raise invalid("url", f"'url' cannot receive webhooks: {problem}.", "url_not_allowed")
    events = _checked_events(params["events"])

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        created, secret = repo.create_endpoint(
            tx, keyring, principal.tenant_id, livemode=principal.livemode, url=params["url"],
            events=events, description=params.get("description", ""),
        )  # fmt: skip
        return 200, endpoint_object(created, secret)

    return await services(request).idempotency.run_sync(
        request, principal, key, body, execute, redact=_without_secret
    )


async def list_endpoints(request: Request) -> Response:
    principal = _manager(request)
    page = page_params(request)
    found, has_more = await repo.list_endpoints(
        services(request).db, principal.tenant_id, principal.livemode,
        limit=page.limit, starting_after=page.starting_after,
    )  # fmt: skip
    data = [endpoint_object(e) for e in found]
    return JSONResponse(list_object(data, has_more, "/v1/webhook_endpoints"))


def _found(endpoint: Endpoint | None) -> Endpoint:
    if endpoint is None:
        raise NotFound("No such webhook endpoint.", param="endpoint_id")
    return endpoint


async def get_endpoint(request: Request) -> Response:
    principal = _manager(request)
    endpoint_id = request.path_params["endpoint_id"]
    found = await repo.get_endpoint(
        services(request).db, principal.tenant_id, principal.livemode, endpoint_id
    )
    return JSONResponse(endpoint_object(_found(found)))


async def update_endpoint(request: Request) -> Response:
    principal = _manager(request)
    params = validate(await read_json_object(request), UPDATE_FIELDS)
    if "events" in params:
        params["events"] = _checked_events(params["events"])
    updated = await services(request).db.run_sync(
        repo.update_endpoint, principal.tenant_id, principal.livemode,
        request.path_params["endpoint_id"], params,
    )  # fmt: skip
    return JSONResponse(endpoint_object(_found(updated)))


async def delete_endpoint(request: Request) -> Response:
    principal = _manager(request)
    deleted = await services(request).db.run_sync(
        repo.delete_endpoint, principal.tenant_id, principal.livemode,
        request.path_params["endpoint_id"],
    )  # fmt: skip
    endpoint = _found(deleted)
    return JSONResponse({"id": endpoint.id, "object": "webhook_endpoint", "deleted": True})


async def rotate_secret(request: Request) -> Response:
    principal = _manager(request)
    keyring = _keyring(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    validate(body, {})
    endpoint_id = request.path_params["endpoint_id"]

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        rotated = repo.rotate_secret(
            tx, keyring, principal.tenant_id, principal.livemode, endpoint_id
        )
        if rotated is None:
            raise NotFound("No such webhook endpoint.", param="endpoint_id")
        return 200, endpoint_object(*rotated)

    return await services(request).idempotency.run_sync(
        request, principal, key, body, execute, redact=_without_secret
    )


async def send_test(request: Request) -> Response:
    principal = _manager(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    validate(body, {})
    svc = services(request)
    found = await repo.get_endpoint(
        svc.db, principal.tenant_id, principal.livemode, request.path_params["endpoint_id"]
    )
    endpoint = _found(found)
    if endpoint.disabled:
        raise StateConflict(
            'This endpoint is disabled; enable it (PATCH {"disabled": false}) to test it.',
            code="endpoint_disabled",
        )

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        event, delivery_id = send_test_event(tx, endpoint)
        return 202, {"object": "webhook_test", "event_id": event["id"],
                     "delivery_id": delivery_id, "endpoint_id": endpoint.id}  # fmt: skip

    answer = await svc.idempotency.run_sync(request, principal, key, body, execute)
    svc.jobs.wake()
    return answer


routes = [
    Route("/v1/webhook_endpoints", create_endpoint, methods=["POST"]),
    Route("/v1/webhook_endpoints", list_endpoints, methods=["GET"]),
    Route("/v1/webhook_endpoints/{endpoint_id}", get_endpoint, methods=["GET"]),
    Route("/v1/webhook_endpoints/{endpoint_id}", update_endpoint, methods=["PATCH"]),
    Route("/v1/webhook_endpoints/{endpoint_id}", delete_endpoint, methods=["DELETE"]),
    Route("/v1/webhook_endpoints/{endpoint_id}/rotate_secret", rotate_secret, methods=["POST"]),
    Route("/v1/webhook_endpoints/{endpoint_id}/test", send_test, methods=["POST"]),
]

_FORBIDDEN = {403: ("project_forbidden",)}
_SEALED = {**_FORBIDDEN, 503: ("webhooks_unavailable",)}  # secrets need the master key
operations = [
    Operation("POST", "/v1/webhook_endpoints", "Register a webhook endpoint (its signing secret"
              " is shown once)", "webhooks", "webhooks:manage", body=CREATE_FIELDS,
              idempotency="required", responses={200: "WebhookEndpoint"},
              errors={400: ("url_not_allowed", "webhook_endpoint_limit"), **_SEALED},
              description="`events` lists `*`, `<family>.*` or event types. Test-mode endpoints"
              " may use http and loopback; live ones need https to a public address."),
    Operation("GET", "/v1/webhook_endpoints", "List webhook endpoints of the key's mode",
              "webhooks", "webhooks:manage", query=PAGE_QUERY,
              responses={200: "WebhookEndpointList"}, errors=_FORBIDDEN),
    Operation("GET", "/v1/webhook_endpoints/{endpoint_id}", "A webhook endpoint", "webhooks",
              "webhooks:manage", responses={200: "WebhookEndpoint"}, errors=_FORBIDDEN),
    Operation("PATCH", "/v1/webhook_endpoints/{endpoint_id}", "Change its events or"
              " description, or disable or re-enable it", "webhooks", "webhooks:manage",
              body=UPDATE_FIELDS, responses={200: "WebhookEndpoint"}, errors=_FORBIDDEN),
    Operation("DELETE", "/v1/webhook_endpoints/{endpoint_id}", "Delete a webhook endpoint",
              "webhooks", "webhooks:manage", responses={200: "Deleted"}, errors=_FORBIDDEN),
    Operation("POST", "/v1/webhook_endpoints/{endpoint_id}/rotate_secret", "A new signing"
              " secret (shown once); the old one still verifies for 24 hours", "webhooks",
              "webhooks:manage", body={}, idempotency="required",
              responses={200: "WebhookEndpoint"}, errors=_SEALED),
    Operation("POST", "/v1/webhook_endpoints/{endpoint_id}/test", "Send a"
              " `webhook_endpoint.test` event to this endpoint", "webhooks", "webhooks:manage",
              body={}, idempotency="required", responses={202: "WebhookTest"},
              errors={**_FORBIDDEN, 409: ("endpoint_disabled",)}),
]  # fmt: skip
