"""The floor of this stack for bench/gateway_overhead.py: a bare Starlette pass-through.

    python bench/gateway_passthrough.py --port PORT --upstream http://127.0.0.1:STUB/v1

`POST /v1/chat/completions` reads the body, parses it once with orjson (for its `stream` flag,
as any gateway must), forwards it unchanged to the upstream on one shared `httpx.AsyncClient`
with `httpx_aiohttp.AiohttpTransport` (DESIGN §9), and returns the answer: streamed chunk by
chunk (`StreamingResponse` over `aiter_raw`) for `stream: true`, read whole otherwise. No auth,
no quote, no hold, no settlement, no audit, no log line. Served by uvicorn with the options of
`toolcallstore serve` (uvloop, httptools, no access log).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import httpx
import orjson
import uvicorn
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from toolcallstore.server import tune_gc


def create_app(upstream: str) -> Starlette:
    url = upstream.rstrip("/") + "/chat/completions"
    client: httpx.AsyncClient | None = None

    async def chat(request: Request) -> Response:
        assert client is not None
        body = await request.body()
        stream = orjson.loads(body).get("stream") is True
        headers = {"content-type": "application/json"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        upstream_request = client.build_request("POST", url, content=body, headers=headers)
        response = await client.send(upstream_request, stream=True)
        media_type = response.headers.get("content-type")
        if stream:
            return StreamingResponse(
                response.aiter_raw(),
                status_code=response.status_code,
                media_type=media_type,
                background=BackgroundTask(response.aclose),
            )
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Response(content, status_code=response.status_code, media_type=media_type)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal client
        client = httpx.AsyncClient(transport=AiohttpTransport(), timeout=30.0)
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])],
                     lifespan=lifespan)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9/v1")
    parser.add_argument("--tune-gc", action="store_true",
                        help="the garbage-collector settings of `toolcallstore serve`")  # fmt: skip
    args = parser.parse_args()
    app = create_app(args.upstream)
    if args.tune_gc:
        tune_gc()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
