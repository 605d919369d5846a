"""config/Caddyfile validates, and real Caddy in front of `toolcallstore serve` serves the
public files, proxies the API unbuffered, and keeps operator surfaces off the public site."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.requests import Request
from starlette.responses import StreamingResponse

from tests.chat.helpers import loopback_upstream
from tests.conftest import Server, start_server, stop_server
from tests.site.edge import CADDYFILE, PUBLIC, caddy_env, require_binary, running_caddy
from toolcallstore.db import Database

CHAT_PATH = "/openai/v1/chat/completions"  # where test-mode OpenAI calls go in the sandbox


def test_caddyfile_validates(tmp_path: Path) -> None:
    caddy = require_binary("caddy")
    done = subprocess.run(
        [caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=caddy_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid configuration" in done.stdout + done.stderr


class GatedUpstream:
    """An OpenAI-protocol stream that sends its first token, then waits for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.finished = False

    async def handle(self, request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}
            yield b"data: " + orjson.dumps(first) + b"\n\n"
            await asyncio.wait_for(self.release.wait(), 30)
            rest = {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}
            yield b"data: " + orjson.dumps(rest) + b"\n\n"
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            yield b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"
            self.finished = True

        return StreamingResponse(body(), media_type="text/event-stream")


@dataclass
class Edge:
    caddy: str
    api: Server
    api_database_url: str
    client: httpx.AsyncClient
    upstream: GatedUpstream

    def auth(self, secret: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.api.admin_key}", **extra}

    def idem(self, secret: str | None = None) -> dict[str, str]:
        return self.auth(secret, **{"Idempotency-Key": secrets.token_hex(8)})

    async def key(self, scopes: list[str], **extra: Any) -> str:
        body = {"scopes": scopes, **extra}
        r = await self.client.post("/v1/keys", json=body, headers=self.idem())
        assert r.status_code == 200, r.text
        secret: str = r.json()["secret"]
        return secret


@pytest.fixture
async def edge(database_url: str, tmp_path: Path) -> AsyncIterator[Edge]:
    upstream = GatedUpstream()
    async with loopback_upstream(upstream.handle, path=CHAT_PATH) as base:
        sandbox = base.removesuffix("/v1")
        api = await asyncio.to_thread(
            start_server, database_url, tmp_path,
            TOOLCALLSTORE_SANDBOX_URL=sandbox, TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0",
        )  # fmt: skip
        try:
            port = int(api.base_url.rsplit(":", 1)[1])
            with _caddy(port, tmp_path / "caddy") as caddy:
                async with httpx.AsyncClient(base_url=caddy, timeout=30) as client:
                    yield Edge(caddy, api, database_url, client, upstream)
        finally:
            upstream.release.set()
            await asyncio.to_thread(stop_server, api)


def _caddy(port: int, home: Path) -> contextlib.AbstractContextManager[str]:
    return running_caddy(port, home)


PUBLIC_TYPES = {
    "/llms.txt": "text/plain; charset=utf-8",
    "/openapi.json": "application/json",
    "/catalog.json": "application/json",
    "/pricing.json": "application/json",
    "/.well-known/security.txt": "text/plain; charset=utf-8",
    "/.well-known/mcp.json": "application/json",
    "/pricing.html": "text/html; charset=utf-8",
}


async def test_public_files_come_from_public_with_their_types(edge: Edge) -> None:
    for path, media in PUBLIC_TYPES.items():
        r = await edge.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == media, path
        assert r.content == (PUBLIC / path.lstrip("/")).read_bytes(), path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "server" not in r.headers
    index = await edge.client.get("/")
    assert index.content == (PUBLIC / "index.html").read_bytes()
    assert (await edge.client.get("/no-such-page.html")).status_code == 404


async def test_the_api_answers_through_caddy_with_the_real_client_address(edge: Edge) -> None:
    assert (await edge.client.get("/v1/me")).status_code == 401
    spoofed = edge.auth(**{"X-Forwarded-For": "203.0.113.9"})
    me = await edge.client.get("/v1/me", headers=spoofed)
    assert me.status_code == 200 and me.json()["object"] == "api_key"
    request_id = me.headers["toolcall-request-id"]
    # Caddy replaced the client's X-Forwarded-For with the peer it saw; the API (trusting
    # loopback) recorded that address, not the spoofed one.
    assert await _audited_ip(edge, request_id) == "127.0.0.1"
    big = await edge.client.post("/v1/quotes", content=b"x" * 1_100_000, headers=edge.idem())
    assert big.status_code == 413


