"""The one sender: every translator's request goes out through here, on the shared
`httpx.AsyncClient` (DESIGN §9), and every transport failure comes back as an `UpstreamError`.

Test-mode calls never leave the machine: a target whose base URL is not loopback is sent to the
sandbox fake of its protocol instead (DESIGN §8), so a test key cannot spend real money.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from toolcallstore.lanes.base import Target, Translator, UpstreamError, UpstreamRequest

SANDBOX_PATHS = {"openai": "/openai/v1", "anthropic": "/anthropic/v1", "gemini": "/gemini/v1beta"}
SANDBOX_KEY = "sandbox"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_ERROR_BODY = 64 * 1024


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: one client serves every tenant, so a cookie set by a
    provider for one tenant's call must not ride along on another's. (It also spares httpx
    building urllib request objects to parse Set-Cookie on every response.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def upstream_client() -> httpx.AsyncClient:
    """The shared client (DESIGN §9): httpx on httpx-aiohttp's transport, no cookie jar.

    It asks for bodies as they are (`accept-encoding: identity`): streams and error bodies are
    read raw (`aiter_raw`) and parsed as they come, so a gzipped body, which httpx's default
    `gzip, deflate` would invite, would reach the parsers compressed."""
    client = httpx.AsyncClient(
        transport=AiohttpTransport(), timeout=30.0, headers={"accept-encoding": "identity"}
    )
    # The `cookies` setter would copy into a plain jar; the attribute keeps our class.
    client._cookies = _NoCookies()
    return client


_CLOSED = httpx.ByteStream(b"")  # what a closed upstream response keeps as its stream


class UpstreamFailed(Exception):
    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


def route_target(
    target: Target, api_key: str | None, *, livemode: bool, sandbox_url: str
) -> tuple[Target, str]:
    """Where a call to `target` really goes, and with which key."""
    base = target.base_url.replace("{sandbox}", sandbox_url.rstrip("/"))
    if not livemode and urlsplit(base).hostname not in LOOPBACK_HOSTS:
        base = sandbox_url.rstrip("/") + SANDBOX_PATHS[target.protocol]
        return replace(target, base_url=base), SANDBOX_KEY
    return replace(target, base_url=base), api_key or SANDBOX_KEY


class Sender:
    def __init__(self, http: httpx.AsyncClient, *, connect_timeout_s: float = 10.0) -> None:
        self._http = http
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=None, write=30.0, pool=30.0)

    @contextlib.asynccontextmanager
    async def stream(
        self, translator: Translator, request: UpstreamRequest
    ) -> AsyncIterator[httpx.Response]:
        """The open 2xx response of `request`; a non-2xx answer or a transport failure raises
        UpstreamFailed. Leaving the block closes the connection (the upstream stops)."""
        built = self._http.build_request(
            request.method, _url(request.url), content=orjson.dumps(request.body),
            headers={**request.headers, "content-type": "application/json"},
            timeout=self._timeout,
        )  # fmt: skip
        try:
            response = await self._http.send(built, stream=True)
        except httpx.TransportError as exc:
            raise UpstreamFailed(_transport_error(exc)) from None
        try:
            if response.status_code >= 300:
                body = await _bounded_body(response)
                raise UpstreamFailed(translator.error(response.status_code, response.headers, body))
            yield response
        finally:
            await response.aclose()
            # httpx's response and its stream point at each other (and at aiohttp's response):
            # unlinked once closed, a call's upstream objects go by reference counting instead
            # of piling up for the cycle collector, ~40 objects a call.
            response.stream = _CLOSED


@functools.lru_cache(maxsize=512)
def _url(url: str) -> httpx.URL:
    """Parsed once per endpoint (httpx re-parses a str URL on every request: ~20 us). Keys
    travel in headers, never in these URLs, so the cache holds no secret."""
    return httpx.URL(url)


async def _bounded_body(response: httpx.Response) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY:
                break
    except httpx.StreamConsumed:
        return response.content[:MAX_ERROR_BODY]  # a transport that read it already
    except httpx.TransportError:
        pass  # the status says enough
    return b"".join(chunks)[:MAX_ERROR_BODY]


def _transport_error(exc: httpx.TransportError) -> UpstreamError:
    kind = transport_failure_code(exc)
    cause = _causes(exc)[-1]  # the OS's word for it, not the transport's relabelling
    message = f"{kind}: {type(cause).__name__}: {cause}"[:300]
    return UpstreamError(status=0, code=kind, message=message, retryable=True)


def transport_failure_code(exc: BaseException) -> str:
    """What really failed, by the underlying cause: httpx-aiohttp raises `ConnectTimeout` for
    every aiohttp connection error, a reset or a refused connection included.

    `connection_refused`, `connection_reset` and `connection_error` are connection failures
    (one quick retry); `timeout` is a timeout (the next target)."""
    causes = _causes(exc)
    if any(isinstance(c, TimeoutError) for c in causes):  # asyncio's and aiohttp's too
        return "timeout"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection_refused"
    if any(isinstance(c, ConnectionResetError | BrokenPipeError) for c in causes):
        return "connection_reset"
    if len(causes) > 1 or not isinstance(exc, httpx.TimeoutException):
        return "connection_error"  # an OS or aiohttp connection error, not a timeout
    return "timeout"  # httpx's own timeout, with nothing underneath


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
