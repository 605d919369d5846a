"""Stripe-style idempotency for POST endpoints (DESIGN §5.5).

An endpoint validates its input first (rejections are never stored, so the agent can fix the
request and retry with the same key), then hands its side effects to `Idempotency.run` (or
`run_sync`, or claims the key itself with `claim_in` when its work spans two transactions):

1. claim: insert (api key, Idempotency-Key, fingerprint) as `running`, or find the earlier
   request: same fingerprint and done -> replay it; still running -> 409
   `idempotency_key_in_use`; different fingerprint -> 422 `idempotency_key_reused`.
2. execute: the endpoint's work and the stored response commit in one transaction, so a crash
   leaves either both or neither; a claim whose transaction never committed can be taken over
   once its lock is older than `lock_seconds`. A rejection before execution rolls its
   transaction back, claim included, so nothing of it is stored.
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
from toolcallstore.db import Database, SyncTransaction, Transaction
from toolcallstore.errors import APIError, Conflict, InternalError, InvalidRequest, Unprocessable
from toolcallstore.ids import now_us
from toolcallstore.responses import JSONResponse

log = logging.getLogger("toolcallstore.idempotency")

MAX_KEY_LENGTH = 255
# Rejections before execution, which the agent can fix and retry with the same key: their
# transaction changed nothing (409/410: the object's state refused it, or the key is in use).
UNSTORED_STATUSES = frozenset({400, 401, 402, 403, 404, 409, 410, 422, 429})

Execute = Callable[[Transaction], Awaitable[tuple[int, Any]]]
ExecuteSync = Callable[[SyncTransaction], tuple[int, Any]]
Redact = Callable[[Any], Any]
Answer = tuple[int, Any]
_STORE = (
    "UPDATE idempotency_keys SET state = 'done', status = :status, response_body = :body"
    " WHERE api_key_id = :api_key_id AND key = :key"
)


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


@dataclass(frozen=True)
class KeyClaim:
    """Who claims which key for which request, and until when others must wait for it."""

    api_key_id: str
    key: str
    tenant_id: str
    fingerprint: str
    request_id: str


def replay_response(answer: Answer, request: Request) -> Response:
    context_of(request).reason = "idempotent_replay"
    response = JSONResponse(answer[1], status_code=answer[0])
    response.headers["Idempotent-Replayed"] = "true"
    return response


class Idempotency:
    def __init__(self, db: Database, *, lock_seconds: int) -> None:
        self._db = db
        self.lock_us = lock_seconds * 1_000_000

    def claim_for(self, request: Request, principal: Principal, key: str, body: Any) -> KeyClaim:
        fp = fingerprint(request.method, request.url.path, body)
        request_id = context_of(request).request_id
        return KeyClaim(principal.key_id, key, principal.tenant_id, fp, request_id)

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
        claim = self.claim_for(request, principal, key, body)
        replay = await self._db.run_sync(claim_in, claim, self.lock_us)
        if replay is not None:
            return replay_response(replay, request)
        try:
            async with self._db.transaction() as tx:
                status, content = await execute(tx)
                stored = content if redact is None else redact(content)
                await tx.execute(_STORE, _store_values(claim, status, stored))
        except APIError as error:
            if error.status in UNSTORED_STATUSES:
                await self._db.run_sync(release_claim, claim)
                raise
            status, content = await self.store_failure(claim, error)
        except Exception:
            status, content = await self.store_failure(claim, _failure())
        return JSONResponse(content, status_code=status)

    async def run_sync(
        self,
        request: Request,
        principal: Principal,
        key: str,
        body: Any,
        execute: ExecuteSync,
        *,
        redact: Redact | None = None,
    ) -> Response:
        """`run` for work written as plain statements: claim, work and stored answer are one
        transaction (one writer hop on SQLite)."""
        claim = self.claim_for(request, principal, key, body)

        def once(tx: SyncTransaction) -> tuple[Answer, bool]:
            replay = claim_in(tx, claim, self.lock_us)
            if replay is not None:
                return replay, True
            status, content = execute(tx)
            stored = content if redact is None else redact(content)
            store_response(tx, claim.api_key_id, claim.key, status, stored)
            return (status, content), False

        try:
            (status, content), replayed = await self._db.run_sync(once)
        except APIError as error:
            if error.status in UNSTORED_STATUSES:
                raise
            status, content = await self.store_failure(claim, error)
            replayed = False
        except Exception:
            status, content = await self.store_failure(claim, _failure())
            replayed = False
        if replayed:
            return replay_response((status, content), request)
        return JSONResponse(content, status_code=status)

    async def store_failure(self, claim: KeyClaim, error: APIError) -> Answer:
        """Record a failure once execution had started: replays return it, as Stripe does."""
        content = error.envelope(claim.request_id)

        def store(tx: SyncTransaction) -> None:
            claim_in(tx, claim, self.lock_us, take_over=True)
            store_response(tx, claim.api_key_id, claim.key, error.status, content)

        await self._db.run_sync(store)
        return error.status, content


def _failure() -> APIError:
    log.exception("idempotent request failed")
    return InternalError("The request failed on our side; it made no changes.")


def claim_in(
    tx: SyncTransaction,
    claim: KeyClaim,
    lock_us: int,
    *,
    take_over: bool = False,
    fence_us: int = 0,
    abandoned: Callable[[SyncTransaction], Answer | None] | None = None,
) -> Answer | None:
    """Claim the key inside `tx`; None when claimed, else the stored answer to replay.

    `fence_us` makes retries wait (409) that much longer before they may take the key over:
    for work that commits before its answer is stored (an execution's hold), whose answer the
    settlement or the sweep will store. If that work was committed by a request that died and
    nobody has closed it yet, `abandoned` closes it and returns the answer it stored, which is
    replayed: the key is not taken over, so the work never runs twice.
    """
    now = now_us()
    locked_at = now + fence_us
    ids = {"api_key_id": claim.api_key_id, "key": claim.key}
    inserted = tx.fetch_one(
        "INSERT INTO idempotency_keys (api_key_id, key, tenant_id, fingerprint, state,"
        " created_at, locked_at) VALUES (:api_key_id, :key, :tenant_id, :fp, 'running',"
        " :now, :locked_at) ON CONFLICT (api_key_id, key) DO NOTHING RETURNING state",
        {
            **ids,
            "tenant_id": claim.tenant_id,
            "fp": claim.fingerprint,
            "now": now,
            "locked_at": locked_at,
        },  # fmt: skip
    )
    if inserted is not None:
        return None
    row = tx.fetch_one(
        "SELECT fingerprint, state, status, response_body, locked_at"
        " FROM idempotency_keys WHERE api_key_id = :api_key_id AND key = :key",
        ids,
    )
    assert row is not None
    if row["fingerprint"] != claim.fingerprint:
        raise Unprocessable(
            "This Idempotency-Key was already used with a different request (method, "
            "path or body). Use a new key for a new request.",
            code="idempotency_key_reused",
        )
    if row["state"] == "done":
        return int(row["status"]), orjson.loads(row["response_body"])
    if row["locked_at"] > now - lock_us and not take_over:
        raise Conflict(
            "A request with this Idempotency-Key is still being processed; retry "
            "after it finishes to receive its result.",
            headers={"Retry-After": "1"},
        )
    if abandoned is not None and (answer := abandoned(tx)) is not None:
        return answer
    # The first attempt died before its transaction committed: nothing happened.
    tx.execute(
        "UPDATE idempotency_keys SET locked_at = :locked_at"
        " WHERE api_key_id = :api_key_id AND key = :key",
        {**ids, "locked_at": locked_at},
    )
    return None


def release_claim(tx: SyncTransaction, claim: KeyClaim) -> None:
    tx.execute(
        "DELETE FROM idempotency_keys WHERE api_key_id = :api_key_id AND key = :key"
        " AND state = 'running'",
        {"api_key_id": claim.api_key_id, "key": claim.key},
    )


def _store_values(claim: KeyClaim, status: int, content: Any) -> dict[str, Any]:
    return {"api_key_id": claim.api_key_id, "key": claim.key, "status": status,
            "body": orjson.dumps(content).decode()}  # fmt: skip


def store_response(
    tx: SyncTransaction, api_key_id: str, key: str, status: int, content: Any
) -> None:
    """Record the answer a key replays (also used by whoever finishes an abandoned request)."""
    tx.execute(_STORE, {"api_key_id": api_key_id, "key": key, "status": status,
                        "body": orjson.dumps(content).decode()})  # fmt: skip


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