async def _audited_ip(edge: Edge, request_id: str) -> str | None:
    db = Database(edge.api_database_url)
    await db.connect()
    try:
        for _ in range(100):
            ip = await db.fetch_val(
                "SELECT ip FROM audit_log WHERE request_id = :r", {"r": request_id}
            )
            if ip is not None:
                return str(ip)
            await asyncio.sleep(0.05)
        return None
    finally:
        await db.disconnect()


async def test_operator_surfaces_are_not_public(edge: Edge) -> None:
    for path in ("/metrics", "/readyz", "/sandbox/openai/v1/chat/completions", "/admin",
                 "/admin/login", "/admin/status.json"):  # fmt: skip
        assert (await edge.client.get(path)).status_code == 404, path
    signin = await edge.client.post("/admin/login", data={"key": edge.api.admin_key})
    assert signin.status_code == 404 and "set-cookie" not in signin.headers
    admin = await edge.client.get(
        "/v1/admin/reconciliation?period=2026-01&livemode=false", headers=edge.auth()
    )
    assert admin.status_code == 403
    assert admin.json()["error"]["code"] == "not_public"
    # The API itself still serves them to its operators, on its own port.
    direct = httpx.get(edge.api.base_url + "/metrics", timeout=5)
    assert direct.status_code == 200
    page = httpx.get(edge.api.base_url + "/admin/login", timeout=5)
    assert page.status_code == 200 and 'name="key"' in page.text


async def test_a_streamed_chat_is_not_buffered(edge: Edge) -> None:
    key = await edge.key(["llm:chat", "receipts:read"], auto_quote_max_usd="1.00")
    body = {"model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with edge.client.stream("POST", "/v1/chat/completions", json=body,
                                  headers=edge.auth(key)) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.aiter_lines()
        first = await asyncio.wait_for(_next_data(lines), 10)
        # The first token arrived through Caddy while the upstream still holds the rest.
        assert first["choices"][0]["delta"].get("content") == "Hel"
        assert not edge.upstream.finished
        edge.upstream.release.set()
        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    last = orjson.loads(rest[-2].removeprefix("data: "))
    receipt = await edge.client.get(f"/v1/receipts/{last['toolcall']['receipt_id']}",
                                    headers=edge.auth(key))  # fmt: skip
    assert receipt.status_code == 200 and receipt.json()["status"] == "succeeded"


async def _next_data(lines: AsyncIterator[str]) -> Any:
    async for line in lines:
        if line.startswith("data: "):
            return orjson.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended before its first chunk")


async def test_job_events_stream_through_caddy(edge: Edge) -> None:
    # An agent asks, a human grants: two keys the operator made, neither minted by the other.
    agent = await edge.key(["quotes:create", "domains:register", "jobs:read"])
    approver = await edge.key(["approvals:grant"])
    params = {"action": "buy example.com", "delay_ms": 300}
    quote = await edge.client.post(
        "/v1/quotes",
        headers=edge.idem(agent),
        json={"tool": "sandbox.irreversible", "params": params},
    )
    assert quote.status_code == 200, quote.text
    quote_id = quote.json()["id"]
    asked = await edge.client.post(
        "/v1/approvals", json={"quote_id": quote_id}, headers=edge.idem(agent)
    )
    approval_id = asked.json()["id"]
    granted = await edge.client.post(
        f"/v1/approvals/{approval_id}/grant", headers=edge.auth(approver)
    )
    assert granted.status_code == 200, granted.text
    run = await edge.client.post(
        "/v1/executions",
        headers=edge.idem(agent),
        json={"quote_id": quote_id, "approval_id": approval_id},
    )
    assert run.status_code == 202, run.text
    states = []
    async with edge.client.stream(
        "GET", f"/v1/jobs/{run.json()['job_id']}/events", headers=edge.auth(agent)
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                states.append(orjson.loads(line.removeprefix("data: "))["state"])
    assert states[-1] == "succeeded"
    assert len(states) >= 2  # the changes came as they happened, not one final answer


async def test_mcp_answers_through_caddy(edge: Edge) -> None:
    headers = {"Authorization": f"Bearer {edge.api.admin_key}"}
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(f"{edge.caddy}/mcp", http_client=http)) as mcp:
            names = {tool.name for tool in (await mcp.list_tools()).tools}
    assert {"sandbox.echo", "sandbox.irreversible"} <= names
