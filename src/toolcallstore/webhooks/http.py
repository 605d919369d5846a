"""The webhook poster: httpx requests on httpx-aiohttp's transport (DESIGN §9), one transport
per mode, each with its own guarded resolver, no cookie jar, no redirects, 15 s for the whole
exchange and at most 64 kB of the answer read."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from toolcallstore.webhooks.base import Reply
from toolcallstore.webhooks.guard import BlockedDestination, GuardedResolver, url_problem

TIMEOUT_S = 15.0
MAX_RESPONSE_BYTES = 64 * 1024
KEPT_BODY_CHARS = 1024
MAX_CONNECTIONS = 256


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: the schedule applies
    return seconds if seconds >= 0 else None


def _blocked_cause(exc: BaseException) -> BlockedDestination | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedDestination):
            return seen
        nested = getattr(seen, "os_error", None)
        if isinstance(nested, BlockedDestination):
            return nested
        seen = seen.__cause__ or seen.__context__
    return None


async def _read_capped(response: httpx.Response) -> bytes:
    kept = bytearray()
    async for chunk in response.stream:  # type: ignore[union-attr]
        kept += chunk
        if len(kept) >= MAX_RESPONSE_BYTES:
            break
    return bytes(kept[:MAX_RESPONSE_BYTES])


class HttpPoster:
    def __init__(self, *, connections: int = MAX_CONNECTIONS) -> None:
        self._connections = connections
        self._transports: dict[bool, AiohttpTransport] = {}

    def _transport(self, livemode: bool) -> AiohttpTransport:
        found = self._transports.get(livemode)
        if found is None:

            def session() -> aiohttp.ClientSession:
                connector = aiohttp.TCPConnector(
                    resolver=GuardedResolver(livemode=livemode), limit=self._connections
                )
                return aiohttp.ClientSession(
                    connector=connector, cookie_jar=aiohttp.DummyCookieJar()
                )

            found = self._transports[livemode] = AiohttpTransport(client=session)
        return found

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, livemode: bool
    ) -> Reply:
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        problem = url_problem(url, livemode=livemode)
        if problem is not None:
            return Reply(None, 0, error=f"refused: {problem}", blocked=True)
        timeouts = {"connect": TIMEOUT_S, "read": TIMEOUT_S, "write": TIMEOUT_S, "pool": TIMEOUT_S}
        request = httpx.Request(
            "POST", url, content=body, headers=headers, extensions={"timeout": timeouts}
        )
        try:
            async with asyncio.timeout(TIMEOUT_S):
                response = await self._transport(livemode).handle_async_request(request)
                try:
                    raw = await _read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            return Reply(None, elapsed(), error=f"no answer within {TIMEOUT_S:g} s")
        except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:
            blocked = _blocked_cause(exc)
            if blocked is not None:
                return Reply(None, elapsed(), error=f"refused: {blocked}", blocked=True)
            return Reply(None, elapsed(), error=f"{type(exc).__name__}: {exc}"[:500])
        return Reply(
            response.status_code,
            elapsed(),
            body=raw[:KEPT_BODY_CHARS].decode("utf-8", "replace"),
            retry_after_s=_retry_after(response.headers.get("retry-after")),
            abort=response.headers.get("webhook-delivery", "").lower() == "abort-message",
        )

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()
