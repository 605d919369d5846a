"""Lanes of sandbox targets with injected faults, a sandbox served over a real socket, and
the money checks every chat test ends with."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import free_port
from toolcallstore.app import create_app
from toolcallstore.controls.pricing import REPO_CONFIG, to_micros_up
from toolcallstore.server import prepare
from toolcallstore.settings import Settings

# Easy arithmetic: $1 per million prompt tokens, $2 per million completion tokens.
INPUT_PER_MTOK = Decimal("1.00")
OUTPUT_PER_MTOK = Decimal("2.00")
MARKUP = Decimal("0.20")  # config/models.json


def target_id(provider: str) -> str:
    return f"{provider}/sandbox-model"


def models_file(
    tmp_path: Path,
    providers: dict[str, tuple[str, str | None]],
    lanes: dict[str, list[str]],
    *,
    bills_on_cancel: bool = False,
    **policy: Any,
) -> Path:
    """config/models.json plus `providers` ({name: (protocol, fault spec or None)}), one
    sandbox model each, and `lanes` of them ({lane: [provider, ...]})."""
    data = orjson.loads((REPO_CONFIG / "models.json").read_bytes())
    for name, (protocol, fault) in providers.items():
        prefix = "{sandbox}" + (f"/fault/{fault}" if fault else "")
        path = {"openai": "/openai/v1", "anthropic": "/anthropic/v1", "gemini": "/gemini/v1beta"}
        data["providers"][name] = {
            "protocol": protocol,
            "base_url": prefix + path[protocol],
            "api_key_env": "TOOLCALLSTORE_TEST_UNUSED_KEY",
            "bills_on_cancel": bills_on_cancel,
            "description": f"sandbox {protocol}" + (f" with {fault}" if fault else ""),
        }
        data["models"][target_id(name)] = {
            "provider": name,
            "model": "sandbox-model",
            "input_usd_per_mtok": str(INPUT_PER_MTOK),
            "output_usd_per_mtok": str(OUTPUT_PER_MTOK),
            "context_tokens": 100_000,
            "max_output_tokens": 1000,
            "supports_tools": True,
        }
    for lane, members in lanes.items():
        data["lanes"][lane] = {
            "description": f"test lane {lane}",
            "targets": [target_id(p) for p in members],
            "order": "listed",
            "hedge_after_ms": 1000,
            "max_parallel": 1,
            "resume_mid_stream": False,
            **policy,
        }
    file = tmp_path / "models.json"
    file.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return file


def price_micros(prompt_tokens: int, completion_tokens: int) -> int:
    """What the customer pays for this usage of a sandbox-model target."""
    cost = (prompt_tokens * INPUT_PER_MTOK + completion_tokens * OUTPUT_PER_MTOK) / 1_000_000
    return to_micros_up(cost * (1 + MARKUP))


def sse_payloads(body: bytes) -> list[Any]:
    """The `data:` payloads of an SSE body ("[DONE]" kept as a string)."""
    out: list[Any] = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: "):
            raw = line[len(b"data: ") :]
            out.append("[DONE]" if raw == b"[DONE]" else orjson.loads(raw))
    return out


@dataclass
class Live:
    """The whole app on a real loopback socket (its sandbox at /sandbox), in this event loop."""

    base_url: str
    admin_key: str
    app: Any
    client: httpx.AsyncClient
    server: uvicorn.Server

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.admin_key}"}

    async def agent_key(self, auto_quote_max_usd: str | None = "1.00", **extra: Any) -> str:
        body = {"scopes": ["llm:chat", "receipts:read", "quotes:create"], **extra}
        if auto_quote_max_usd is not None:
            body["auto_quote_max_usd"] = auto_quote_max_usd
        headers = {**self.auth(), "Idempotency-Key": secrets.token_hex(8)}
        r = await self.client.post("/v1/keys", json=body, headers=headers)
        assert r.status_code == 200, r.text
        secret: str = r.json()["secret"]
        return secret

    async def receipt(self, receipt_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/receipts/{receipt_id}", headers=self.auth())
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def balanced(self) -> dict[str, Any]:
        """The month's reconciliation (test mode): balanced, with no hold left open."""
        period = time.strftime("%Y-%m", time.gmtime())
        r = await self.client.get(
            f"/v1/admin/reconciliation?period={period}&livemode=false", headers=self.auth()
        )
        assert r.status_code == 200, r.text
        report: dict[str, Any] = r.json()
        assert report["balanced"], report["mismatches"]
        db = self.app.state.services.db
        open_holds = await db.fetch_val("SELECT COUNT(*) FROM holds WHERE state = 'open'")
        assert open_holds == 0, f"{open_holds} holds left open"
        return report


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[Live]:
    port = free_port()
    settings = settings.with_(host="127.0.0.1", port=port)
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
            yield Live(base_url, key, app, client, server)
        finally:
            server.should_exit = True
            await task


@contextlib.asynccontextmanager
async def loopback_upstream(
    handler: Callable[[Request], Awaitable[Response]], path: str = "/v1/chat/completions"
) -> AsyncIterator[str]:
    """`handler` served at `path` on its own loopback port, as a scripted provider; yields
    the base URL to give its provider in models.json."""
    port = free_port()
    app = Starlette(routes=[Route(path, handler, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await serving


def point_provider(file: Path, provider: str, base_url: str, **top: Any) -> None:
    """Send `provider`'s calls to `base_url` (and set top-level models.json keys `top`)."""
    data = orjson.loads(file.read_bytes())
    data["providers"][provider]["base_url"] = base_url
    data.update(top)
    file.write_bytes(orjson.dumps(data))
