"""Operator keys, sign-in and the CSRF token of a page, for the /admin tests."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from tests.conftest import Api
from toolcallstore.db import Database
from toolcallstore.db.keys import insert_key
from toolcallstore.queue.store import NewJob

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def db_of(api: Api) -> Database:
    db: Database = api.app.state.services.db  # type: ignore[attr-defined]
    return db


async def execute(db: Database, sql: str, values: dict[str, Any] | None = None) -> None:
    async with db.transaction() as tx:
        await tx.execute(sql, values)


def refused(r: httpx.Response, status: int, code: str) -> None:
    """An error envelope with this status and code."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["request_id"].startswith("req_"), error


async def operator_tenant(db: Database) -> str:
    tenant: str = await db.fetch_val("SELECT id FROM tenants WHERE operator = 1 ORDER BY id")
    return tenant


async def new_key(db: Database, tenant_id: str, mode: str, scopes: tuple[str, ...]) -> str:
    async with db.transaction() as tx:
        _, secret = await insert_key(tx, tenant_id=tenant_id, project_id=None, name="ops",
                                     mode=mode, scopes=scopes)  # fmt: skip
    return secret


async def sign_in(client: httpx.AsyncClient, secret: str) -> httpx.Response:
    return await client.post("/admin/login", data={"key": secret})


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


def failing_job(tenant_id: str) -> NewJob:
    """A job that fails its first run and, given only one attempt, ends failed (dead)."""
    return NewJob("sandbox.record", {"fail_times": 1}, tenant_id=tenant_id, max_attempts=1)


async def wait_for_job(db: Database, job_id: str, state: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = await db.fetch_one("SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        if row is not None and row["state"] == state:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {state}: {dict(row) if row else None}")
