"""The sandbox served by uvicorn on a free loopback port, for tests that talk to it over a
real socket. Test modules using it run on a module-scoped event loop:
`pytestmark = pytest.mark.asyncio(loop_scope="module")`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolcallstore.sandbox import create_sandbox_app


# One server for the module (stopping uvicorn takes a tenth of a second or more), but a fresh
# sandbox app for every test, so fail_first counters and ids start again.
class Mounted:
    def __init__(self) -> None:
        self.app: ASGIApp = create_sandbox_app()
        self.body_sends = 0  # body messages the app sent, even to a client that has gone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.body_sends += 1
            await send(message)

        await self.app(scope, receive, counted)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[tuple[str, Mounted]]:
    """The sandbox served by uvicorn on a free loopback port."""
    mounted = Mounted()
    config = uvicorn.Config(mounted, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the sandbox server did not start"
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", mounted
    server.should_exit = True
    await task


@pytest_asyncio.fixture(loop_scope="module")
async def mounted(server: tuple[str, Mounted]) -> Mounted:
    server[1].app = create_sandbox_app()
    return server[1]


@pytest_asyncio.fixture(loop_scope="module")
async def base(server: tuple[str, Mounted], mounted: Mounted) -> str:
    return server[0]


@pytest_asyncio.fixture(loop_scope="module")
async def client(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield http
