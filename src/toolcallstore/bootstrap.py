"""First start on an empty database: a default tenant and one admin test key, shown once."""

from __future__ import annotations

import os
from pathlib import Path

from toolcallstore.auth import SCOPES
from toolcallstore.db import Database
from toolcallstore.db.keys import insert_key
from toolcallstore.db.tenants import insert_tenant

_PG_BOOTSTRAP_LOCK = 7_463_021_002


async def bootstrap(db: Database, key_file: Path) -> tuple[str, str] | None:
    """Create the default tenant and admin key if there are no tenants; (tenant id, secret)."""
    async with db.transaction() as tx:
        if db.is_postgres:
            await tx.execute("SELECT pg_advisory_xact_lock(:key)", {"key": _PG_BOOTSTRAP_LOCK})
        if await tx.fetch_val("SELECT count(*) FROM tenants"):
            return None
        tenant = await insert_tenant(tx, "default", operator=True)
        _, secret = await insert_key(
            tx,
            tenant_id=tenant["id"],
            project_id=None,
            name="bootstrap admin (test mode)",
            mode="test",
            scopes=SCOPES,
        )
        write_secret_file(key_file, secret)
    return tenant["id"], secret


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` to `path` readable by its owner only (0600), replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)
