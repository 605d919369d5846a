"""A webhook receiver on a real loopback socket (aiohttp), and helpers to reach it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import Api
from toolcallstore.db import Database
from toolcallstore.db.keys import insert_key

MASTER_KEY = "k1:" + base64.b64encode(os.urandom(32)).decode()
FAST = {"master_key": MASTER_KEY, "webhook_dispatch_ms": 20, "job_poll_ms": 50}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next of `script` (status, headers, body), then 200."""

    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    url: str = ""
    in_flight: int = 0
    most_in_flight: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        status, headers, answer = self.script.pop(0) if self.script else (200, {}, b"ok")
        return web.Response(status=status, headers=headers, body=answer)

    async def start(self, host: str = "127.0.0.1") -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}/hook"
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.received]


def toolcall_signature_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Our documented rule, done by hand: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>."""
    parts = [p.split("=", 1) for p in headers["toolcall-signature"].split(",")]
    timestamp = next(v for k, v in parts if k == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return any(hmac.compare_digest(v, expected.hexdigest()) for k, v in parts if k == "v1")


async def create_endpoint(
    api: Api, url: str, events: list[str] | None = None, secret: str | None = None
) -> dict[str, Any]:
    response = await api.client.post(
        "/v1/webhook_endpoints", json={"url": url, "events": events or ["*"]},
        headers=api.idem(secret),
    )  # fmt: skip
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


async def quote(api: Api, message: str = "hi", secret: str | None = None) -> dict[str, Any]:
    body = {"tool": "sandbox.echo", "params": {"message": message}}
    response = await api.client.post("/v1/quotes", json=body, headers=api.idem(secret))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}")


async def delivery_of(db: Database, event_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(
        "SELECT * FROM webhook_deliveries WHERE event_id = :id", {"id": event_id}
    )


async def event_with_deliveries(api: Api, event_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/v1/events/{event_id}", headers=api.auth())
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def live_key(api: Api, scopes: tuple[str, ...]) -> str:
    """A live-mode key of the admin's tenant (no test key may create one over the API)."""
    me = await api.client.get("/v1/me", headers=api.auth())
    db: Database = api.app.state.services.db  # type: ignore[attr-defined]
    async with db.transaction() as tx:
        _, secret = await insert_key(tx, tenant_id=me.json()["tenant_id"], project_id=None,
                                     name="live", mode="live", scopes=scopes)  # fmt: skip
    return secret
