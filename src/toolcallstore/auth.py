"""API-key authentication (pure ASGI) and scope checks (DESIGN §3)."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from toolcallstore.context import context_of
from toolcallstore.db import Database
from toolcallstore.db.keys import ApiKey, find_active_key
from toolcallstore.errors import PermissionDenied, Unauthenticated
from toolcallstore.responses import send_error

SCOPES = (
    "llm:chat",
    "media:generate",
    "jobs:read",
    "domains:check",
    "domains:register",
    "dns:write",
    "email:provision",
    "quotes:create",
    "approvals:grant",
    "receipts:read",
    "webhooks:manage",
    "billing:manage",
    "keys:manage",
    "admin",
)

# Reachable without a key. /metrics decides for itself (admin key or loopback client).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/stripe/webhook"})
# Asset downloads: the URL's signature, or the published URL's token, is the authorisation.
PUBLIC_PREFIXES = ("/v1/assets/", "/p/", "/v1/provider-webhooks/")
# The operator's status pages (api/admin_page.py): they sign in with a key themselves.
ADMIN_PAGES = "/admin"
# What a suspended tenant's live keys may still reach: who they are, and billing to fix it.
SUSPENDED_ALLOWED = ("/v1/me", "/v1/billing/")


@dataclass(frozen=True)
class Principal:
    key: ApiKey

    @property
    def tenant_id(self) -> str:
        return self.key.tenant_id

    @property
    def key_id(self) -> str:
        return self.key.id

    @property
    def livemode(self) -> bool:
        return self.key.mode == "live"

    def has(self, scope: str) -> bool:
        return scope in self.key.scopes


class KeyCache:
    """Recently resolved keys, so a request costs no query; entries live `ttl` seconds.

    The TTL bounds how long a revocation made by another process goes unseen; revocations
    made by this process drop the entry at once.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, db: Database, ttl: float) -> None:
        self._db = db
        self._ttl = ttl
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def resolve(self, secret: str) -> ApiKey | None:
        digest = hashlib.sha256(secret.encode()).digest()
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await find_active_key(self._db, secret)
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (now + self._ttl, key)
        return key

    def forget(self, key_id: str) -> None:
        for digest, (_, key) in list(self._entries.items()):
            if key is not None and key.id == key_id:
                del self._entries[digest]


def bearer_secret(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyCache,
        suspended: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.suspended = suspended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = context_of(scope)
        secret = bearer_secret(scope)
        key = await self.keys.resolve(secret) if secret else None
        if key is not None:
            ctx.principal = Principal(key)
            if await self._suspended(key, scope["path"]):
                ctx.deny("account_suspended")
                refusal = PermissionDenied(
                    "This account's live keys are suspended: its payment has been failing past"
                    " the grace period. Update the payment method; test keys still work.",
                    code="account_suspended",
                )
                await send_error(send, refusal, ctx.request_id)
                return
        elif (
            scope["path"] not in PUBLIC_PATHS
            and not scope["path"].startswith(PUBLIC_PREFIXES)
            and not is_admin_page(scope["path"])
        ):
            if secret is None:
                ctx.deny("missing_api_key")
                error = Unauthenticated(
                    "No API key provided. Send it as 'Authorization: Bearer tcs_...'."
                )
            else:
                ctx.deny("invalid_api_key")
                error = Unauthenticated("Invalid or revoked API key.", code="invalid_api_key")
            await send_error(send, error, ctx.request_id)
            return
        await self.app(scope, receive, send)

    async def _suspended(self, key: ApiKey, path: str) -> bool:
        if self.suspended is None or key.mode != "live" or path.startswith(SUSPENDED_ALLOWED):
            return False
        return await self.suspended(key.tenant_id)


def is_admin_page(path: str) -> bool:
    return path == ADMIN_PAGES or path.startswith(ADMIN_PAGES + "/")


def is_loopback(address: str | None) -> bool:
    """Whether the real client (behind a trusted proxy: the forwarded one) is this host."""
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def require_scope(request: Request, scope: str) -> Principal:
    """The caller, if its key has `scope`; else 403 insufficient_scope naming it."""
    ctx = context_of(request)
    ctx.scope_needed = scope
    principal = ctx.principal
    if principal is None:
        ctx.deny("missing_api_key")
        raise Unauthenticated("This endpoint needs an API key.")
    if not principal.has(scope):
        ctx.deny(f"insufficient_scope:{scope}")
        raise PermissionDenied(
            f"This API key lacks the scope '{scope}' needed here.", required_scope=scope
        )
    return principal


def authenticated(request: Request) -> Principal:
    """The caller of a route that needs a valid key but no particular scope."""
    principal = context_of(request).principal
    if principal is None:
        raise Unauthenticated("This endpoint needs an API key.")
    return principal


def target_tenant(request: Request, principal: Principal, tenant_id: str | None) -> str:
    """The tenant a call acts on: the caller's own, or any tenant for an `admin` key."""
    if tenant_id is None or tenant_id == principal.tenant_id:
        return principal.tenant_id
    require_scope(request, "admin")
    return tenant_id
