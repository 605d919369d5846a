"""Events: `GET /v1/events[?type=]`, `GET /v1/events/{id}` with its deliveries and their
attempts, `POST /v1/events/{id}/redeliver {endpoint_id?}` (scope `webhooks:manage`; a key sees
its mode's events)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, require_scope
from toolcallstore.db import SyncTransaction
from toolcallstore.errors import PermissionDenied
from toolcallstore.idempotency import idempotency_key
from toolcallstore.objects import list_object
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, page_params, read_json_object, validate
from toolcallstore.webhooks.deliveries import (
    event_deliveries,
    event_object,
    get_event,
    list_events,
    redeliver_event,
)

REDELIVER_FIELDS = {"endpoint_id": Field(str, max_length=64)}


def _reader(request: Request) -> Principal:
    principal = require_scope(request, "webhooks:manage")
    if principal.key.project_id is not None:
        raise PermissionDenied(
            "Events belong to the tenant; use a tenant-wide key.", code="project_forbidden"
        )
    return principal


async def list_all(request: Request) -> Response:
    principal = _reader(request)
    page = page_params(request, extra=("type",))
    type_ = request.query_params.get("type")
    rows, has_more = await list_events(
        services(request).db, principal.tenant_id, principal.livemode, type_=type_,
        limit=page.limit, starting_after=page.starting_after,
    )  # fmt: skip
    return JSONResponse(list_object([event_object(r) for r in rows], has_more, "/v1/events"))


async def retrieve(request: Request) -> Response:
    principal = _reader(request)
    db = services(request).db
    row = await get_event(db, principal.tenant_id, principal.livemode,
                          request.path_params["event_id"])  # fmt: skip
    return JSONResponse({**event_object(row), "deliveries": await event_deliveries(db, row["id"])})


async def redeliver(request: Request) -> Response:
    principal = _reader(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    params = validate(body, REDELIVER_FIELDS)
    event_id = request.path_params["event_id"]
    svc = services(request)

    def execute(tx: SyncTransaction) -> tuple[int, Any]:
        ids = redeliver_event(tx, principal.tenant_id, principal.livemode, event_id,
                              params.get("endpoint_id"))  # fmt: skip
        return 202, {"object": "redelivery", "event_id": event_id, "delivery_ids": ids}

    answer = await svc.idempotency.run_sync(request, principal, key, body, execute)
    svc.jobs.wake()
    return answer


routes = [
    Route("/v1/events", list_all, methods=["GET"]),
    Route("/v1/events/{event_id}", retrieve, methods=["GET"]),
    Route("/v1/events/{event_id}/redeliver", redeliver, methods=["POST"]),
]

_FORBIDDEN = {403: ("project_forbidden",)}
operations = [
    Operation("GET", "/v1/events", "Events of the key's mode, newest first (`?type=`: one"
              " event type)", "webhooks", "webhooks:manage",
              query={**PAGE_QUERY, "type": Field(str, max_length=100)},
              responses={200: "EventList"}, errors=_FORBIDDEN),
    Operation("GET", "/v1/events/{event_id}", "An event with its deliveries and their"
              " attempts", "webhooks", "webhooks:manage", responses={200: "Event"},
              errors=_FORBIDDEN),
    Operation("POST", "/v1/events/{event_id}/redeliver", "Deliver an event again: to one"
              " endpoint, or to every enabled endpoint subscribed to its type", "webhooks",
              "webhooks:manage", body=REDELIVER_FIELDS, idempotency="required",
              responses={202: "Redelivery"}, errors=_FORBIDDEN),
]  # fmt: skip
