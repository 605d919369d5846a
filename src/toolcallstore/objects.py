"""How stored rows look on the wire: Stripe-style objects with unix-second `created`."""

from __future__ import annotations

from typing import Any

from toolcallstore.db.database import Row
from toolcallstore.db.keys import ApiKey
from toolcallstore.money import micros_to_usd
from toolcallstore.queue.store import Job


def _seconds(us: int | None) -> int | None:
    return None if us is None else us // 1_000_000


def tenant_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "tenant",
        "name": row["name"],
        "created": _seconds(row["created_at"]),
    }


def project_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "project",
        "tenant_id": row["tenant_id"],
        "name": row["name"],
        "created": _seconds(row["created_at"]),
    }


def key_object(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    auto_quote = key.auto_quote_max_micros
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "mode": key.mode,
        "livemode": key.mode == "live",
        "tenant_id": key.tenant_id,
        "project_id": key.project_id,
        "scopes": list(key.scopes),
        "redacted": f"tcs_{key.mode}_...{key.last4}",
        "auto_quote_max_usd": None if auto_quote is None else micros_to_usd(auto_quote),
        "rate_limit_per_s": key.rate_limit_per_s,
        "rate_limit_burst": key.rate_limit_burst,
        "created_by": key.created_by_key_id,
        "created": _seconds(key.created_at),
        "revoked": _seconds(key.revoked_at),
        "secret": secret,
    }


def list_object(data: list[dict[str, Any]], has_more: bool, url: str) -> dict[str, Any]:
    return {"object": "list", "url": url, "data": data, "has_more": has_more}


def _fractional_seconds(us: int | None) -> float | None:
    return None if us is None else round(us / 1_000_000, 6)


def job_object(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "job",
        "type": job.type,
        "queue": job.queue,
        "state": job.state,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "result": job.result,
        "errors": job.errors,
        "cancel_requested": job.cancel_requested,
        "run_at": _fractional_seconds(job.run_at),
        "created": _fractional_seconds(job.created_at),
        "updated": _fractional_seconds(job.updated_at),
        "finished": _fractional_seconds(job.finished_at),
    }
