"""kill -9 of the server while OpenProvider is registering the domain: after a restart the job
asks the registrar, and the domain is registered exactly once and charged exactly once.

The sandbox runs in this test's process (its own port), so that the registrar's memory
outlives the killed server, as a real registrar's would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.conftest import free_port, kill_server, start_server, stop_server
from tests.domains.helpers import AGENT_SCOPES, CONTACT
from toolcallstore.db import Database
from toolcallstore.sandbox import create_sandbox_app

NAME = "crash-shop.com"
PRICE_MICROS = 9_366_000  # OpenProvider's 8.06 x 1.10 + 0.50


async def _eventually(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.1)


class Client:
    def __init__(self, base_url: str, admin_key: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)
        self.admin_key = admin_key

    async def call(self, method: str, path: str, secret: str | None = None,
                   body: Any = None, idem: bool = False) -> Any:  # fmt: skip
        headers = {"Authorization": f"Bearer {secret or self.admin_key}"}
        if idem:
            headers["Idempotency-Key"] = f"k-{time.monotonic_ns()}"
        r = await self.http.request(method, path, json=body, headers=headers)
        assert r.status_code in (200, 202), r.text
        return r.json()


async def test_a_registration_killed_mid_create_registers_and_charges_once(
    database_url: str, tmp_path: Path
) -> None:
    sandbox = create_sandbox_app()
    port = free_port()
    config = uvicorn.Config(sandbox, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")  # fmt: skip
    fake_server = uvicorn.Server(config)
    serving = asyncio.create_task(fake_server.serve())
    while not fake_server.started:
        await asyncio.sleep(0.01)
    fakes = f"http://127.0.0.1:{port}"
    env = {"TOOLCALLSTORE_SANDBOX_URL": fakes, "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2",
           "TOOLCALLSTORE_ACCESS_LOG": "false", "TOOLCALLSTORE_JOB_POLL_MS": "200",
           "TOOLCALLSTORE_PRICE_REFRESH_SECONDS": "0"}  # fmt: skip
    world = sandbox.state.domains.world
    first = await asyncio.to_thread(start_server, database_url, tmp_path, **env)
    api = Client(first.base_url, first.admin_key)
    try:
        agent = (await api.call("POST", "/v1/keys", body={"scopes": AGENT_SCOPES},
                                idem=True))["secret"]  # fmt: skip
        human = (await api.call("POST", "/v1/keys", body={"scopes": ["approvals:grant"]},
                                idem=True))["secret"]  # fmt: skip
        params = {"name": NAME, "years": 1, "contact": CONTACT}
        q = await api.call("POST", "/v1/quotes", agent, {"tool": "domains.register",
                                                          "params": params}, idem=True)  # fmt: skip
        approval = await api.call("POST", "/v1/approvals", agent, {"quote_id": q["id"]}, True)
        await api.call("POST", f"/v1/approvals/{approval['id']}/grant", human)
        # OpenProvider registers the name, then keeps its answer for 8 s: the kill lands there.
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{fakes}/openprovider/v1beta/_faults", json={
                "fault": "timeout_after_acting", "path": "/domains", "method": "POST",
                "times": 1, "delay_ms": 8000})  # fmt: skip
            assert r.status_code == 200
        started = await api.call("POST", "/v1/domains", agent, {
            **params, "quote_id": q["id"], "approval_id": approval["id"]}, idem=True)  # fmt: skip
        assert started["status"] == "registering"

        async def created() -> bool:
            return world.creates.get("openprovider") == [NAME]

        await _eventually(created, "OpenProvider received the create")
        await asyncio.to_thread(kill_server, first)
    finally:
        await api.http.aclose()
        if first.process.returncode is None:
            await asyncio.to_thread(kill_server, first)

    db = Database(database_url)
    await db.connect()
    try:
        state = await db.fetch_val("SELECT state FROM executions")
        assert state == "running", "it finished before the kill; the test proves nothing"
        assert await db.fetch_val("SELECT status FROM domains") == "registering"
        second = await asyncio.to_thread(start_server, database_url, tmp_path, **env)
        api = Client(second.base_url, first.admin_key)
        try:

            async def registered() -> bool:
                found = await api.call("GET", f"/v1/domains/{NAME}", agent)
                return bool(found["status"] == "registered" and found["receipt_id"])

            await _eventually(registered, "the re-run found the domain registered", 45)
            domain = await api.call("GET", f"/v1/domains/{NAME}", agent)
            assert domain["registrar"] == "openprovider"
        finally:
            await api.http.aclose()
            out = await asyncio.to_thread(stop_server, second)
        assert "Traceback" not in out, out
        # Registered once at the registrar, never at the failover, charged once.
        assert world.creates == {"openprovider": [NAME]}
        receipts = await db.fetch_all("SELECT status, price_micros FROM receipts")
        assert [(r["status"], int(r["price_micros"])) for r in receipts] == [
            ("succeeded", PRICE_MICROS)]  # fmt: skip
        charges = await db.fetch_val("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'")
        assert charges == 1
        assert await db.fetch_val("SELECT count(*) FROM holds WHERE state = 'open'") == 0
        assert await db.fetch_val("SELECT count(*) FROM domains") == 1
    finally:
        await db.disconnect()
        fake_server.should_exit = True
        await serving
    command = [sys.executable, "-m", "toolcallstore", "--database-url", database_url]
    verified = await asyncio.to_thread(subprocess.run, [*command, "audit", "verify"],
                                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
