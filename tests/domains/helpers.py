"""The app on a real loopback socket (its sandbox registrars at /sandbox, its DNS server on a
free port), and the steps of the domain flow through the real API: keys, quotes, approvals,
registration, DNS changes. Other packages (mailboxes) reuse `live_domains` and
`register_domain` to hold a sandbox domain quickly."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from tests.conftest import free_port
from toolcallstore.app import create_app
from toolcallstore.server import prepare
from toolcallstore.services import Services
from toolcallstore.settings import Settings

CONTACT = {
    "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org",
    "phone": "+31.201234567", "street": "Keizersgracht 1", "city": "Amsterdam",
    "zipcode": "1015 AA", "country": "NL",
}  # fmt: skip
AGENT_SCOPES = ["quotes:create", "domains:check", "domains:register", "dns:write",
                "receipts:read", "jobs:read"]  # fmt: skip
# Short waits: a registrar timeout, the ambiguity re-checks and DNS verify polling.
FAST = {
    "domain_http_timeout_seconds": 2.0,
    "domain_recheck_ms": 100,
    "dns_verify_interval_ms": 100,
    "dns_verify_timeout_seconds": 15,
    "job_poll_ms": 100,
}


def fast_settings(settings: Settings, **overrides: Any) -> Settings:
    return settings.with_(**{**FAST, **overrides})


@dataclass
class Live:
    base_url: str
    admin_key: str
    app: Any
    client: httpx.AsyncClient

    @property
    def svc(self) -> Services:
        found: Services = self.app.state.services
        return found

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.admin_key}"}

    def idem(self, secret: str | None = None, key: str | None = None) -> dict[str, str]:
        return {**self.auth(secret), "Idempotency-Key": key or secrets.token_hex(8)}

    def fake(self, provider: str) -> str:
        """The base URL of a registrar fake's controls (`_faults`, `_log`, `_taken`)."""
        path = {"openprovider": "openprovider/v1beta", "porkbun": "porkbun/api/json/v3"}
        return f"{self.base_url}/sandbox/{path[provider]}"

    async def fault(self, provider: str, fault: str, **rule: Any) -> None:
        r = await self.client.post(f"{self.fake(provider)}/_faults", json={"fault": fault, **rule})
        assert r.status_code == 200, r.text

    async def fake_log(self, provider: str) -> dict[str, Any]:
        r = await self.client.get(f"{self.fake(provider)}/_log")
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    async def key(self, scopes: list[str] | None = None) -> str:
        body = {"scopes": scopes or AGENT_SCOPES}
        r = await self.client.post("/v1/keys", json=body, headers=self.idem())
        assert r.status_code == 200, r.text
        secret: str = r.json()["secret"]
        return secret

    async def quote(self, secret: str, tool: str, params: dict[str, Any]) -> httpx.Response:
        return await self.client.post("/v1/quotes", json={"tool": tool, "params": params},
                                      headers=self.idem(secret))  # fmt: skip

    async def approve(self, agent: str, human: str, quote_id: str) -> str:
        r = await self.client.post("/v1/approvals", json={"quote_id": quote_id},
                                   headers=self.idem(agent))  # fmt: skip
        assert r.status_code == 200, r.text
        approval_id: str = r.json()["id"]
        r = await self.client.post(f"/v1/approvals/{approval_id}/grant", headers=self.auth(human))
        assert r.status_code == 200 and r.json()["status"] == "granted", r.text
        return approval_id

    async def get(self, secret: str, path: str) -> dict[str, Any]:
        r = await self.client.get(path, headers=self.auth(secret))
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    async def wait_domain(self, secret: str, name: str, *, until: tuple[str, ...] = (
        "registered", "failed"), timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        """Poll GET /v1/domains/{name} until its status is one of `until` (a bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.get(secret, f"/v1/domains/{name}")
            if found["status"] in until and found["receipt_id"]:  # its execution closed
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed {found['status']} for {timeout:g} s")
            await asyncio.sleep(0.05)

    async def wait_dns(self, secret: str, name: str, *, until: tuple[str, ...] = (
        "verified", "failed", "partial"), timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            found = await self.get(secret, f"/v1/domains/{name}")
            change = found["dns"]
            if change is not None and change["status"] in until:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}'s DNS stayed {change and change['status']}")
            await asyncio.sleep(0.05)

    async def register_domain(self, agent: str, human: str, name: str, *, years: int = 1,
                              wait: bool = True) -> dict[str, Any]:  # fmt: skip
        """Quote, approve and register `name` through the API; the registered domain."""
        params = {"name": name, "years": years, "contact": CONTACT}
        q = await self.quote(agent, "domains.register", params)
        assert q.status_code == 200, q.text
        approval_id = await self.approve(agent, human, q.json()["id"])
        r = await self.client.post("/v1/domains", headers=self.idem(agent), json={
            **params, "quote_id": q.json()["id"], "approval_id": approval_id})  # fmt: skip
        assert r.status_code == 202, r.text
        if not wait:
            return dict(r.json())
        return await self.wait_domain(agent, name)

    async def quote_dns(self, agent: str, name: str, records: list[dict[str, Any]]
                        ) -> httpx.Response:  # fmt: skip
        return await self.quote(agent, "dns.apply", {"domain": name, "records": records})

    async def apply_dns(self, agent: str, human: str, name: str, records: list[dict[str, Any]],
                        ) -> httpx.Response:  # fmt: skip
        """Quote the record set, approve the diff, PUT it."""
        q = await self.quote_dns(agent, name, records)
        assert q.status_code == 200, q.text
        approval_id = await self.approve(agent, human, q.json()["id"])
        body = {"records": records, "quote_id": q.json()["id"], "approval_id": approval_id}
        return await self.client.put(f"/v1/domains/{name}/dns", json=body,
                                     headers=self.idem(agent))  # fmt: skip


@contextlib.asynccontextmanager
async def live_domains(settings: Settings) -> AsyncIterator[Live]:
    """The whole app on a free loopback port, in this event loop, with fast domain timings."""
    port = free_port()
    settings = fast_settings(settings).with_(host="127.0.0.1", port=port)
    await prepare(settings)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    key = settings.resolved_admin_key_file().read_text().strip()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        try:
            yield Live(base_url, key, app, client)
        finally:
            server.should_exit = True
            await task


async def receipts_and_ledger(live: Live, receipt_id: str) -> dict[str, Any]:
    """A receipt (admin view) and its ledger entries from the database."""
    receipt = await live.get(live.admin_key, f"/v1/receipts/{receipt_id}")
    rows = await live.svc.db.fetch_all(
        "SELECT kind, amount_micros FROM ledger_entries WHERE receipt_id = :r ORDER BY kind",
        {"r": receipt_id},
    )
    receipt["ledger"] = [(r["kind"], int(r["amount_micros"])) for r in rows]
    return receipt
