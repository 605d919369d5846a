"""The MCP endpoint, driven by the official SDK's client over a real socket: tools from the
catalog with annotations, the key's scopes, and the executions flow (inline quote, quote
instead of acting, approval, job polling, receipts)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.chat.helpers import Live, live_server
from toolcallstore.settings import Settings


@contextlib.asynccontextmanager
async def mcp_client(live: Live, secret: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}) as http:
        async with Client(streamable_http_client(f"{live.base_url}/mcp", http_client=http)) as c:
            yield c


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
    result = await client.call_tool(tool, arguments)
    return bool(result.is_error), result.structured_content


async def new_key(live: Live, scopes: list[str], **extra: Any) -> str:
    headers = {**live.auth(), "Idempotency-Key": secrets.token_hex(8)}
    r = await live.client.post("/v1/keys", json={"scopes": scopes, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def test_tools_carry_annotations_and_follow_the_keys_scopes(settings: Settings) -> None:
    async with live_server(settings) as live:
        async with mcp_client(live, live.admin_key) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
        assert {"sandbox.echo", "sandbox.irreversible", "llm.chat", "toolcallstore.job"} <= set(
            listed
        )
        risky = listed["sandbox.irreversible"].annotations
        assert risky is not None and risky.destructive_hint is True
        assert risky.read_only_hint is False
        echo = listed["sandbox.echo"]
        assert echo.annotations is not None and echo.annotations.destructive_hint is False
        assert {"message", "quote_id", "approval_id"} <= set(echo.input_schema["properties"])
        job_tool = listed["toolcallstore.job"].annotations
        assert job_tool is not None and job_tool.read_only_hint is True

        reader = await new_key(live, ["jobs:read"])
        async with mcp_client(live, reader) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == ["toolcallstore.job"]
            refused, body = await call(client, "sandbox.echo", {"message": "hi"})
        assert refused and body["error"]["code"] == "insufficient_scope"
        keyless = await live.client.post("/mcp", json={"jsonrpc": "2.0", "id": 1,
                                                       "method": "tools/list"})  # fmt: skip
        assert keyless.status_code == 401


async def test_echo_runs_inline_to_a_receipt(settings: Settings) -> None:
    async with live_server(settings) as live:
        agent = await new_key(live, ["llm:chat", "receipts:read"], auto_quote_max_usd="0.01")
        async with mcp_client(live, agent) as client:
            failed, body = await call(
                client, "sandbox.echo", {"message": "hi", "idempotency_key": "e-1"}
            )
            _, again = await call(
                client, "sandbox.echo", {"message": "hi", "idempotency_key": "e-1"}
            )
        assert not failed and body["status"] == "succeeded", body
        assert body["result"] == {"message": "hi"}
        assert again["receipt_id"] == body["receipt_id"]  # the same key ran it once
        receipt = await live.client.get(f"/v1/receipts/{body['receipt_id']}",
                                        headers=live.auth(agent))  # fmt: skip
        assert receipt.status_code == 200
        assert receipt.json()["amount_usd"] == "0.001400"
        await live.balanced()


async def test_a_risky_tool_returns_its_quote_then_runs_once_approved(settings: Settings) -> None:
    async with live_server(settings) as live:
        agent = await new_key(live, ["domains:register", "quotes:create", "jobs:read",
                                     "receipts:read"], auto_quote_max_usd="5.00")  # fmt: skip
        approver = await new_key(live, ["approvals:grant"])
        async with mcp_client(live, agent) as client:
            params = {"action": "buy example.com"}
            failed, quoted = await call(client, "sandbox.irreversible", params)
            assert not failed and quoted["status"] == "quote_required", quoted
            assert quoted["approval_required"] is True
            quote_id = quoted["quote"]["id"]
            assert quoted["quote"]["price_usd"] == "0.650000"
            assert any("/v1/approvals" in step for step in quoted["next_steps"])
            assert await _executions(live) == 0  # a quote, not an action

            refused, body = await call(client, "sandbox.irreversible", {"quote_id": quote_id})
            assert refused and body["error"]["code"] == "approval_required"

            approval_id = await _approve(live, agent, approver, quote_id)
            failed, run = await call(
                client, "sandbox.irreversible", {"quote_id": quote_id, "approval_id": approval_id}
            )
            assert not failed and run["status"] == "running", run
            assert run["poll"]["mcp_tool"] == "toolcallstore.job"
            status: dict[str, Any] = {}
            for _ in range(20):
                _, status = await call(
                    client, "toolcallstore.job", {"job_id": run["job_id"], "wait": 5}
                )
                if status["job"]["state"] == "succeeded":
                    break
        assert status["job"]["state"] == "succeeded", status
        assert status["execution"]["status"] == "succeeded"
        receipt = await live.receipt(status["receipt_id"])
        assert receipt["amount_usd"] == "0.650000"
        assert await _executions(live) == 1
        await live.balanced()


async def _approve(live: Live, agent: str, approver: str, quote_id: str) -> str:
    asked = await live.client.post(
        "/v1/approvals",
        json={"quote_id": quote_id},
        headers={**live.auth(agent), "Idempotency-Key": "a-1"},
    )
    assert asked.status_code == 200, asked.text
    approval_id: str = asked.json()["id"]
    granted = await live.client.post(f"/v1/approvals/{approval_id}/grant",
                                     headers=live.auth(approver))  # fmt: skip
    assert granted.status_code == 200, granted.text
    return approval_id


async def _executions(live: Live) -> int:
    db = live.app.state.services.db
    return int(await db.fetch_val("SELECT COUNT(*) FROM executions"))


async def test_a_browser_origin_elsewhere_is_refused(settings: Settings) -> None:
    async with live_server(settings) as live:
        r = await live.client.post(
            "/mcp",
            headers={**live.auth(), "Origin": "https://evil.example"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "origin_forbidden"


async def test_llm_chat_runs_as_a_tool_to_a_receipt(settings: Settings) -> None:
    async with live_server(settings) as live:
        agent = await new_key(live, ["llm:chat", "receipts:read"], auto_quote_max_usd="0.50")
        async with mcp_client(live, agent) as client:
            failed, body = await call(client, "llm.chat", {
                "model": "gpt-4o-mini", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hello"}],
            })  # fmt: skip
        assert not failed and body["status"] == "succeeded", body
        assert body["result"]["choices"][0]["message"]["content"]
        receipt = await live.receipt(body["receipt_id"])
        assert receipt["tool"] == "llm.chat" and receipt["status"] == "succeeded"
        await live.balanced()
