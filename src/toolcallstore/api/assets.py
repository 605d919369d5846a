"""Stored assets over HTTP, without an API key: the signature (or the published URL) is the
authorisation. Also the verify route Caddy's `forward_auth` asks before its `file_server`."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from toolcallstore.errors import APIError, NotFound
from toolcallstore.services import services
from toolcallstore.site.operations import Operation
from toolcallstore.storage.assets import ASSET_PATH, Assets
from toolcallstore.storage.base import Asset
from toolcallstore.storage.keys import OCTET_STREAM
from toolcallstore.validation import Field

ASSET_URI = re.compile(r"^/v1/assets/([A-Za-z0-9_]{1,64})$")
SIGNED_MAX_AGE = 3600
PUBLISHED_MAX_AGE = 86_400


class RangeNotSatisfiable(APIError):
    status = 416
    type = "invalid_request_error"
    code = "range_not_satisfiable"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range (inclusive ends) a `Range: bytes=...` header asks for; None for the whole
    object (no header, a header we do not read, several ranges); 416 if none of it exists."""
    if header is None or not header.startswith("bytes="):
        return None
    first, sep, last = header[6:].strip().partition("-")
    first, last = first.strip(), last.strip()
    if not sep or "," in last or not all(p.isascii() and p.isdigit() for p in (first, last) if p):
        return None
    if not first:
        if not last:
            return None
        if int(last) == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"The range asks for bytes beyond the asset's {size}.",
                               headers={"Content-Range": f"bytes */{size}"})  # fmt: skip


def _headers(asset: Asset, max_age: int, visibility: str) -> dict[str, str]:
    disposition = "attachment" if asset.content_type == OCTET_STREAM else "inline"
    return {
        "etag": f'"{asset.sha256}"',
        "accept-ranges": "bytes",
        "cache-control": f"{visibility}, max-age={max(0, max_age)}",
        "content-disposition": disposition,
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
    }


class WholeFile(FileResponse):
    """A FileResponse that leaves Range to us: the same answers on every backend."""

    # Four times Starlette's 64 KiB: a quarter of the thread hops per file.
    chunk_size = 256 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": headers}, receive, send)


async def asset_response(assets: Assets, asset: Asset, request: Request, max_age: int,
                         visibility: str) -> Response:  # fmt: skip
    headers = _headers(asset, max_age, visibility)
    if request.headers.get("if-none-match") == headers["etag"]:
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    wanted = None if if_range not in (None, headers["etag"]) else request.headers.get("range")
    span = byte_range(wanted, asset.size)
    path = assets.storage.local_path(asset.storage_key)
    if span is None and path is not None:
        try:
            stat = await anyio.to_thread.run_sync(os.stat, path)
        except FileNotFoundError:
            raise NotFound("No such asset.", param="asset_id") from None
        return WholeFile(path, headers=headers, media_type=asset.content_type, stat_result=stat)
    start, end = span if span is not None else (0, asset.size - 1)
    status = 200
    if span is not None:
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{asset.size}"
    headers["content-length"] = str(end - start + 1)
    if request.method == "HEAD" or asset.size == 0:
        return Response(status_code=status, headers=headers, media_type=asset.content_type)
    body = await _first_then_rest(assets.storage.open(asset.storage_key, start, end))
    return StreamingResponse(body, status_code=status, headers=headers,
                             media_type=asset.content_type)  # fmt: skip


async def _first_then_rest(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Read the first chunk before answering, so a vanished object is a 404, not a cut body."""
    try:
        first = await anext(chunks)
    except (KeyError, StopAsyncIteration):
        raise NotFound("No such asset.", param="asset_id") from None

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return rest()


async def download(request: Request) -> Response:
    assets = services(request).assets
    asset_id = request.path_params["asset_id"]
    assets.verify(ASSET_PATH + asset_id, request.query_params)
    asset = await assets.get(asset_id)
    if asset is None:
        raise NotFound("No such asset.", param="asset_id")
    max_age = min(SIGNED_MAX_AGE, int(request.query_params["exp"]) - int(time.time()))
    return await asset_response(assets, asset, request, max_age, "private")


async def verify(request: Request) -> Response:
    """For Caddy's forward_auth: 200 with the file to serve (X-Asset-Key, relative to the
    assets directory) and its type, else the same 403/404/410 the download would give."""
    assets = services(request).assets
    uri = urlsplit(request.headers.get("x-forwarded-uri", ""))
    match = ASSET_URI.match(uri.path)
    if match is None or request.headers.get("x-forwarded-method", "GET") not in ("GET", "HEAD"):
        raise NotFound("Not an asset URL.", param="asset_id")
    assets.verify(uri.path, dict(parse_qsl(uri.query)))
    asset = await assets.get(match[1])
    if asset is None:
        raise NotFound("No such asset.", param="asset_id")
    headers = {"x-asset-key": asset.storage_key, "x-asset-content-type": asset.content_type,
               "x-asset-etag": f'"{asset.sha256}"'}  # fmt: skip
    return Response(status_code=200, headers=headers)


async def published(request: Request) -> Response:
    assets = services(request).assets
    asset = await assets.published(request.path_params["asset_id"], request.path_params["name"])
    if asset is None:
        raise NotFound("No such published asset.")
    return await asset_response(assets, asset, request, PUBLISHED_MAX_AGE, "public")


routes = [
    Route("/v1/assets/verify", verify, methods=["GET"]),
    Route("/v1/assets/{asset_id}", download, methods=["GET"]),
    Route("/p/{asset_id}/{name}", published, methods=["GET"]),
]

SIGNED_QUERY = {
    "exp": Field(int, required=True),
    "kid": Field(str, required=True, max_length=32),
    "sig": Field(str, required=True, max_length=64),
}
# HEAD answers the same headers; 304 answers If-None-Match naming the ETag (the sha256).
BINARY = {200: "Binary", 206: "Binary", 304: "Empty"}
DOWNLOAD_ERRORS = {403: ("invalid_signature",), 410: ("expired",), 416: ("range_not_satisfiable",)}
operations = [
    Operation("GET", "/v1/assets/verify", "Caddy forward_auth: is X-Forwarded-Uri a valid signed"
              " asset URL", "assets", "public", responses={200: "Empty"},
              errors={403: ("invalid_signature",), 404: ("not_found",), 410: ("expired",)}),
    Operation("GET", "/v1/assets/{asset_id}", "Download an asset through its signed URL",
              "assets", "public", query=SIGNED_QUERY, responses=BINARY,
              errors=DOWNLOAD_ERRORS),
    Operation("GET", "/p/{asset_id}/{name}", "A published asset (permanent public URL)",
              "assets", "public", responses=BINARY,
              errors={416: ("range_not_satisfiable",)}),
]  # fmt: skip
