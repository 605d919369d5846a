"""The `webhooks.deliver` job: one delivery (an event to an endpoint), at least once.

Each run signs the event's fixed body afresh (new timestamp, same `webhook-id` = event id),
POSTs it through the SSRF guard and records the attempt in one transaction with the verdict:
2xx delivered; 410 disables the endpoint; otherwise the next attempt follows Svix's schedule
(5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the first), later if a 429/503 asked for it
with Retry-After. An endpoint failing for 5 days without a success is disabled, and a
`webhook_endpoint.disabled` event says so. A crash between the POST and its record repeats the
POST: receivers deduplicate on `webhook-id`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.byok import Keyring
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.events import record_event
from toolcallstore.ids import new_id, now_us
from toolcallstore.queue.worker import JobContext, Registry, RetryAt
from toolcallstore.webhooks.base import Reply, WebhookPoster
from toolcallstore.webhooks.dispatch import DELIVER_JOB_TYPE, MAX_ATTEMPTS, QUEUE
from toolcallstore.webhooks.endpoints import signing_secrets
from toolcallstore.webhooks.signing import signature_headers

log = logging.getLogger("toolcallstore.webhooks")

RETRY_DELAYS_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
FAILING_DISABLE_US = 5 * 86_400 * 1_000_000
MAX_RETRY_AFTER_S = 86_400
THROTTLE_STATUSES = frozenset({429, 503})
_LOAD = (
    "SELECT d.id AS delivery_id, d.state AS delivery_state, d.event_id, d.endpoint_id,"
    " e.type AS event_type, e.data AS event_data, e.created_at AS event_created_at, w.*"
    " FROM webhook_deliveries d"
    " JOIN events e ON e.id = d.event_id JOIN webhook_endpoints w ON w.id = d.endpoint_id"
    " WHERE d.id = :id"
)


@dataclass(frozen=True)
class Verdict:
    state: str  # 'succeeded', 'pending' (retry at `retry_at`) or 'failed'
    retry_at: int | None = None
    disable_reason: str | None = None


def event_body(event_id: str, event_type: str, created_at_us: int, data: str) -> bytes:
    """The payload `{id, type, created, data}`: the same bytes on every attempt."""
    return orjson.dumps(
        {"id": event_id, "type": event_type, "created": created_at_us // 1_000_000,
         "data": orjson.loads(data)}
    )  # fmt: skip


def judge(reply: Reply, attempt: int, now: int) -> Verdict:
    """What an attempt's reply means for the delivery (the endpoint's 5-day rule aside)."""
    if reply.ok:
        return Verdict("succeeded")
    if reply.status == 410:
        return Verdict("failed", disable_reason="gone")
    if reply.abort or attempt >= MAX_ATTEMPTS:
        return Verdict("failed")
    delay_s: float = RETRY_DELAYS_S[attempt - 1]
    if reply.status in THROTTLE_STATUSES and reply.retry_after_s is not None:
        delay_s = max(delay_s, min(reply.retry_after_s, MAX_RETRY_AFTER_S))
    return Verdict("pending", retry_at=now + int(delay_s * 1_000_000))


def _disable_endpoint(tx: SyncTransaction, row: Row, reason: str, now: int) -> None:
    disabled = tx.fetch_one(
        "UPDATE webhook_endpoints SET disabled = 1, disabled_reason = :reason, updated_at = :now"
        " WHERE id = :id AND disabled = 0 AND deleted_at IS NULL RETURNING id",
        {"reason": reason, "now": now, "id": row["endpoint_id"]},
    )
    if disabled is not None:
        data = {"endpoint_id": row["endpoint_id"], "url": row["url"], "reason": reason}
        record_event(tx, row["tenant_id"], "webhook_endpoint.disabled", data,
                     livemode=bool(row["livemode"]))  # fmt: skip
        log.warning("disabled webhook endpoint %s (%s)", row["endpoint_id"], reason)


def _track_failing(tx: SyncTransaction, row: Row, verdict: Verdict, now: int) -> Verdict:
    if verdict.state == "succeeded":
        tx.execute(
            "UPDATE webhook_endpoints SET failing_since = NULL"
            " WHERE id = :id AND failing_since IS NOT NULL",
            {"id": row["endpoint_id"]},
        )
        return verdict
    since = tx.fetch_val(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, :now)"
        " WHERE id = :id RETURNING failing_since",
        {"now": now, "id": row["endpoint_id"]},
    )
    if verdict.disable_reason is None and since is not None and now - since >= FAILING_DISABLE_US:
        return Verdict("failed", disable_reason="failing_for_5_days")
    return verdict


def record_attempt(
    tx: SyncTransaction, row: Row, attempt: int, reply: Reply, verdict: Verdict
) -> Verdict:
    """The attempt, the delivery's new state and the endpoint's, in one transaction."""
    now = now_us()
    verdict = _track_failing(tx, row, verdict, now)
    if verdict.disable_reason is not None:
        _disable_endpoint(tx, row, verdict.disable_reason, now)
    tx.execute(
        "INSERT INTO webhook_attempts (id, delivery_id, attempt, status, error, response_body,"
        " duration_ms, created_at) VALUES (:id, :delivery, :attempt, :status, :error, :body,"
        " :ms, :now)",
        {"id": new_id("wha"), "delivery": row["delivery_id"], "attempt": attempt,
         "status": reply.status, "error": reply.error, "body": reply.body,
         "ms": reply.duration_ms, "now": now},
    )  # fmt: skip
    tx.execute(
        "UPDATE webhook_deliveries SET state = :state, attempts = :attempt, last_status = :status,"
        " last_error = :error, next_attempt_at = :next, finished_at = :finished"
        " WHERE id = :id AND state = 'pending'",
        {"state": verdict.state, "attempt": attempt, "status": reply.status,
         "error": reply.error, "next": verdict.retry_at, "id": row["delivery_id"],
         "finished": None if verdict.state == "pending" else now},
    )  # fmt: skip
    return verdict


def _end_undeliverable(tx: SyncTransaction, delivery_id: str, why: str) -> None:
    tx.execute(
        "UPDATE webhook_deliveries SET state = 'failed', last_error = :why, finished_at = :now"
        " WHERE id = :id AND state = 'pending'",
        {"why": why, "now": now_us(), "id": delivery_id},
    )


async def deliver(
    db: Database, keyring: Keyring | None, poster: WebhookPoster, ctx: JobContext
) -> dict[str, Any]:
    delivery_id = ctx.job.payload["delivery_id"]
    row = await db.fetch_one(_LOAD, {"id": delivery_id})
    if row is None or row["delivery_state"] != "pending":
        return {"delivery_id": delivery_id, "skipped": "already finished"}
    if row["deleted_at"] is not None or row["disabled"]:
        why = "endpoint deleted" if row["deleted_at"] is not None else "endpoint disabled"
        await db.run_sync(_end_undeliverable, delivery_id, why)
        return {"delivery_id": delivery_id, "skipped": why}
    if keyring is None:
        raise RuntimeError("TOOLCALLSTORE_MASTER_KEY is not set: webhook secrets cannot be read")
    now = now_us()
    body = event_body(row["event_id"], row["event_type"], row["event_created_at"],
                      row["event_data"])  # fmt: skip
    headers = signature_headers(row["event_id"], body, signing_secrets(keyring, row, now),
                                now // 1_000_000)  # fmt: skip
    reply = await poster.post(row["url"], body, headers, livemode=bool(row["livemode"]))
    attempt = ctx.job.attempts
    verdict = await db.run_sync(record_attempt, row, attempt, reply, judge(reply, attempt, now))
    if verdict.state == "succeeded":
        return {"delivery_id": delivery_id, "status": reply.status, "attempt": attempt}
    what = f"HTTP {reply.status}" if reply.status is not None else reply.error
    raise RetryAt(f"delivery {delivery_id} attempt {attempt}: {what}", verdict.retry_at)


def register_delivery_job(
    registry: Registry, db: Database, keyring: Keyring | None, poster: WebhookPoster
) -> None:
    async def run(ctx: JobContext) -> dict[str, Any]:
        return await deliver(db, keyring, poster, ctx)

    registry.register(DELIVER_JOB_TYPE, run, queue=QUEUE, max_attempts=MAX_ATTEMPTS)
