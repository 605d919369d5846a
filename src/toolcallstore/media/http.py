"""What the media adapters share on the wire: sending on the shared `httpx.AsyncClient` with every
transport failure turned into a `MediaProviderError` of the right kind, the usual mapping of an
HTTP error status, and downloads.

A transport failure is `unavailable` when the request cannot have reached the provider (the
connection was refused or never made) and, for a submit, `ambiguous` otherwise: the provider may
have accepted it, so the job must look it up before submitting anywhere again. A poll that fails
on the wire is `unavailable`: polling again is always safe.

httpx-aiohttp reports most aiohttp errors as `ConnectTimeout`, a dropped connection included,
so what happened is read from the exception's causes, as `lanes/sender.py` does.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx
import orjson

from toolcallstore.media.base import FailureKind, MediaProviderError, Output

SANDBOX_KEY = "sandbox"
MAX_ERROR_BODY = 64 * 1024
DOWNLOAD_CHUNK = 64 * 1024
_NOT_SENT = (ConnectionRefusedError, aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def nothing_sent(exc: httpx.TransportError) -> bool:
    """Whether the request surely never reached the provider."""
    causes = _causes(exc)
    if any(isinstance(c, _NOT_SENT) for c in causes):
        return True
    if len(causes) == 1:  # httpx's own transport, with nothing underneath
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return False


def transport_error(
    provider: str, exc: httpx.TransportError, *, submit: bool
) -> MediaProviderError:
    kind: FailureKind = "ambiguous" if submit and not nothing_sent(exc) else "unavailable"
    cause = _causes(exc)[-1]
    return MediaProviderError(kind, f"{provider}: {type(cause).__name__}: {cause}"[:300])


def retry_after(headers: httpx.Headers) -> float | None:
    """The `Retry-After` header in seconds (a number or an HTTP date), if there is one."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_kind(status: int) -> FailureKind:
    """What an HTTP error status means when the body says nothing more: 429, 5xx and the
    credential/credit refusals (401, 402, 403) did nothing and the next target may work; other
    4xx reject the input."""
    if status == 429 or status >= 500 or status in (401, 402, 403, 408, 409):
        return "unavailable"
    return "invalid"


def error_json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content[:MAX_ERROR_BODY])
    except orjson.JSONDecodeError:
        return None


def http_error(
    provider: str, response: httpx.Response, message: str, kind: FailureKind | None = None
) -> MediaProviderError:
    status = response.status_code
    return MediaProviderError(
        kind or status_kind(status),
        f"{provider} {status}: {message}"[:500],
        status=status,
        retry_after=retry_after(response.headers),
    )


def usd_to_micros(value: Any) -> int | None:
    """A provider's USD amount (a JSON number) in micro-dollars, rounded up; None if absent."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return int((amount * 1_000_000).to_integral_value(rounding="ROUND_CEILING"))


def image_size(data: bytes) -> tuple[int | None, int | None]:
    """A PNG's width and height from its header; (None, None) for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None, None


def inline_output(content_type: str, data: bytes) -> Output:
    width, height = image_size(data)
    return Output(content_type=content_type, data=data, width=width, height=height)


def b64decode(provider: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise MediaProviderError("failed", f"{provider}: an image without data")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise MediaProviderError("failed", f"{provider}: image data is not base64") from None


def content_type_of(url: str, default: str = "image/png") -> str:
    path = url.split("?", 1)[0].lower()
    for ending, kind in ((".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"),
                         (".webp", "image/webp"), (".mp4", "video/mp4")):  # fmt: skip
        if path.endswith(ending):
            return kind
    return default


async def download(
    http: httpx.AsyncClient, provider: str, output: Output, *, timeout: float = 120.0
) -> AsyncIterator[bytes]:
    """An output's bytes: inline ones at once, a URL's as they arrive. A download that fails or
    is cut short raises `unavailable` (downloading again is safe)."""
    if output.data is not None:
        yield output.data
        return
    if output.url is None:
        raise MediaProviderError("failed", f"{provider}: an output with neither data nor URL")
    try:
        async with http.stream("GET", output.url, timeout=timeout) as response:
            if response.status_code >= 300:
                await response.aread()
                raise http_error(provider, response, "download failed", "unavailable")
            expected = response.headers.get("content-length")
            size = 0
            async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                size += len(chunk)
                yield chunk
            if expected is not None and expected.isdigit() and size != int(expected):
                raise MediaProviderError(
                    "unavailable", f"{provider}: download cut at {size} of {expected} bytes"
                )
    except httpx.TransportError as exc:
        raise transport_error(provider, exc, submit=False) from None
