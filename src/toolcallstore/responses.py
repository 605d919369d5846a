"""orjson responses and the error envelope, usable from endpoints and from pure ASGI code."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

from toolcallstore.errors import APIError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: APIError, request_id: str) -> JSONResponse:
    return JSONResponse(error.envelope(request_id), status_code=error.status, headers=error.headers)


async def send_error(send: Send, error: APIError, request_id: str) -> None:
    """Send the error envelope from pure ASGI middleware, before any route has run."""
    body = orjson.dumps(error.envelope(request_id))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
