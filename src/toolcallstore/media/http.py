"""What the adapters share: calling a provider with the failure kinds of base.py, reading
`Retry-After`, and downloading an output as a stream that notices a cut body.

A transport failure is `unavailable` when the request cannot have reached the provider (the
connection was refused or never made) and, for a submit, `ambiguous` otherwise: the provider may
have accepted it, so the job must look it up before submitting anywhere again. A poll that fails
on the wire is `unavailable`: polling again is always safe. httpx-aiohttp reports most aiohttp
errors as `ConnectTimeout`, a connection dropped after the request went out included, so what
happened is read from the exception's causes (as `lanes/sender.py` does), not its type.
"""

from __future__ import annotations

import base64
import email.utils
import struct
import time
from collections.abc import AsyncIterator
from decimal import ROUND_CEILING, Decimal
from typing import Any

import aiohttp
import httpx
import orjson

from toolcallstore.media.base import FailureKind, MediaProviderError, Output

DOWNLOAD_CHUNK = 65_536
_NOT_SENT = (ConnectionRefusedError, aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


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


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def nothing_sent(exc: httpx.HTTPError) -> bool:
    """Whether the request surely never reached the provider."""
    causes = _causes(exc)
    if any(isinstance(c, _NOT_SENT) for c in causes):
        return True
    if len(causes) == 1:  # httpx's own transport, with nothing underneath
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return False


def transport_error(provider: str, exc: httpx.HTTPError, *, submit: bool) -> MediaProviderError:
    kind: FailureKind = "ambiguous" if submit and not nothing_sent(exc) else "unavailable"
    cause = _causes(exc)[-1]
    return MediaProviderError(kind, f"{provider}: {type(cause).__name__}: {cause}"[:300])


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
    """One request; transport failures become MediaProviderError. For a submit, a failure
    after the request went out (a timeout, a dropped connection) is `ambiguous` (the provider
    may have accepted it); a refused connection is `unavailable` (it never got there)."""
    content = None if json is None else orjson.dumps(json)
    all_headers = dict(headers)
    if content is not None:
        all_headers["content-type"] = "application/json"
    try:
        return await http.request(method, url, headers=all_headers, content=content,
                                   timeout=timeout_s)  # fmt: skip
    except httpx.HTTPError as exc:
        raise transport_error(url.split("/")[2] if "//" in url else url, exc,
                              submit=submit) from exc  # fmt: skip


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


# What the Stability, Leonardo, Runware and Gemini adapters add: errors from a status with the
# provider's message, inline outputs, and reported costs.


def status_kind(status: int) -> FailureKind:
    """`kind_of_status`, and the credential/credit refusals (401, 402, 403) are `unavailable`
    too: nothing was done, and another target (another account) may accept the request."""
    return "unavailable" if status in (401, 402, 403) else kind_of_status(status)


def http_error(
    provider: str, response: httpx.Response, message: str, kind: FailureKind | None = None
) -> MediaProviderError:
    status = response.status_code
    return MediaProviderError(
        kind or status_kind(status),
        f"{provider} {status}: {message}"[:500],
        status=status,
        retry_after=retry_after(response),
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
    return int((amount * 1_000_000).to_integral_value(rounding=ROUND_CEILING))


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


async def download_output(
    http: httpx.AsyncClient, provider: str, output: Output
) -> AsyncIterator[bytes]:
    """An output's bytes: inline ones at once, a URL's as they arrive (`download`)."""
    if output.data is not None:
        yield output.data
        return
    if output.url is None:
        raise MediaProviderError("failed", f"{provider}: an output with neither data nor URL")
    async for chunk in download(http, output.url):
        yield chunk
