"""`toolcallstore backup` of a running server taking paid calls, and `restore` into an empty
place: the restored store's audit chain verifies and its spend counters equal its ledger."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_URL, Server, start_server, stop_server
from tests.ops.helpers import cli, new_pg_database
from toolcallstore.errors import ConfigError
from toolcallstore.ops.backup import backup, manifest_path, restore
from toolcallstore.ops.stores import Manifest, verify_store


async def _paid_calls(server: Server, key: str, stop: asyncio.Event, paid: list[int]) -> int:
    """Executions, back to back on 4 connections, until `stop`; `paid[0]` counts them."""

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            while not stop.is_set():
                r = await client.post(
                    "/v1/executions",
                    json={"tool": "sandbox.echo", "params": {"message": "load"}},
                    headers={"Authorization": f"Bearer {key}",
                             "Idempotency-Key": secrets.token_hex(8)},
                )  # fmt: skip
                assert r.status_code == 200, r.text
                paid[0] += 1

    await asyncio.gather(*(one_client() for _ in range(4)))
    return paid[0]


async def test_backup_under_write_load_restores_to_a_verified_store(
    database_url: str, tmp_path: Path
) -> None:
    # Access lines off: under load they would fill the server's unread stdout pipe.
    server = await asyncio.to_thread(start_server, database_url, tmp_path,
                                     TOOLCALLSTORE_ACCESS_LOG="false")  # fmt: skip
    try:
        await _backup_and_restore(server, database_url, tmp_path)
    finally:
        await asyncio.to_thread(stop_server, server)


async def _backup_and_restore(server: Server, database_url: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        r = await client.post(
            "/v1/keys", json={"scopes": ["llm:chat"], "auto_quote_max_usd": "1"},
            headers={"Authorization": f"Bearer {server.admin_key}", "Idempotency-Key": "k"},
        )  # fmt: skip
        key = r.json()["secret"]
    stop = asyncio.Event()
    paid = [0]
    load = asyncio.create_task(_paid_calls(server, key, stop, paid))
    try:
        while not load.done() and paid[0] < 20:
            await asyncio.sleep(0.05)
        dest = tmp_path / "backups" / "store.backup"
        env = {"TOOLCALLSTORE_DATABASE_URL": database_url}
        taken = await asyncio.to_thread(cli, "backup", str(dest), env=env)
        assert taken.returncode == 0, taken.stdout + taken.stderr
        during = paid[0]
    finally:
        stop.set()
        calls = await load
    assert calls > during >= 20  # calls were being paid for before, during and after it
    assert dest.stat().st_mode & 0o777 == 0o600
    assert manifest_path(dest).stat().st_mode & 0o777 == 0o600
    snapshot = Manifest.read(manifest_path(dest))
    assert snapshot.tables["receipts"].rows >= 20
    assert 0 < snapshot.tables["receipts"].rows < calls  # a moment under load, not the end

    with pytest.raises(ConfigError, match="already exists: back up to a new file"):
        await backup(database_url, dest)

    target = await new_pg_database() if PG_URL else f"sqlite:///{tmp_path / 'restored.db'}"
    restored = await asyncio.to_thread(cli, "restore", str(dest), "--to", target)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "audit chain intact" in restored.stdout
    assert "spend counters equal the ledger and the open holds" in restored.stdout
    assert "verified: the store matches" in restored.stdout
    verdict = await verify_store(target, snapshot)  # and checked again from here
    assert verdict.ok, verdict.problems

    with pytest.raises(ConfigError, match="not empty|already exists"):
        await restore(dest, target)


async def test_restore_refuses_a_tampered_or_foreign_backup(tmp_path: Path) -> None:
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a backup")
    Manifest("sqlite", 1).write(manifest_path(junk))
    r = await asyncio.to_thread(cli, "restore", str(junk), "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert r.returncode == 2 and "neither an SQLite backup nor a pg_dump archive" in r.stderr
    assert "Traceback" not in r.stderr
    no_manifest = tmp_path / "lone.backup"
    no_manifest.write_bytes(b"SQLite format 3\x00")
    with pytest.raises(ConfigError, match="no manifest at"):
        await restore(no_manifest, f"sqlite:///{tmp_path / 'y.db'}")
