"""Per-key and per-tenant token buckets (pure ASGI, in memory, O(1) per request).

Every authenticated request takes one token from its key's bucket and one from its tenant's.
A bucket holds up to `burst` tokens and refills at `rate` tokens per second; a request that
finds either bucket empty is answered 429 `rate_limited` with `Retry-After` (whole seconds
until a token is back) and takes no token from the other. The 429 is sent REFUSAL_DELAY_S (1 s)
after the request came: a client that resends at once is slowed to one refusal a second per
connection, instead of making this process spend its CPU refusing it (the flood of issue 22).
A key may carry its own rate and burst (`rate_limit_per_s`, `rate_limit_burst`); the tenant's
bucket and keys without their own use the server's settings. A rate of 0 in the settings turns
that bucket off.

Every answer to an authenticated request carries the headers of the IETF draft
(draft-ietf-httpapi-ratelimit-headers, the separate-fields form) for the bucket nearer to
empty: `RateLimit-Limit` (its burst), `RateLimit-Remaining` (whole tokens left) and
`RateLimit-Reset` (seconds until it is full again).

Buckets live in this process only: no database work on the request path. With
`serve --processes N` each process enforces rate/N and burst/N (at least 1), so the processes
together never admit more than the configured rate; a client whose connections all land on one
process gets its share of that process only (see the README).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolcallstore.auth import PUBLIC_PATHS
from toolcallstore.context import context_of
from toolcallstore.db.keys import ApiKey
from toolcallstore.errors import APIError
from toolcallstore.responses import send_error
from toolcallstore.validation import invalid

MAX_RATE_PER_S = 1_000_000
MAX_BURST = 10_000_000


def rate_limit_of(params: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """The key's own rate (requests per second, > 0) and burst (>= 1), if given."""
    rate = params.get("rate_limit_per_s")
    if rate is not None:
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (0 < rate <= MAX_RATE_PER_S)
        ):
            raise invalid(
                "rate_limit_per_s",
                f"'rate_limit_per_s' must be a number above 0 and at most {MAX_RATE_PER_S}.",
            )
        rate = float(rate)
    burst = params.get("rate_limit_burst")
    if burst is not None and not 1 <= burst <= MAX_BURST:
        raise invalid(
            "rate_limit_burst", f"'rate_limit_burst' must be an integer from 1 to {MAX_BURST}."
        )
    return rate, burst


REFUSAL_DELAY_S = 1.0


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


@dataclass(frozen=True)
class Limits:
    """The server's defaults (requests per second and burst; rate 0 = no limit)."""

    key_per_s: float
    key_burst: int
    tenant_per_s: float
    tenant_burst: int
    processes: int = 1


class Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def wait_for_one(self) -> float:
        """Seconds until a token is back."""
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def until_full(self) -> float:
        return max(0.0, (self.burst - self.tokens) / self.rate)


class RateLimiter:
    # Past this many buckets, full ones (idle long enough to refill) are dropped.
    MAX_BUCKETS = 100_000

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.share = max(1, limits.processes)
        self._keys: dict[str, Bucket] = {}
        self._tenants: dict[str, Bucket] = {}

    def _bucket(
        self, table: dict[str, Bucket], name: str, rate: float, burst: int, now: float
    ) -> Bucket | None:
        bucket = table.get(name)
        if bucket is None:
            if rate <= 0:
                return None
            if len(table) >= self.MAX_BUCKETS:
                self._prune(table, now)
            share = self.share
            bucket = table[name] = Bucket(rate / share, max(1.0, burst / share), now)
        bucket.refill(now)
        return bucket

    @staticmethod
    def _prune(table: dict[str, Bucket], now: float) -> None:
        for name in [n for n, b in table.items() if b.refill(now) >= b.burst]:
            del table[name]
        if len(table) >= RateLimiter.MAX_BUCKETS:  # all busy: forget the oldest half
            for name in list(table)[: len(table) // 2]:
                del table[name]

    def take(self, key: ApiKey, now: float | None = None) -> tuple[Bucket | None, str | None]:
        """Take a token from the key's and the tenant's bucket. Returns the bucket to report
        (nearer to empty; None when neither is limited) and, when refused, which one refused
        ("key" or "tenant"); a refusal takes nothing."""
        now = time.monotonic() if now is None else now
        limits = self.limits
        if key.rate_limit_per_s is not None:
            key_rate = key.rate_limit_per_s
            key_burst = key.rate_limit_burst or max(1, math.ceil(key_rate))
        else:
            key_rate, key_burst = limits.key_per_s, key.rate_limit_burst or limits.key_burst
        by_key = self._bucket(self._keys, key.id, key_rate, key_burst, now)
        by_tenant = self._bucket(
            self._tenants, key.tenant_id, limits.tenant_per_s, limits.tenant_burst, now
        )
        if by_key is not None and by_key.tokens < 1:
            return by_key, "key"
        if by_tenant is not None and by_tenant.tokens < 1:
            return by_tenant, "tenant"
        if by_key is not None:
            by_key.tokens -= 1
        if by_tenant is not None:
            by_tenant.tokens -= 1
        if by_key is None or (by_tenant is not None and by_tenant.tokens < by_key.tokens):
            return by_tenant, None
        return by_key, None


def headers_of(bucket: Bucket) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-limit", str(int(bucket.burst)).encode()),
        (b"ratelimit-remaining", str(max(0, int(bucket.tokens))).encode()),
        (b"ratelimit-reset", str(math.ceil(bucket.until_full())).encode()),
    ]


class RateLimitMiddleware:
    """Runs after authentication: requests without a valid key are not counted here (they are
    refused before any work, and their audit rows are written like any denial)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = context_of(scope)
        principal = ctx.principal
        if principal is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        bucket, refused_by = self.limiter.take(principal.key)
        if bucket is None:
            await self.app(scope, receive, send)
            return
        if refused_by is not None:
            ctx.deny(f"rate_limited:{refused_by}")
            # A client that ignores Retry-After and resends at once can no longer make this
            # process spend its time refusing it: one refusal a second per connection.
            await asyncio.sleep(REFUSAL_DELAY_S)
            bucket.refill(time.monotonic())
            retry = max(1, math.ceil(bucket.wait_for_one()))
            error = RateLimited(
                f"Too many requests for this {'API key' if refused_by == 'key' else 'tenant'}:"
                f" at most {bucket.rate * self.limiter.share:g} per second"
                f" (bursts of {int(bucket.burst * self.limiter.share)}). Retry after {retry} s.",
                headers={"Retry-After": str(retry)},
                limit_source=refused_by,
                retry_after_s=retry,
            )
            await send_error(_with_headers(send, headers_of(bucket)), error, ctx.request_id)
            return
        await self.app(scope, receive, _with_headers(send, headers_of(bucket)))


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sending
