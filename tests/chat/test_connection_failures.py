"""A target whose connections are reset or refused, on real loopback sockets: the attempt is
named for what happened (not a timeout) and gets the one quick retry before the next target."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.chat.helpers import Live, live_server, models_file, point_provider, target_id
from tests.conftest import free_port
from toolcallstore.settings import Settings

PROVIDERS = {"broken": ("openai", None), "fast": ("openai", None)}
LANES = {"fallback": ["broken", "fast"]}


@contextlib.asynccontextmanager
async def resetting_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server that reads the request, then resets the connection (SO_LINGER 0:
    an RST, not a FIN); yields its base URL and a list that counts the connections."""
    seen: list[int] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        await reader.read(1024)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        server.close()
        await server.wait_closed()


async def call(live: Live) -> httpx.Response:
    key = await live.agent_key()
    body = {"model": "fallback", "messages": [{"role": "user", "content": "hi"}]}
    return await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))


def outcomes(r: httpx.Response) -> list[tuple[str, str, str, Any]]:
    attempts = r.json()["toolcall"]["attempts"]
    return [(a["target"], a["role"], a["outcome"], (a["error"] or {}).get("code"))
            for a in attempts]  # fmt: skip


async def test_a_reset_connection_is_named_a_reset_and_retried_once_before_failing_over(
    settings: Settings, tmp_path: Path
) -> None:
    file = models_file(tmp_path, PROVIDERS, LANES, hedge_after_ms=0)
    async with resetting_server() as (base_url, seen):
        point_provider(file, "broken", base_url)
        async with live_server(settings.with_(models_file=str(file))) as live:
            r = await call(live)
            assert r.status_code == 200, r.text
            assert outcomes(r) == [
                (target_id("broken"), "primary", "failed", "connection_reset"),
                (target_id("broken"), "retry", "failed", "connection_reset"),
                (target_id("fast"), "failover", "succeeded", None),
            ]
            assert len(seen) == 2  # the request reached it twice: the quick retry
            await live.balanced()


async def test_a_refused_connection_is_named_refused_and_retried_once(
    settings: Settings, tmp_path: Path
) -> None:
    file = models_file(tmp_path, PROVIDERS, LANES, hedge_after_ms=0)
    point_provider(file, "broken", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens
    async with live_server(settings.with_(models_file=str(file))) as live:
        r = await call(live)
        assert r.status_code == 200, r.text
        assert outcomes(r) == [
            (target_id("broken"), "primary", "failed", "connection_refused"),
            (target_id("broken"), "retry", "failed", "connection_refused"),
            (target_id("fast"), "failover", "succeeded", None),
        ]
        await live.balanced()
