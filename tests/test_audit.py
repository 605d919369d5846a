import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Api, requires_postgres
from toolcallstore.audit import chain_hash, verify_chain
from toolcallstore.settings import Settings


async def _audit_rows(api: Api) -> list[dict]:
    svc = api.app.state.services  # type: ignore[attr-defined]
    await svc.audit.seal()  # flushed, and on Postgres chained
    return await svc.db.fetch_all("SELECT * FROM audit_log ORDER BY seq")


async def test_every_request_is_audited_allowed_or_denied(api: Api) -> None:
    ok = await api.client.get("/v1/me", headers=api.auth())
    anon = await api.client.get("/v1/keys")
    weak = await api.client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=api.idem())
    denied = await api.client.get("/v1/keys", headers=api.auth(weak.json()["secret"]))
    missing = await api.client.get("/v1/nothing-here", headers=api.auth())
    await api.client.get("/healthz")
    rows = {r["request_id"]: r for r in await _audit_rows(api)}
    ids = [r.headers["ToolCall-Request-Id"] for r in (ok, anon, weak, denied, missing)]
    assert all(i in rows for i in ids)
    assert rows[ids[0]]["decision"] == "allowed" and rows[ids[0]]["status"] == 200
    assert rows[ids[1]]["decision"] == "denied" and rows[ids[1]]["reason"] == "missing_api_key"
    assert rows[ids[1]]["status"] == 401 and rows[ids[1]]["api_key_id"] is None
    assert rows[ids[3]]["decision"] == "denied" and rows[ids[3]]["scope"] == "keys:manage"
    assert rows[ids[3]]["reason"] == "insufficient_scope:keys:manage"
    assert rows[ids[3]]["api_key_id"] == weak.json()["id"]
    assert rows[ids[4]]["status"] == 404 and rows[ids[4]]["path"] == "/v1/nothing-here"
    assert all(r["ip"] == "127.0.0.1" and r["latency_us"] >= 0 for r in rows.values())
    assert not any(r["path"] == "/healthz" for r in rows.values())
    # Secrets never reach the audit log.
    assert weak.json()["secret"] not in repr(rows) and api.admin_key not in repr(rows)


async def test_the_chain_verifies_and_finds_an_edited_row(api: Api) -> None:
    for _ in range(5):
        await api.client.get("/v1/me", headers=api.auth())
    rows = await _audit_rows(api)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    report = await verify_chain(db)
    assert report.ok and report.rows_checked == len(rows) >= 5
    async with db.transaction() as tx:
        await tx.execute("UPDATE audit_log SET status = 403 WHERE seq = 3")
        await tx.execute("UPDATE audit_log SET decision = 'denied' WHERE seq = 4")
    report = await verify_chain(db)
    assert not report.ok and report.broken_at == 3 and "hash" in (report.problem or "")


async def test_the_chain_finds_a_deleted_row_and_a_cut_tail(api: Api) -> None:
    for _ in range(6):
        await api.client.get("/v1/me", headers=api.auth())
    rows = await _audit_rows(api)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    last = rows[-1]["seq"]
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM audit_log WHERE seq = :s", {"s": last})
    report = await verify_chain(db)
    assert report.broken_at == last and "removed" in (report.problem or "")
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM audit_log WHERE seq = 2")
    report = await verify_chain(db)
    assert report.broken_at == 2 and "missing" in (report.problem or "")


async def test_a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link(api: Api) -> None:
    for _ in range(4):
        await api.client.get("/v1/me", headers=api.auth())
    rows = await _audit_rows(api)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    forged = dict(rows[1], status=500)
    forged_hash = chain_hash(forged["prev_hash"], forged)
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE audit_log SET status = 500, hash = :h WHERE seq = :s",
            {"h": forged_hash, "s": rows[1]["seq"]},
        )
    report = await verify_chain(db)
    assert report.broken_at == rows[2]["seq"] and "prev_hash" in (report.problem or "")


async def test_audit_verify_cli_exits_nonzero_on_tampering(api: Api, settings: Settings) -> None:
    await api.client.get("/v1/me", headers=api.auth())
    await api.client.get("/v1/me", headers=api.auth())
    await _audit_rows(api)
    env = {
        "TOOLCALLSTORE_DATABASE_URL": settings.database_url,
        "PATH": "",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }  # this checkout's code, if set
    cmd = [sys.executable, "-m", "toolcallstore", "audit", "verify"]
    # In a thread: the app under test shares the event loop and must keep running.
    ok = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    db = api.app.state.services.db  # type: ignore[attr-defined]
    async with db.transaction() as tx:
        await tx.execute("UPDATE audit_log SET ip = '10.0.0.1' WHERE seq = 1")
    bad = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "BROKEN at seq 1" in bad.stdout


async def test_concurrent_writers_keep_one_unbroken_chain(api: Api, settings: Settings) -> None:
    from tests.conftest import running_api

    async with running_api(settings) as other:
        await asyncio.gather(
            *(api.client.get("/v1/me", headers=api.auth()) for _ in range(40)),
            *(other.client.get("/v1/me", headers=other.auth()) for _ in range(40)),
        )
        await other.app.state.services.audit.flush()  # type: ignore[attr-defined]
        await other.app.state.services.audit.seal()  # type: ignore[attr-defined]
    rows = await _audit_rows(api)
    report = await verify_chain(api.app.state.services.db)  # type: ignore[attr-defined]
    assert report.ok and report.rows_checked == len(rows) >= 80


