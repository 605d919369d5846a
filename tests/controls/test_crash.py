"""A crash (kill -9) between hold and settle leaves no permanently held money: after a restart
the hold expires or settles, and the ledger, receipts and counters agree."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, Server, kill_server, start_server, stop_server
from tests.controls.helpers import (
    IRREVERSIBLE_PRICE_MICROS,
    execute,
    ledger_agrees,
    make_key,
    quote,
)
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate

QUIET = {"TOOLCALLSTORE_ACCESS_LOG": "false", "TOOLCALLSTORE_JOB_POLL_MS": "200"}
# Both the killed and the restarted process get these: a hold's expiry and a job's lease are
# written by the process that takes them. The short lease also keeps a sweep job that the kill
# strands from blocking the next sweep (its unique key) for the default 30 s.
SYNC_ENV = {
    **QUIET,
    "TOOLCALLSTORE_HOLD_GRACE_SECONDS": "1",  # sandbox.echo: 5 s timeout + 1 s grace
    "TOOLCALLSTORE_HOLD_SWEEP_SECONDS": "1",
    "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2",
}
JOB_ENV = {**QUIET, "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2"}
AGENT_SCOPES = ["quotes:create", "domains:register", "receipts:read", "jobs:read"]
OPEN_HOLDS = "SELECT count(*) FROM holds WHERE state = 'open'"


class Process:
    """One `toolcallstore serve` subprocess and an Api (the helpers' client) talking to it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        client = httpx.AsyncClient(base_url=server.base_url, timeout=30)
        self.api = Api(client, server.admin_key, app=None)

    @classmethod
    async def start(cls, database_url: str, workdir: Path, env: dict[str, str]) -> Process:
        return cls(await asyncio.to_thread(start_server, database_url, workdir, **env))

    async def kill(self) -> None:
        await asyncio.to_thread(kill_server, self.server)

    async def close(self) -> str:
        """Stop it if it still runs; its output (empty once killed)."""
        await self.api.client.aclose()
        if self.server.process.returncode is not None:
            return ""
        return await asyncio.to_thread(stop_server, self.server)


async def _database(database_url: str) -> Database:
    db = Database(database_url)
    await db.connect()
    await migrate(db)
    return db


async def _count(db: Database, sql: str, **values: Any) -> int:
    return int(await db.fetch_val(sql, values))


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll `check` until it holds; a bounded wait, never an assertion on how long it took."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.1)


async def _get(api: Api, secret: str, path: str) -> dict[str, Any]:
    r = await api.client.get(path, headers=api.auth(secret))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _tenant_counters(api: Api, secret: str) -> tuple[str, str]:
    tenant = (await _get(api, secret, "/v1/spend_caps"))["data"][0]
    assert tenant["owner"] == "tenant"
    return tenant["spent_usd"], tenant["held_usd"]


async def _audit_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "toolcallstore", "--database-url", database_url]
    return await asyncio.to_thread(
        subprocess.run, [*command, "audit", "verify"], capture_output=True, text=True, timeout=60
    )


