"""The sandbox (media fakes included) served by uvicorn on a free loopback port, and the shared
upstream client the adapters use in the app. Test modules using them run on a module-scoped
event loop: `pytestmark = pytest.mark.asyncio(loop_scope="module")`."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
import uvicorn
from PIL import Image
from starlette.types import Receive, Scope, Send

from toolcallstore.lanes.sender import upstream_client
from toolcallstore.media.base import MediaProvider, Output
from toolcallstore.sandbox import create_sandbox_app


class Sandbox:
    def __init__(self) -> None:
        self.app = create_sandbox_app()
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def submissions(self, provider: str) -> dict[str, object]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.url}/{provider}/_submissions")
            response.raise_for_status()
            return dict(response.json())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox()
    config = uvicorn.Config(sandbox, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the sandbox server did not start"
        await asyncio.sleep(0.005)
    sandbox.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    yield sandbox
    server.should_exit = True
    await task


@pytest_asyncio.fixture(loop_scope="module")
async def sandbox(served: Sandbox) -> Sandbox:
    """A fresh sandbox app (counters, jobs and fail_first start again) on the module's server."""
    served.app = create_sandbox_app()
    return served


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = upstream_client()
    yield client
    await client.aclose()


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def fetch(provider: MediaProvider, output: Output) -> bytes:
    return b"".join([chunk async for chunk in provider.download(output)])


def decoded(data: bytes) -> Image.Image:
    """The image Pillow reads from `data`, fully decoded."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