async def _insert_row(tx: Any, row: dict[str, Any]) -> None:
    """A forged row, written straight into the table (its own id and xid left to Postgres)."""
    columns = [c for c in row if c not in ("id", "xid")]
    await tx.execute(
        f"INSERT INTO audit_log ({', '.join(columns)})"
        f" VALUES ({', '.join(':' + c for c in columns)})",
        {c: row[c] for c in columns},
    )


async def test_an_inserted_row_breaks_the_chain_where_it_was_put(api: Api) -> None:
    for _ in range(4):
        await api.client.get("/v1/me", headers=api.auth())
    rows = await _audit_rows(api)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    # A forger shifts rows 3.. up by one and slips a row in at 3 whose prev_hash and hash
    # follow the rule: the chain still breaks, at the row after it.
    shifted = [dict(r, seq=r["seq"] + 1) for r in rows[2:]]
    forged = dict(rows[2], request_id="req_forged", seq=3, prev_hash=rows[1]["hash"])
    forged["hash"] = chain_hash(forged["prev_hash"], forged)
    async with db.transaction() as tx:
        for row in reversed(shifted):
            await tx.execute(
                "UPDATE audit_log SET seq = :new WHERE seq = :old",
                {"new": row["seq"], "old": row["seq"] - 1},
            )
        await _insert_row(tx, forged)
    report = await verify_chain(db)
    assert not report.ok and report.broken_at == 4 and "prev_hash" in (report.problem or "")


async def test_a_row_appended_past_the_head_is_found(api: Api) -> None:
    for _ in range(3):
        await api.client.get("/v1/me", headers=api.auth())
    rows = await _audit_rows(api)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    last = rows[-1]
    extra = dict(last, seq=last["seq"] + 1, prev_hash=last["hash"], request_id="req_extra")
    extra["hash"] = chain_hash(extra["prev_hash"], extra)
    async with db.transaction() as tx:
        await _insert_row(tx, extra)
    report = await verify_chain(db)
    assert report.broken_at == extra["seq"] and "added" in (report.problem or "")


async def test_two_rows_swapped_break_the_chain_at_the_first(api: Api) -> None:
    for _ in range(5):
        await api.client.get("/v1/me", headers=api.auth())
    rows = await _audit_rows(api)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    a, b = rows[1]["seq"], rows[2]["seq"]
    async with db.transaction() as tx:
        await tx.execute("UPDATE audit_log SET seq = -1 WHERE seq = :a", {"a": a})
        await tx.execute("UPDATE audit_log SET seq = :a WHERE seq = :b", {"a": a, "b": b})
        await tx.execute("UPDATE audit_log SET seq = :b WHERE seq = -1", {"b": b})
    report = await verify_chain(db)
    assert not report.ok and report.broken_at == a


@requires_postgres
async def test_a_row_is_never_sealed_ahead_of_an_older_open_transaction(api: Api) -> None:
    """Rows are chained in the order of the transactions that wrote them, and only once no
    older transaction can still commit: a late commit can never land before a sealed row."""
    from toolcallstore.audit import append_rows, seal

    svc = api.app.state.services  # type: ignore[attr-defined]
    await svc.audit.seal()
    db = svc.db

    def row(request_id: str) -> dict[str, object]:
        return {"ts": 1, "request_id": request_id, "method": "GET", "path": "/x",
                "decision": "allowed", "status": 200, "latency_us": 0}  # fmt: skip

    async def unsealed(request_id: str) -> bool:
        found = await db.fetch_val(
            "SELECT seq IS NULL FROM audit_log WHERE request_id = :r", {"r": request_id}
        )
        return bool(found)

    async with db.transaction() as older:  # writes first, commits last
        await older.execute("SELECT pg_current_xact_id()")
        await db.run_sync(lambda tx: append_rows(tx, [row("req_newer")]))
        await seal(db)
        assert await unsealed("req_newer")  # it waits for the older transaction
        await older.execute(
            "INSERT INTO audit_log (ts, request_id, method, path, decision, status, latency_us)"
            " VALUES (1, 'req_older', 'GET', '/x', 'allowed', 200, 0)"
        )
    await svc.audit.seal()
    sealed = await db.fetch_all(
        "SELECT request_id FROM audit_log WHERE request_id LIKE 'req_%er' ORDER BY seq"
    )
    assert [r["request_id"] for r in sealed] == ["req_older", "req_newer"]
    report = await verify_chain(db)
    assert report.ok and report.unsealed == 0


@pytest.mark.parametrize("rows", [3])
async def test_verify_reports_the_unsealed_tail(api: Api, rows: int) -> None:
    svc = api.app.state.services  # type: ignore[attr-defined]
    for _ in range(rows):
        await api.client.get("/v1/me", headers=api.auth())
    await svc.audit.flush()
    report = await verify_chain(svc.db)
    # SQLite chains as it writes; Postgres leaves the newest rows for the sealer.
    assert report.ok and report.rows_checked + report.unsealed >= rows
    if svc.db.is_postgres:
        assert report.unsealed >= rows
    await svc.audit.seal()
    report = await verify_chain(svc.db)
    assert report.ok and report.unsealed == 0
