"""What the adapters share: calling a provider with the failure kinds of base.py, reading
`Retry-After`, and downloading an output as a stream that notices a cut body."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from toolcallstore.media.base import FailureKind, MediaProviderError

DOWNLOAD_CHUNK = 65_536


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date), if the provider sent one."""
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def body_of(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def kind_of_status(status: int) -> FailureKind:
    """Before acceptance: 408/409/429/5xx mean nothing was done (another target may try);
    other 4xx are the provider refusing this input."""
    if status in (408, 409, 429) or status >= 500:
        return "unavailable"
    return "invalid"


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    json: Any = None,
    timeout_s: float,
    submit: bool = False,
) -> httpx.Response:
    """One request; transport failures become MediaProviderError. For a submit, a timeout
    after the request went out is `ambiguous` (the provider may have accepted it); a refused
    connection is `unavailable` (it never got there)."""
    content = None if json is None else orjson.dumps(json)
    all_headers = dict(headers)
    if content is not None:
        all_headers["content-type"] = "application/json"
    try:
        return await http.request(method, url, headers=all_headers, content=content,
                                   timeout=timeout_s)  # fmt: skip
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise MediaProviderError("unavailable", f"{type(exc).__name__}: {exc}"[:300]) from exc
    except httpx.HTTPError as exc:
        kind: FailureKind = "ambiguous" if submit else "unavailable"
        raise MediaProviderError(kind, f"{type(exc).__name__}: {exc}"[:300]) from exc


async def download(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[bytes]:
    """An output's bytes; a body shorter than its Content-Length (a cut download) raises."""
    received = 0
    try:
        async with http.stream("GET", url, headers=headers or {}, timeout=60.0) as response:
            if response.status_code != 200:
                raise MediaProviderError("unavailable", f"download answered {response.status_code}",
                                         status=response.status_code)  # fmt: skip
            expected = response.headers.get("content-length")
            async for chunk in response.aiter_raw(DOWNLOAD_CHUNK):
                received += len(chunk)
                yield chunk
    except httpx.HTTPError as exc:
        raise MediaProviderError("unavailable", f"download cut: {type(exc).__name__}") from exc
    if expected is not None and received != int(expected):
        raise MediaProviderError("unavailable", f"download cut at {received} of {expected} bytes")
