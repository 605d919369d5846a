"""Tenants (operators only) and projects (inside the caller's tenant)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import require_scope, target_tenant
from toolcallstore.db import Transaction
from toolcallstore.db import tenants as repo
from toolcallstore.errors import NotFound
from toolcallstore.idempotency import idempotency_key
from toolcallstore.objects import list_object, project_object, tenant_object
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import PAGE_QUERY, Operation
from toolcallstore.validation import Field, page_params, read_json_object, validate

TENANT_FIELDS = {"name": Field(str, required=True)}
PROJECT_FIELDS = {"name": Field(str, required=True), "tenant_id": Field(str, max_length=64)}


async def create_tenant(request: Request) -> Response:
    principal = require_scope(request, "admin")
    key = idempotency_key(request)
    body = await read_json_object(request)
    params = validate(body, TENANT_FIELDS)

    async def execute(tx: Transaction) -> tuple[int, Any]:
        return 200, tenant_object(await repo.insert_tenant(tx, params["name"]))

    return await services(request).idempotency.run(request, principal, key, body, execute)


async def list_tenants(request: Request) -> Response:
    require_scope(request, "admin")
    page = page_params(request)
    found = await repo.list_tenants(
        services(request).db, limit=page.limit, starting_after=page.starting_after
    )
    data = [tenant_object(r) for r in found.rows]
    return JSONResponse(list_object(data, found.has_more, "/v1/tenants"))


async def get_tenant(request: Request) -> Response:
    require_scope(request, "admin")
    row = await repo.get_tenant(services(request).db, request.path_params["tenant_id"])
    if row is None:
        raise NotFound("No such tenant.", param="tenant_id")
    return JSONResponse(tenant_object(row))


async def create_project(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    key = idempotency_key(request)
    body = await read_json_object(request)
    params = validate(body, PROJECT_FIELDS)
    tenant_id = target_tenant(request, principal, params.get("tenant_id"))

    async def execute(tx: Transaction) -> tuple[int, Any]:
        if await repo.get_tenant(tx, tenant_id) is None:
            raise NotFound("No such tenant.", param="tenant_id")
        return 200, project_object(await repo.insert_project(tx, tenant_id, params["name"]))

    return await services(request).idempotency.run(request, principal, key, body, execute)


async def list_projects(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    page = page_params(request)
    found = await repo.list_projects(
        services(request).db,
        principal.tenant_id,
        limit=page.limit,
        starting_after=page.starting_after,
    )
    data = [project_object(r) for r in found.rows]
    if principal.key.project_id is not None:
        data = [p for p in data if p["id"] == principal.key.project_id]
    return JSONResponse(list_object(data, found.has_more, "/v1/projects"))


async def get_project(request: Request) -> Response:
    principal = require_scope(request, "keys:manage")
    project_id = request.path_params["project_id"]
    db = services(request).db
    row = await repo.get_project(db, principal.tenant_id, project_id)
    if row is None and principal.has("admin") and principal.key.project_id is None:
        row = await repo.find_project(db, project_id)  # made for another tenant (tenant_id)
    if row is None or principal.key.project_id not in (None, project_id):
        raise NotFound("No such project.", param="project_id")
    return JSONResponse(project_object(row))


routes = [
    Route("/v1/tenants", create_tenant, methods=["POST"]),
    Route("/v1/tenants", list_tenants, methods=["GET"]),
    Route("/v1/tenants/{tenant_id}", get_tenant, methods=["GET"]),
    Route("/v1/projects", create_project, methods=["POST"]),
    Route("/v1/projects", list_projects, methods=["GET"]),
    Route("/v1/projects/{project_id}", get_project, methods=["GET"]),
]

operations = [
    Operation("POST", "/v1/tenants", "Operator: create a tenant", "admin", "admin",
              body=TENANT_FIELDS, idempotency="required", responses={200: "Tenant"}),
    Operation("GET", "/v1/tenants", "Operator: list tenants", "admin", "admin",
              query=PAGE_QUERY, responses={200: "TenantList"}),
    Operation("GET", "/v1/tenants/{tenant_id}", "Operator: a tenant", "admin", "admin",
              responses={200: "Tenant"}),
    Operation("POST", "/v1/projects", "Create a project", "projects", "keys:manage",
              body=PROJECT_FIELDS, idempotency="required", responses={200: "Project"}),
    Operation("GET", "/v1/projects", "List projects", "projects", "keys:manage",
              query=PAGE_QUERY, responses={200: "ProjectList"}),
    Operation("GET", "/v1/projects/{project_id}", "A project", "projects", "keys:manage",
              responses={200: "Project"}),
]  # fmt: skip
