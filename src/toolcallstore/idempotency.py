"""Stripe-style idempotency for POST endpoints (DESIGN §5.5).

An endpoint validates its input first (rejections are never stored, so the agent can fix the
request and retry with the same key), then hands its side effects to `Idempotency.run`:

1. claim: insert (api key, Idempotency-Key, fingerprint) as `running`, or find the earlier
   request: same fingerprint and done -> replay it; still running -> 409
   `idempotency_key_in_use`; different fingerprint -> 422 `idempotency_key_reused`.
2. execute: the endpoint's work and the stored response commit in one transaction, so a crash
   leaves either both or neither; a claim whose transaction never committed can be taken over
   once its lock is older than `lock_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from toolcallstore.auth import Principal
from toolcallstore.context import context_of
from toolcallstore.db import Database, Transaction
from toolcallstore.errors import APIError, Conflict, InternalError, InvalidRequest, Unprocessable
from toolcallstore.ids import now_us
from toolcallstore.responses import JSONResponse

log = logging.getLogger("toolcallstore.idempotency")

MAX_KEY_LENGTH = 255
# Rejections the agent can fix and retry with the same key: their transaction changed nothing.
UNSTORED_STATUSES = frozenset({400, 401, 402, 403, 404, 422, 429})

Execute = Callable[[Transaction], Awaitable[tuple[int, Any]]]
Redact = Callable[[Any], Any]


def idempotency_key(request: Request) -> str:
    """The required Idempotency-Key of a create/execute POST; 400 when absent or malformed."""
    key = optional_idempotency_key(request)
    if key is None:
        raise InvalidRequest(
            "This request needs an 'Idempotency-Key' header (1-255 characters, a UUID is "
            "a good choice) so that retrying it can never do the work twice.",
            code="idempotency_key_required",
        )
    return key


def optional_idempotency_key(request: Request) -> str | None:
    raw = request.headers.get("idempotency-key")
    if raw is not None and (not 1 <= len(raw) <= MAX_KEY_LENGTH or not raw.isprintable()):
        raise InvalidRequest(
            "The 'Idempotency-Key' header must be 1-255 printable characters.",
            code="idempotency_key_invalid",
        )
    return raw


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


class Idempotency:
    def __init__(self, db: Database, *, lock_seconds: int) -> None:
        self._db = db
        self._lock_us = lock_seconds * 1_000_000

    async def run(
        self,
        request: Request,
        principal: Principal,
        key: str,
        body: Any,
        execute: Execute,
        *,
        redact: Redact | None = None,
    ) -> Response:
        """Run `execute` once per key; repeats get the stored response, passed through `redact`
        first when it holds a secret that must be shown only once."""
        claim = await self.begin(request, principal, key, body)
        if isinstance(claim, Response):
            return claim
        try:
            async with self._db.transaction() as tx:
                status, content = await execute(tx)
                stored = content if redact is None else redact(content)
                await claim.store(tx, status, stored)
        except APIError as error:
            if error.status in UNSTORED_STATUSES:
                await claim.release()
                raise
            status, content = await claim.store_failure(error)
        except Exception:
            log.exception("idempotent request failed")
            failure = InternalError("The request failed on our side; it made no changes.")
            status, content = await claim.store_failure(failure)
        return JSONResponse(content, status_code=status)

    async def begin(
        self, request: Request, principal: Principal, key: str, body: Any
    ) -> Claim | Response:
        """Claim the key for a request whose work spans several transactions, or return the
        stored response (409/422 raised as for `run`)."""
        ids = {"api_key_id": principal.key_id, "key": key}
        fp = fingerprint(request.method, request.url.path, body)
        replay = await self._claim(ids, principal.tenant_id, fp)
        if replay is None:
            return Claim(self, ids, context_of(request).request_id)
        context_of(request).reason = "idempotent_replay"
        status, content = replay
        response = JSONResponse(content, status_code=status)
        response.headers["Idempotent-Replayed"] = "true"
        return response

    async def _claim(self, ids: dict[str, str], tenant_id: str, fp: str) -> tuple[int, Any] | None:
        now = now_us()
        async with self._db.transaction() as tx:
            inserted = await tx.fetch_one(
                "INSERT INTO idempotency_keys (api_key_id, key, tenant_id, fingerprint, state,"
                " created_at, locked_at) VALUES (:api_key_id, :key, :tenant_id, :fp, 'running',"
                " :now, :now) ON CONFLICT (api_key_id, key) DO NOTHING RETURNING state",
                {**ids, "tenant_id": tenant_id, "fp": fp, "now": now},
            )
            if inserted is not None:
                return None
            row = await tx.fetch_one(
                "SELECT fingerprint, state, status, response_body, locked_at"
                " FROM idempotency_keys WHERE api_key_id = :api_key_id AND key = :key",
                ids,
            )
            assert row is not None
            if row["fingerprint"] != fp:
                raise Unprocessable(
                    "This Idempotency-Key was already used with a different request (method, "
                    "path or body). Use a new key for a new request.",
                    code="idempotency_key_reused",
                )
            if row["state"] == "done":
                return int(row["status"]), orjson.loads(row["response_body"])
            if row["locked_at"] > now - self._lock_us:
                raise Conflict(
                    "A request with this Idempotency-Key is still being processed; retry "
                    "after it finishes to receive its result.",
                    headers={"Retry-After": "1"},
                )
            # The first attempt died before its transaction committed: nothing happened.
            await tx.execute(
                "UPDATE idempotency_keys SET locked_at = :now"
                " WHERE api_key_id = :api_key_id AND key = :key",
                {**ids, "now": now},
            )
            return None


@dataclass(frozen=True)
class Claim:
    """A claimed key: the request's outcome is stored with `store` in the transaction that
    makes its last change, or the key is released for a rejection that changed nothing."""

    idempotency: Idempotency
    ids: dict[str, str]
    request_id: str

    async def store(self, tx: Transaction, status: int, content: Any) -> None:
        await store_response(tx, self.ids["api_key_id"], self.ids["key"], status, content)

    async def store_failure(self, error: APIError) -> tuple[int, Any]:
        content = error.envelope(self.request_id)
        async with self.idempotency._db.transaction() as tx:
            await self.store(tx, error.status, content)
        return error.status, content

    async def release(self) -> None:
        async with self.idempotency._db.transaction() as tx:
            await tx.execute(
                "DELETE FROM idempotency_keys WHERE api_key_id = :api_key_id AND key = :key"
                " AND state = 'running'",
                self.ids,
            )


async def store_response(
    tx: Transaction, api_key_id: str, key: str, status: int, content: Any
) -> None:
    """Record the response a key replays (also used by whoever finishes an abandoned request)."""
    await tx.execute(
        "UPDATE idempotency_keys SET state = 'done', status = :status, response_body = :body"
        " WHERE api_key_id = :api_key_id AND key = :key",
        {"api_key_id": api_key_id, "key": key, "status": status,
         "body": orjson.dumps(content).decode()},
    )  # fmt: skip


async def prune_idempotency_keys(db: Database, older_than_us: int, chunk: int = 1000) -> int:
    """Delete keys created before `older_than_us`, a chunk per transaction; returns the count."""
    total = 0
    while True:
        async with db.transaction() as tx:
            rows = await tx.fetch_all(
                "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN (SELECT api_key_id, key"
                " FROM idempotency_keys WHERE created_at < :cutoff LIMIT :n) RETURNING key",
                {"cutoff": older_than_us, "n": chunk},
            )
        total += len(rows)
        if len(rows) < chunk:
            return total
