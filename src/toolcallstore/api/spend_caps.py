"""Monthly spend caps and the approval threshold: `POST /v1/spend_caps`, `GET /v1/spend_caps`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import Principal, authenticated, require_scope, target_tenant
from toolcallstore.controls.spend import counters, period_of
from toolcallstore.db import Database, Row, Transaction
from toolcallstore.errors import NotFound
from toolcallstore.idempotency import optional_idempotency_key
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd, usd_to_micros
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import Operation
from toolcallstore.validation import Field, invalid, read_json_object, validate

CAP_FIELDS = {
    "tenant_id": Field(str, max_length=64),
    "project_id": Field(str, max_length=64),
    # Amounts are checked by hand below: null is meaningful there (it removes the limit).
    "monthly_cap_usd": Field(object),
    "approval_threshold_usd": Field(object),
}


def _billing_manager(request: Request) -> Principal:
    principal = authenticated(request)
    if not principal.has("admin"):
        require_scope(request, "billing:manage")
    return principal


def _amount(body: dict[str, Any], name: str) -> int | None:
    value = body[name]
    if value is None:
        return None
    try:
        return usd_to_micros(value)
    except ValueError as exc:
        raise invalid(name, f"'{name}' {exc}, or null for no limit.") from None


def cap_object(owner: Row, counter: Row | None, period: str, livemode: bool) -> dict[str, Any]:
    cap = owner["monthly_cap_micros"]
    spent = 0 if counter is None else int(counter["spent_micros"])
    held = 0 if counter is None else int(counter["held_micros"])
    is_tenant = owner["id"].startswith("ten_")
    obj: dict[str, Any] = {
        "object": "spend_cap",
        "owner": "tenant" if is_tenant else "project",
        "tenant_id": owner["id"] if is_tenant else owner["tenant_id"],
        "project_id": None if is_tenant else owner["id"],
        "monthly_cap_usd": None if cap is None else micros_to_usd(int(cap)),
        "period": period,
        "livemode": livemode,
        "spent_usd": micros_to_usd(spent),
        "held_usd": micros_to_usd(held),
        "remaining_usd": None if cap is None else micros_to_usd(max(int(cap) - spent - held, 0)),
    }
    if is_tenant:
        threshold = owner["approval_threshold_micros"]
        obj["approval_threshold_usd"] = None if threshold is None else micros_to_usd(threshold)
    return obj


async def _caps(db: Database, tenant_id: str, project_id: str | None, live: bool) -> list[Any]:
    owners = [await db.fetch_one("SELECT * FROM tenants WHERE id = :id", {"id": tenant_id})]
    where = "tenant_id = :t" + (" AND id = :p" if project_id else "")
    owners += await db.fetch_all(
        f"SELECT * FROM projects WHERE {where} ORDER BY id",
        {"t": tenant_id, **({"p": project_id} if project_id else {})},
    )
    period = period_of(now_us())
    found = await counters(db, [o["id"] for o in owners if o], period, live)
    return [cap_object(o, found.get(o["id"]), period, live) for o in owners if o is not None]


async def set_spend_cap(request: Request) -> Response:
    principal = _billing_manager(request)
    key = optional_idempotency_key(request)
    body = await read_json_object(request)
    fields = validate(body, CAP_FIELDS)
    tenant_id = target_tenant(request, principal, fields.get("tenant_id"))
    project_id = fields.get("project_id", principal.key.project_id)
    if principal.key.project_id not in (None, project_id):
        raise NotFound("No such project.", param="project_id")
    if "monthly_cap_usd" not in body and "approval_threshold_usd" not in body:
        raise invalid("monthly_cap_usd", "Send 'monthly_cap_usd' and/or 'approval_threshold_usd'.",
                      "missing_parameter")  # fmt: skip
    if project_id is not None and "approval_threshold_usd" in body:
        raise invalid("approval_threshold_usd", "The approval threshold is set on the tenant.")
    names = [n for n in ("monthly_cap_usd", "approval_threshold_usd") if n in body]
    changes: dict[str, int | None] = {name: _amount(body, name) for name in names}

    async def execute(tx: Transaction) -> tuple[int, Any]:
        table, owner_id = ("projects", project_id) if project_id else ("tenants", tenant_id)
        sets = ", ".join(f"{name.replace('_usd', '_micros')} = :{name}" for name in changes)
        extra = " AND tenant_id = :tenant" if project_id else ""
        updated = await tx.fetch_one(
            f"UPDATE {table} SET {sets} WHERE id = :id{extra} RETURNING id",
            {**changes, "id": owner_id, **({"tenant": tenant_id} if project_id else {})},
        )
        if updated is None:
            raise NotFound(f"No such {table[:-1]}.", param=f"{table[:-1]}_id")
        return 200, {}

    svc = services(request)
    if key is not None:
        response = await svc.idempotency.run(request, principal, key, body, execute)
        if response.status_code != 200:
            return response
    else:
        async with svc.db.transaction() as tx:
            await execute(tx)
    caps = await _caps(svc.db, tenant_id, project_id, principal.livemode)
    # The tenant's own cap comes first; with a project_id, that project's follows it.
    return JSONResponse(caps[-1] if project_id else caps[0])


async def list_spend_caps(request: Request) -> Response:
    principal = authenticated(request)
    if not principal.has("receipts:read"):
        _billing_manager(request)
    # A project key sees its tenant's row too: that cap applies to it as well.
    caps = await _caps(
        services(request).db, principal.tenant_id, principal.key.project_id, principal.livemode
    )
    return JSONResponse({"object": "list", "url": "/v1/spend_caps", "data": caps,
                         "has_more": False})  # fmt: skip


routes = [
    Route("/v1/spend_caps", set_spend_cap, methods=["POST"]),
    Route("/v1/spend_caps", list_spend_caps, methods=["GET"]),
]

operations = [
    Operation("POST", "/v1/spend_caps", "Set a monthly spend cap or approval threshold",
              "spend_caps", "billing:manage", body=CAP_FIELDS, idempotency="optional",
              responses={200: "SpendCap"}),
    Operation("GET", "/v1/spend_caps", "Caps with spent, held and remaining this month",
              "spend_caps", None, responses={200: "SpendCapList"}),
]  # fmt: skip
