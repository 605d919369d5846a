"""Tenants and their projects."""

from __future__ import annotations

from toolcallstore.db.database import Database, Row, Transaction
from toolcallstore.db.pages import Page, fetch_page
from toolcallstore.ids import new_id, now_us


async def insert_tenant(tx: Transaction, name: str) -> Row:
    row = {"id": new_id("ten"), "name": name, "created_at": now_us()}
    await tx.execute(
        "INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, :created_at)", row
    )
    return row


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
