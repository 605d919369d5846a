"""The whole app on a real loopback socket (`tests.domains.helpers.live_domains`: its sandbox
with the Stalwart fake and the registrars at /sandbox, its authoritative DNS server on a free
port), plus the steps of the mail flow: a held domain, quote, approval by another key, call."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.controls.helpers import make_key, quote
from tests.domains.helpers import Live, live_domains
from toolcallstore.settings import Settings

AGENT_SCOPES = ["email:provision", "quotes:create", "receipts:read", "jobs:read",
                "domains:register", "dns:write", "domains:check"]  # fmt: skip
MASTER_KEY = "k1:" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Mail:
    api: Live
    agent: str
    human: str

    @property
    def stalwart(self) -> str:
        return self.api.base_url + "/sandbox/stalwart"

    async def fake_state(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            found: dict[str, Any] = (await client.get(self.stalwart + "/_state")).json()
        return found

    async def arm(self, method: str, kind: str, times: int = 1) -> None:
        async with httpx.AsyncClient() as client:
            r = await client.post(
                self.stalwart + "/_faults", json={"method": method, "kind": kind, "times": times}
            )
            r.raise_for_status()

    async def approved(self, tool: str, params: dict[str, Any]) -> dict[str, str]:
        """A quote for `tool`, and an approval of it granted by the other key."""
        q = await quote(self.api, self.agent, tool, params)  # type: ignore[arg-type]
        assert q.status_code == 200, q.text
        r = await self.api.client.post(
            "/v1/approvals", json={"quote_id": q.json()["id"]}, headers=self.api.idem(self.agent)
        )
        assert r.status_code == 200, r.text
        approval_id = r.json()["id"]
        granted = await self.api.client.post(
            f"/v1/approvals/{approval_id}/grant", headers=self.api.auth(self.human)
        )
        assert granted.status_code == 200, granted.text
        return {"quote_id": q.json()["id"], "approval_id": approval_id}

    async def post(self, path: str, body: dict[str, Any], key: str | None = None
                   ) -> httpx.Response:  # fmt: skip
        headers = {**self.api.auth(self.agent), "Idempotency-Key": key or secrets.token_hex(8)}
        return await self.api.client.post(path, json=body, headers=headers)

    async def get(self, path: str) -> httpx.Response:
        return await self.api.client.get(path, headers=self.api.auth(self.agent))

    async def set_up(self, name: str) -> dict[str, Any]:
        """Mail set up on `name` (which the tenant must hold): the finished domain."""
        call = await self.approved("email.domain.setup", {"domain": name})
        started = await self.post("/v1/email/domains", {"domain": name, **call})
        assert started.status_code == 202, started.text
        await self.finished(started.json()["id"])
        r = await self.get(f"/v1/email/domains/{name}")
        assert r.status_code == 200, r.text
        domain: dict[str, Any] = r.json()
        return domain

    async def finished(self, execution_id: str) -> dict[str, Any]:
        for _ in range(600):
            r = await self.get(f"/v1/executions/{execution_id}")
            if r.json()["status"] != "running":
                body: dict[str, Any] = r.json()
                return body
            await asyncio.sleep(0.05)
        raise AssertionError("the execution did not finish")

    async def create_mailbox(self, address: str, **extra: Any) -> httpx.Response:
        params = {"address": address, **extra}
        call = await self.approved("email.mailbox.create", params)
        return await self.post("/v1/email/mailboxes", {**params, **call})


@asynccontextmanager
async def mail_app(settings: Settings, **changes: Any) -> AsyncIterator[Mail]:
    mail_settings = settings.with_(master_key=MASTER_KEY, mail_verify_wait_seconds=15.0,
                                   **changes)  # fmt: skip
    async with live_domains(mail_settings) as live:
        agent = await make_key(live, AGENT_SCOPES)  # type: ignore[arg-type]
        human = await make_key(live, ["approvals:grant"])  # type: ignore[arg-type]
        yield Mail(live, agent, human)


async def hold_domain(mail: Mail, name: str) -> None:
    """Have the tenant hold `name`: registered through the sandbox registrars (issue 15)."""
    held = await mail.api.register_domain(mail.agent, mail.human, name)
    assert held["status"] == "registered", held


async def stored_anywhere(mail: Mail, secret: str) -> list[str]:
    """Where `secret` appears in the database: the SQLite files' bytes, or every row of every
    Postgres table."""
    db = mail.api.app.state.services.db  # type: ignore[attr-defined]
    settings = mail.api.app.state.services.settings  # type: ignore[attr-defined]
    if settings.is_sqlite:
        from toolcallstore.settings import sqlite_path

        path = sqlite_path(settings.database_url)
        assert path is not None
        files = [p for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
        return [str(p) for p in files if secret.encode() in p.read_bytes()]
    tables = await db.fetch_all(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    found = []
    for table in tables:
        for row in await db.fetch_all(f'SELECT * FROM "{table["table_name"]}"'):
            if secret in repr(row):
                found.append(table["table_name"])
    return found
