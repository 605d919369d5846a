"""Servers on real loopback sockets inside the test's event loop: the sandbox (whose Stripe
fake the official `stripe` SDK talks to) and the app itself (which the fake's signed events
reach over HTTP)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import uvicorn

from tests.conftest import free_port

STRIPE_KEY = "sk_test_sandbox"
WEBHOOK_SECRET = "whsec_test_" + "s3cr3t" * 4


class Served:
    """`app` served by uvicorn on a free loopback port until `stop()`."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Served:
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 20
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


async def emit(stripe_base: str, target: str, type_: str, obj: dict[str, Any],
               **event: Any) -> dict[str, Any]:  # fmt: skip
    """Have the fake sign a Stripe event and POST it to our webhook; its answer."""
    spec = {"type": type_, "object": obj, "url": target, "secret": WEBHOOK_SECRET, **event}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stripe_base}/_emit", json=spec)
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found
