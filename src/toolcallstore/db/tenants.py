"""Tenants and their projects."""

from __future__ import annotations

from toolcallstore.db.database import Database, Row, Transaction
from toolcallstore.db.pages import Page, fetch_page
from toolcallstore.ids import new_id, now_us


async def insert_tenant(tx: Transaction, name: str, *, operator: bool = False) -> Row:
    """A tenant; `operator` only for the operator's own (the bootstrap tenant), whose keys alone
    may hold `admin`."""
    row = {"id": new_id("ten"), "name": name, "created_at": now_us(), "operator": int(operator)}
    await tx.execute(
        "INSERT INTO tenants (id, name, created_at, operator)"
        " VALUES (:id, :name, :created_at, :operator)",
        row,
    )
    return row


async def is_operator_tenant(db: Database | Transaction, tenant_id: str) -> bool:
    """Whether this tenant's keys may hold `admin` (the operator's scope)."""
    value = await db.fetch_val("SELECT operator FROM tenants WHERE id = :id", {"id": tenant_id})
    return bool(value)


async def make_operator_tenant(tx: Transaction, tenant_id: str) -> None:
    await tx.execute("UPDATE tenants SET operator = 1 WHERE id = :id", {"id": tenant_id})


def admin_refused(tenant_id: str) -> str:
    return (
        f"'admin' is the operator's scope: only keys of the operator's tenant may hold it, and"
        f" {tenant_id} is not the operator's. Give its keys the scopes they need (keys:manage,"
        f" billing:manage, webhooks:manage, ...)."
    )


async def get_tenant(db: Database | Transaction, tenant_id: str) -> Row | None:
    return await db.fetch_one("SELECT * FROM tenants WHERE id = :id", {"id": tenant_id})


async def list_tenants(db: Database, *, limit: int, starting_after: str | None) -> Page:
    return await fetch_page(db, "tenants", "1 = 1", {}, limit=limit, starting_after=starting_after)


async def insert_project(tx: Transaction, tenant_id: str, name: str) -> Row:
    row = {"id": new_id("proj"), "tenant_id": tenant_id, "name": name, "created_at": now_us()}
    await tx.execute(
        "INSERT INTO projects (id, tenant_id, name, created_at) "
        "VALUES (:id, :tenant_id, :name, :created_at)",
        row,
    )
    return row


async def get_project(db: Database | Transaction, tenant_id: str, project_id: str) -> Row | None:
    return await db.fetch_one(
        "SELECT * FROM projects WHERE id = :id AND tenant_id = :tenant_id",
        {"id": project_id, "tenant_id": tenant_id},
    )


async def find_project(db: Database | Transaction, project_id: str) -> Row | None:
    """A project of any tenant (for operators acting across tenants)."""
    return await db.fetch_one("SELECT * FROM projects WHERE id = :id", {"id": project_id})


async def list_projects(
    db: Database, tenant_id: str, *, limit: int, starting_after: str | None
) -> Page:
    return await fetch_page(
        db,
        "projects",
        "tenant_id = :tenant_id",
        {"tenant_id": tenant_id},
        limit=limit,
        starting_after=starting_after,
    )
