"""`JobStore` on the project database: SQLite (single writer, BEGIN IMMEDIATE) or Postgres
(FOR UPDATE SKIP LOCKED). Each state change is one statement whose WHERE re-checks the state
and the lease holder, so a rescued or cancelled job can never be completed by a stale worker
(the River #1302 bug)."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import Database
from toolcallstore.ids import new_id, now_us
from toolcallstore.queue.store import Job, NewJob, Outcome

NOTIFY_CHANNEL = "toolcallstore_jobs"

_CLAIM_SQLITE = """
UPDATE jobs SET state = 'running', lease_until = :lease, attempts = attempts + 1,
    locked_by = :worker, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs WHERE state = 'queued' AND queue = :queue AND run_at <= :now
    ORDER BY priority, run_at, id LIMIT :n
)
RETURNING *
"""
_CLAIM_POSTGRES = """
WITH next AS (
    SELECT id FROM jobs WHERE state = 'queued' AND queue = :queue AND run_at <= :now
    ORDER BY priority, run_at, id LIMIT :n FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'running', lease_until = :lease, attempts = jobs.attempts + 1,
    locked_by = :worker, updated_at = :now
FROM next WHERE jobs.id = next.id
RETURNING jobs.*
"""
_INSERT = """
INSERT INTO jobs (id, queue, type, tenant_id, payload, priority, state, run_at, attempts,
    max_attempts, unique_key, progress, errors, cancel_requested, created_at, updated_at)
VALUES (:id, :queue, :type, :tenant_id, :payload, :priority, 'queued', :run_at, 0,
    :max_attempts, :unique_key, 0, '[]', 0, :now, :now)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
DO NOTHING
RETURNING *
"""


class SqlJobStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._claim_sql = _CLAIM_POSTGRES if db.is_postgres else _CLAIM_SQLITE

    async def enqueue(self, job: NewJob) -> tuple[Job, bool]:
        now = now_us()
        values = {
            "id": new_id("job"),
            "queue": job.queue,
            "type": job.type,
            "tenant_id": job.tenant_id,
            "payload": orjson.dumps(job.payload).decode(),
            "priority": job.priority,
            "run_at": now if job.run_at is None else job.run_at,
            "max_attempts": job.max_attempts,
            "unique_key": job.unique_key,
            "now": now,
        }
        for _ in range(3):  # the live holder of the key may finish between our two statements
            async with self._db.transaction() as tx:
                row = await tx.fetch_one(_INSERT, values)
                if row is not None:
                    if self._db.is_postgres:  # delivered at commit to every LISTENing process
                        await tx.execute(
                            "SELECT pg_notify(:channel, :queue)",
                            {"channel": NOTIFY_CHANNEL, "queue": job.queue},
                        )
                    return Job.from_row(row), True
                row = await tx.fetch_one(
                    "SELECT * FROM jobs WHERE unique_key = :key AND state IN ('queued', 'running')",
                    {"key": job.unique_key},
                )
                if row is not None:
                    return Job.from_row(row), False
        raise RuntimeError(f"could not enqueue job with unique key {job.unique_key!r}")

    async def claim(self, queue: str, worker: str, limit: int, lease_s: float) -> list[Job]:
        now = now_us()
        values = {
            "queue": queue,
            "worker": worker,
            "n": limit,
            "now": now,
            "lease": now + int(lease_s * 1_000_000),
        }
        async with self._db.transaction() as tx:
            rows = await tx.fetch_all(self._claim_sql, values)
        return sorted((Job.from_row(r) for r in rows), key=lambda j: (j.priority, j.run_at, j.id))

    async def finish(self, job: Job, worker: str, outcome: Outcome) -> str | None:
        now = now_us()
        run_at = job.run_at
        if outcome.cancelled:
            state = "cancelled"
        elif outcome.error is None:
            state = "succeeded"
        elif outcome.retry_at is not None and job.attempts < job.max_attempts:
            state, run_at = "queued", outcome.retry_at
        else:
            state = "failed"
        async with self._db.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT errors FROM jobs WHERE id = :id AND state = 'running' AND locked_by = :w",
                {"id": job.id, "w": worker},
            )
            if row is None:
                return None  # the lease was lost: someone else owns this job now
            errors = orjson.loads(row["errors"])
            if outcome.error is not None:
                errors.append({"attempt": job.attempts, "at": now, "error": outcome.error})
            await tx.execute(
                "UPDATE jobs SET state = :state, run_at = :run_at, result = :result,"
                " errors = :errors, lease_until = NULL, locked_by = NULL, updated_at = :now,"
                " finished_at = :finished, progress = :progress"
                " WHERE id = :id AND state = 'running' AND locked_by = :w",
                {
                    "state": state,
                    "run_at": run_at,
                    "result": None
                    if outcome.result is None
                    else orjson.dumps(outcome.result).decode(),
                    "errors": orjson.dumps(errors).decode(),
                    "now": now,
                    "finished": None if state == "queued" else now,
                    "progress": 100 if state == "succeeded" else job.progress,
                    "id": job.id,
                    "w": worker,
                },
            )
        return state

    async def extend_leases(self, worker: str, job_ids: list[str], lease_s: float) -> set[str]:
        if not job_ids:
            return set()
        now = now_us()
        params: dict[str, Any] = {f"id{i}": job_id for i, job_id in enumerate(job_ids)}
        marks = ", ".join(f":id{i}" for i in range(len(job_ids)))
        params.update(w=worker, lease=now + int(lease_s * 1_000_000), now=now)
        async with self._db.transaction() as tx:
            rows = await tx.fetch_all(
                f"UPDATE jobs SET lease_until = :lease, updated_at = :now WHERE id IN ({marks})"
                " AND state = 'running' AND locked_by = :w RETURNING id, cancel_requested",
                params,
            )
        return {r["id"] for r in rows if r["cancel_requested"]}

    async def rescue_expired(self) -> int:
        now = now_us()
        async with self._db.transaction() as tx:
            dead = await tx.fetch_all(
                "UPDATE jobs SET state = 'failed', lease_until = NULL, locked_by = NULL,"
                " updated_at = :now, finished_at = :now"
                " WHERE state = 'running' AND lease_until < :now AND attempts >= max_attempts"
                " RETURNING id",
                {"now": now},
            )
            requeued = await tx.fetch_all(
                "UPDATE jobs SET state = 'queued', lease_until = NULL, locked_by = NULL,"
                " run_at = :now, updated_at = :now"
                " WHERE state = 'running' AND lease_until < :now RETURNING id",
                {"now": now},
            )
        return len(dead) + len(requeued)

    async def get(self, job_id: str) -> Job | None:
        row = await self._db.fetch_one("SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        return None if row is None else Job.from_row(row)

    async def set_progress(self, job: Job, worker: str, percent: int, message: str | None) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET progress = :p, progress_message = :m, updated_at = :now"
                " WHERE id = :id AND state = 'running' AND locked_by = :w",
                {
                    "p": max(0, min(100, percent)),
                    "m": message,
                    "now": now_us(),
                    "id": job.id,
                    "w": worker,
                },
            )

    async def cancel(self, job_id: str) -> Job | None:
        now = now_us()
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = :now, updated_at = :now"
                " WHERE id = :id AND state = 'queued'",
                {"id": job_id, "now": now},
            )
            await tx.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = :now"
                " WHERE id = :id AND state = 'running'",
                {"id": job_id, "now": now},
            )
            row = await tx.fetch_one("SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        return None if row is None else Job.from_row(row)

    async def release(self, worker: str, job_ids: list[str]) -> int:
        if not job_ids:
            return 0
        params: dict[str, Any] = {f"id{i}": job_id for i, job_id in enumerate(job_ids)}
        marks = ", ".join(f":id{i}" for i in range(len(job_ids)))
        params.update(w=worker, now=now_us())
        async with self._db.transaction() as tx:
            rows = await tx.fetch_all(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_until = NULL,"
                f" locked_by = NULL, updated_at = :now WHERE id IN ({marks})"
                " AND state = 'running' AND locked_by = :w RETURNING id",
                params,
            )
        return len(rows)

    async def retry(self, job_id: str) -> Job | None:
        """Put a failed or cancelled job back in the queue with fresh attempts."""
        now = now_us()
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_at = :now, finished_at = NULL,"
                " cancel_requested = 0, updated_at = :now"
                " WHERE id = :id AND state IN ('failed', 'cancelled')",
                {"id": job_id, "now": now},
            )
            row = await tx.fetch_one("SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        return None if row is None else Job.from_row(row)

    async def recent(self, state: str | None, limit: int) -> list[Job]:
        where = "WHERE state = :state" if state else ""
        rows = await self._db.fetch_all(
            f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT :n",
            {"n": limit, **({"state": state} if state else {})},
        )
        return [Job.from_row(r) for r in rows]

    async def depth(self) -> list[tuple[str, str, int]]:
        rows = await self._db.fetch_all(
            "SELECT queue, state, count(*) AS n FROM jobs WHERE state IN ('queued', 'running')"
            " GROUP BY queue, state"
        )
        return [(r["queue"], r["state"], int(r["n"])) for r in rows]

    async def prune_finished(self, before_us: int) -> int:
        async with self._db.transaction() as tx:
            rows = await tx.fetch_all(
                "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < :before"
                " AND state IN ('succeeded', 'failed', 'cancelled') RETURNING id",
                {"before": before_us},
            )
        return len(rows)
