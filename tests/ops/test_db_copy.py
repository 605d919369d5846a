"""`toolcallstore db copy`: a stopped SQLite store holding every kind of object moves into an
empty Postgres database, verifies, and serves there with the same keys; a tampered target
fails `db verify`; a non-empty target is refused."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import requires_postgres, start_server, stop_server
from tests.ops.helpers import MASTER_KEY, cli, new_pg_database, populated_sqlite_store
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.errors import ConfigError
from toolcallstore.ops.copy import copy_store
from toolcallstore.ops.stores import pg_dsn, store_manifest, verify_store

# Every kind of object the issue names, by its table.
KINDS = ("tenants", "api_keys", "quotes", "approvals", "executions", "receipts",
         "ledger_entries", "holds", "jobs", "audit_log", "byok_keys", "spend_counters")  # fmt: skip


@requires_postgres
async def test_copy_verifies_then_the_server_runs_on_postgres_with_the_same_keys(
    tmp_path: Path,
) -> None:
    source, found = await populated_sqlite_store(tmp_path)
    target = await new_pg_database()
    copied = await asyncio.to_thread(cli, "--database-url", source, "db", "copy", "--to", target)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert "verified: the store matches" in copied.stdout
    assert "1 open holds carried over" in copied.stdout
    assert "1 queued or running jobs carried over" in copied.stdout
    assert "100%" in copied.stderr  # the progress bar, on stderr
    conn = await asyncpg.connect(pg_dsn(target))
    try:
        for table in KINDS:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") > 0, table
        # ids kept: the audit log's serial id continues after the copied rows.
        top = await conn.fetchval("SELECT max(id) FROM audit_log")
        assert await conn.fetchval("SELECT nextval('audit_log_id_seq')") == top + 1
    finally:
        await conn.close()

    with pytest.raises(ConfigError, match="the target database is not empty"):
        await copy_store(source, target)

    # Switch the URL and start: the same keys work, the queued job runs, new calls are paid.
    workdir = tmp_path / "pg"
    workdir.mkdir()
    server = await asyncio.to_thread(
        start_server, target, workdir, TOOLCALLSTORE_MASTER_KEY=MASTER_KEY,
        TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0",
    )  # fmt: skip
    try:
        assert server.admin_key == ""  # no second bootstrap: the copied tenant is there
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:

            def auth(key: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {key}"}

            for key in (found.admin_key, found.agent_key, found.other_tenant_key):
                assert (await client.get("/v1/me", headers=auth(key))).status_code == 200
            byok = await client.get("/v1/byok-keys", headers=auth(found.admin_key))
            assert byok.status_code == 200 and len(byok.json()["data"]) == 1
            deadline = time.monotonic() + 30
            while True:
                r = await client.get(f"/v1/executions/{found.queued_execution_id}",
                                     headers=auth(found.agent_key))  # fmt: skip
                if r.json()["status"] != "running":
                    break
                assert time.monotonic() < deadline, "the copied job did not run"
                await asyncio.sleep(0.1)
            assert r.json()["status"] == "succeeded", r.text
            r = await client.post(
                "/v1/executions",
                json={"tool": "sandbox.echo", "params": {"message": "on postgres"}},
                headers={**auth(found.other_tenant_key), "Idempotency-Key": "after-move"},
            )
            assert r.status_code == 200, r.text
    finally:
        await asyncio.to_thread(stop_server, server)
    after = await verify_store(target)
    assert after.ok, after.problems


@requires_postgres
async def test_a_tampered_target_fails_verify(tmp_path: Path) -> None:
    source, _ = await populated_sqlite_store(tmp_path)
    target = await new_pg_database()
    copied = await asyncio.to_thread(
        cli, "--database-url", source, "db", "copy", "--quiet", "--to", target
    )
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert copied.stderr == ""  # --quiet: no progress bar
    expected = await store_manifest(source)
    assert (await verify_store(target, expected)).ok

    conn = await asyncpg.connect(pg_dsn(target))
    try:
        charge = await conn.fetchval(
            "SELECT id FROM ledger_entries WHERE kind = 'charge' ORDER BY id LIMIT 1"
        )
        await conn.execute(
            "UPDATE ledger_entries SET amount_micros = amount_micros + 1 WHERE id = $1", charge
        )
        money = await asyncio.to_thread(cli, "db", "verify", target, "--against", source)
        assert money.returncode == 1
        assert "table ledger_entries: its rows' contents differ from the source" in money.stdout
        assert "the ledger charged" in money.stdout  # its spend counter no longer adds up
        await conn.execute(
            "UPDATE ledger_entries SET amount_micros = amount_micros - 1 WHERE id = $1", charge
        )
        assert (await verify_store(target, expected)).ok

        await conn.execute("UPDATE audit_log SET decision = 'allow', status = 200 WHERE seq = 2")
        await conn.execute("DELETE FROM holds WHERE state = 'open'")
        alone = await verify_store(target)  # no source to compare with
        assert "audit chain broken at seq 2: row content does not match its hash" in alone.problems
        assert any(p.endswith("open holds add up to 0") for p in alone.problems)
        against = await verify_store(target, expected)
        assert any(p.startswith("0 open holds of 0 micros, expected 1") for p in against.problems)
    finally:
        await conn.close()


async def test_copy_refuses_what_it_cannot_copy(tmp_path: Path) -> None:
    missing = await asyncio.to_thread(
        cli, "--database-url", f"sqlite:///{tmp_path / 'none.db'}", "db", "copy", "--to",
        "postgresql://postgres@127.0.0.1:1/x",
    )  # fmt: skip
    assert missing.returncode == 2 and "no SQLite store at" in missing.stderr
    assert "Traceback" not in missing.stderr
    with pytest.raises(ConfigError, match="postgresql://"):
        await copy_store(f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}")


@requires_postgres
async def test_a_copy_that_fails_leaves_the_target_empty_to_try_again(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'store.db'}"
    db = Database(source, readers=1)
    await db.connect()
    try:
        await migrate(db)
        async with db.transaction() as tx:  # a table no Postgres migration creates
            await tx.execute("CREATE TABLE local_notes (id TEXT PRIMARY KEY, body TEXT)")
            await tx.execute("INSERT INTO local_notes VALUES ('n1', 'hello')")
    finally:
        await db.disconnect()
    target = await new_pg_database()
    with pytest.raises(ConfigError, match="table local_notes has no counterpart"):
        await copy_store(source, target, quiet=True)
    conn = await asyncpg.connect(pg_dsn(target))
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            )
            == 0
        )
    finally:
        await conn.close()
    sqlite3.connect(tmp_path / "store.db").execute("DROP TABLE local_notes").connection.close()
    verdict = await copy_store(source, target, quiet=True)
    assert verdict.ok, verdict.problems