async def _post(api: Api, secret: str, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = api.idem(secret) if body is not None else api.auth(secret)
    r = await api.client.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_sync_call_killed_mid_run_is_released_and_replays_its_failure(
    database_url: str, tmp_path: Path
) -> None:
    db = await _database(database_url)
    first = await Process.start(database_url, tmp_path, SYNC_ENV)
    try:
        api = first.api
        agent = await make_key(api, ["quotes:create", "llm:chat", "receipts:read"])
        q = await quote(api, agent, "sandbox.echo", {"message": "x", "delay_ms": 3000})
        assert q.status_code == 200, q.text
        body, key = {"quote_id": q.json()["id"]}, secrets.token_hex(8)
        call = asyncio.create_task(execute(api, agent, body, key))

        async def held() -> bool:
            return await _count(db, OPEN_HOLDS) == 1

        await _eventually(held, "the hold was taken", timeout=20)
        await first.kill()
        with pytest.raises(httpx.TransportError):  # the caller never got an answer
            await call
    finally:
        await first.close()
    stranded = await db.fetch_one("SELECT id, state FROM executions")
    assert stranded is not None and stranded["state"] == "running", "it finished before the kill"
    execution_id = stranded["id"]

    second = await Process.start(database_url, tmp_path, SYNC_ENV)
    try:
        api = second.api

        async def released() -> bool:
            return await _count(db, OPEN_HOLDS) == 0

        await _eventually(released, "the sweep released the hold", timeout=30)
        done = await _get(api, agent, f"/v1/executions/{execution_id}")
        assert done["status"] == "failed" and done["amount_usd"] == "0.000000"
        assert done["error"]["code"] == "execution_interrupted"
        receipt = await _get(api, agent, f"/v1/receipts/{done['receipt_id']}")
        assert (receipt["status"], receipt["amount_usd"]) == ("failed", "0.000000")
        assert await _tenant_counters(api, agent) == ("0.000000", "0.000000")
        await ledger_agrees(api)
        # The retry gets the answer the sweep stored for the dead request, not a second run.
        retry = await execute(api, agent, body, key)
        assert retry.status_code == 500, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        error = retry.json()["error"]
        assert error["code"] == "execution_interrupted"
        assert (error["execution_id"], error["receipt_id"]) == (execution_id, done["receipt_id"])
        assert await _count(db, "SELECT count(*) FROM executions") == 1
        assert await _count(db, "SELECT count(*) FROM receipts") == 1
        assert await _count(db, "SELECT count(*) FROM ledger_entries") == 0
    finally:
        out = await second.close()
        await db.disconnect()
    await _assert_stopped_clean(out, database_url)


async def test_a_job_killed_mid_run_runs_again_but_acts_and_charges_once(
    database_url: str, tmp_path: Path
) -> None:
    db = await _database(database_url)
    first = await Process.start(database_url, tmp_path, JOB_ENV)
    try:
        api = first.api
        agent = await make_key(api, AGENT_SCOPES)
        human = await make_key(api, ["approvals:grant"])
        params = {"action": "buy example.com", "delay_ms": 3000}
        q = await quote(api, agent, "sandbox.irreversible", params)
        assert q.status_code == 200, q.text
        approval = await _post(api, agent, "/v1/approvals", {"quote_id": q.json()["id"]})
        granted = await _post(api, human, f"/v1/approvals/{approval['id']}/grant")
        assert granted["status"] == "granted"
        started = await execute(api, agent, {"quote_id": q.json()["id"],
                                             "approval_id": approval["id"]})  # fmt: skip
        assert started.status_code == 202, started.text
        execution = started.json()
        assert execution["status"] == "running" and execution["job_id"].startswith("job_")

        async def job_running() -> bool:
            job = await _get(api, agent, f"/v1/jobs/{execution['job_id']}")
            return bool(job["state"] == "running")

        await _eventually(job_running, "a worker took the job", timeout=20)
        await first.kill()
    finally:
        await first.close()
    state = await db.fetch_val(
        "SELECT state FROM executions WHERE id = :id", {"id": execution["id"]}
    )
    assert state == "running", "it finished before the kill; the test proves nothing"

    second = await Process.start(database_url, tmp_path, JOB_ENV)
    try:
        api = second.api
        path = f"/v1/executions/{execution['id']}"

        async def finished() -> bool:
            return bool((await _get(api, agent, path))["status"] != "running")

        # The dead worker's lease lapses, the rescuer re-queues the job and it runs again.
        await _eventually(finished, "the re-run settled the execution", timeout=45)
        done = await _get(api, agent, path)
        assert done["status"] == "succeeded" and done["amount_usd"] == "0.650000"
        await _assert_charged_once(db, execution["id"])
        assert await _tenant_counters(api, agent) == ("0.650000", "0.000000")
        await ledger_agrees(api)
        counter = await db.fetch_one(
            "SELECT spent_micros, held_micros FROM spend_counters WHERE owner_id LIKE 'ten_%'"
        )
        assert counter is not None
        assert (int(counter["spent_micros"]), int(counter["held_micros"])) == (
            IRREVERSIBLE_PRICE_MICROS, 0,
        )  # fmt: skip
    finally:
        out = await second.close()
        await db.disconnect()
    await _assert_stopped_clean(out, database_url)


async def _assert_stopped_clean(out: str, database_url: str) -> None:
    """The restarted server logged no traceback, and the audit chain is intact."""
    assert "Traceback" not in out, out
    verified = await _audit_verify(database_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def _assert_charged_once(db: Database, execution_id: str) -> None:
    """The job may have run twice; its effect, receipt and charge happened once."""
    receipts = await db.fetch_all(
        "SELECT id, status, price_micros FROM receipts WHERE execution_id = :id",
        {"id": execution_id},
    )
    assert [(r["status"], int(r["price_micros"])) for r in receipts] == [
        ("succeeded", IRREVERSIBLE_PRICE_MICROS)
    ]
    charges = await _count(
        db, "SELECT count(*) FROM ledger_entries WHERE kind = 'charge' AND receipt_id = :r",
        r=receipts[0]["id"],
    )  # fmt: skip
    assert charges == 1
    assert await _count(db, "SELECT count(*) FROM ledger_entries WHERE kind = 'charge'") == 1
    effects = await db.fetch_all(
        "SELECT runs FROM sandbox_effects WHERE job_id = :id", {"id": execution_id}
    )
    assert len(effects) == 1 and 1 <= int(effects[0]["runs"]) <= 2
    assert await _count(db, OPEN_HOLDS) == 0
