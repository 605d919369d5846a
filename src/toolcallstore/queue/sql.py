"""`JobStore` on the project database: SQLite (single writer, BEGIN IMMEDIATE) or Postgres
(FOR UPDATE SKIP LOCKED; the worker pool's hot statements on connections of their own,
pg_direct.py). Each state change is one statement whose WHERE re-checks the state and the lease
holder, so a rescued or cancelled job can never be completed by a stale worker (the River #1302
bug)."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import Database, SyncTransaction, Transaction
from toolcallstore.ids import new_id, now_us
from toolcallstore.queue import pg_direct, sqlite_hot
from toolcallstore.queue.store import Job, NewJob, Outcome

NOTIFY_CHANNEL = "toolcallstore_jobs"

_BULK_COLUMNS = (
    "id",
    "queue",
    "type",
    "tenant_id",
    "payload",
    "priority",
    "state",
    "run_at",
    "attempts",
    "max_attempts",
    "progress",
    "errors",
    "cancel_requested",
    "created_at",
    "updated_at",
)
_INSERT = """
INSERT INTO jobs (id, queue, type, tenant_id, payload, priority, state, run_at, attempts,
    max_attempts, unique_key, progress, errors, cancel_requested, created_at, updated_at)
VALUES (:id, :queue, :type, :tenant_id, :payload, :priority, 'queued', :run_at, 0,
    :max_attempts, :unique_key, 0, '[]', 0, :now, :now)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
DO NOTHING
RETURNING *
"""


def _insert_values(job: NewJob) -> dict[str, Any]:
    now = now_us()
    return {
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


def _in_claim_order(rows: Any) -> list[Job]:
    return sorted((Job.from_row(r) for r in rows), key=lambda j: (j.priority, j.run_at, j.id))


class SqlJobStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Postgres: claims (with the successes they carry) and heartbeats on one connection,
        # where no statement waits for a row lock; the other outcomes on another, where one
        # may, so a claim or a heartbeat never queues behind it.
        self._claimer: pg_direct.DirectConnection | None = None
        self._finisher: pg_direct.DirectConnection | None = None
        if db.is_postgres:
            self._claimer = pg_direct.DirectConnection(db.url, "toolcallstore-queue-claim")
            self._finisher = pg_direct.DirectConnection(db.url, "toolcallstore-queue-finish")

    async def close(self) -> None:
        """Close the queue's own connections (reopened if the store is used again)."""
        for direct in (self._claimer, self._finisher):
            if direct is not None:
                await direct.close()

    async def enqueue(self, job: NewJob) -> tuple[Job, bool]:
        values = _insert_values(job)
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

    def enqueue_in(self, tx: SyncTransaction, job: NewJob) -> Job:
        """Insert an unkeyed job inside the caller's transaction, so that it exists exactly when
        the caller's change commits (a hold and the job that will settle it)."""
        if job.unique_key is not None:
            raise ValueError("jobs with a unique_key must go through enqueue()")
        row = tx.fetch_one(_INSERT, _insert_values(job))
        assert row is not None
        if tx.dialect == "postgresql":
            tx.execute(
                "SELECT pg_notify(:channel, :queue)",
                {"channel": NOTIFY_CHANNEL, "queue": job.queue},
            )
        return Job.from_row(row)

    async def enqueue_many(self, jobs: list[NewJob]) -> list[str]:
        """Insert many unkeyed jobs in one transaction; returns their ids in order."""
        if any(job.unique_key is not None for job in jobs):
            raise ValueError("jobs with a unique_key must go through enqueue()")
        now = now_us()
        ids = [new_id("job") for _ in jobs]
        rows = [
            (
                job_id,
                job.queue,
                job.type,
                job.tenant_id,
                orjson.dumps(job.payload).decode(),
                job.priority,
                "queued",
                now if job.run_at is None else job.run_at,
                0,
                job.max_attempts,
                0,
                "[]",
                0,
                now,
                now,
            )
            for job_id, job in zip(ids, jobs, strict=True)
        ]
        async with self._db.transaction() as tx:
            await tx.insert_many("jobs", _BULK_COLUMNS, rows)
            if self._db.is_postgres:
                for queue in sorted({job.queue for job in jobs}):
                    await tx.execute(
                        "SELECT pg_notify(:channel, :queue)",
                        {"channel": NOTIFY_CHANNEL, "queue": queue},
                    )
        return ids

    @staticmethod
    def enqueue_many_in(tx: SyncTransaction, jobs: list[tuple[str, NewJob]]) -> None:
        """Insert unkeyed jobs with ids the caller chose, inside the caller's transaction (a
        webhook delivery row and the job that delivers it commit together)."""
        if any(job.unique_key is not None for _, job in jobs):
            raise ValueError("jobs with a unique_key must go through enqueue()")
        now = now_us()
        rows = [
            (job_id, job.queue, job.type, job.tenant_id, orjson.dumps(job.payload).decode(),
             job.priority, "queued", now if job.run_at is None else job.run_at, 0,
             job.max_attempts, 0, "[]", 0, now, now)
            for job_id, job in jobs
        ]  # fmt: skip
        tx.insert_many("jobs", _BULK_COLUMNS, rows)
        if tx.dialect == "postgresql":
            for queue in sorted({job.queue for _, job in jobs}):
                tx.execute(
                    "SELECT pg_notify(:channel, :queue)",
                    {"channel": NOTIFY_CHANNEL, "queue": queue},
                )

    async def claim(self, queue: str, worker: str, limit: int, lease_s: float) -> list[Job]:
        now = now_us()
        args = (now + int(lease_s * 1_000_000), worker, now, queue, now, limit)
        rows: Any
        if self._claimer is not None:
            rows = await self._claimer.fetch(pg_direct.CLAIM, *args)
        else:
            async with self._db.transaction() as tx:
                rows = await tx.fetch_raw(sqlite_hot.CLAIM, args)
        return _in_claim_order(rows)

    async def finish_and_claim(
        self,
        worker: str,
        succeeded: list[tuple[Job, Outcome]],
        queue: str,
        limit: int,
        lease_s: float,
    ) -> tuple[dict[str, str], list[Job]]:
        """Record plain successes and claim, in one statement on Postgres (successes whose row
        is locked are left out, not waited for) and in one write transaction on SQLite."""
        if not succeeded:
            return {}, await self.claim(queue, worker, limit, lease_s)
        now = now_us()
        args = (now + int(lease_s * 1_000_000), worker, now, queue, now, limit)
        if self._claimer is not None:
            ids = [job.id for job, _ in succeeded]
            results = [self._result_text(out) for _, out in succeeded]
            rows = await self._claimer.fetch(pg_direct.SUCCEED_AND_CLAIM, *args, ids, results)
            done = [row["done_id"] for row in rows if row["done_id"] is not None]
            claimed = [row for row in rows if row["done_id"] is None]
        else:
            async with self._db.transaction() as tx:
                states = await self._succeed_sqlite(tx, worker, succeeded)
                claimed = await tx.fetch_raw(sqlite_hot.CLAIM, args)
            done = [job_id for job_id, state in states.items() if state is not None]
        return dict.fromkeys(done, "succeeded"), _in_claim_order(claimed)

    async def finish(self, job: Job, worker: str, outcome: Outcome) -> str | None:
        async with self._db.transaction() as tx:
            return await self._finish_in(tx, job, worker, outcome)

    async def finish_many(
        self, worker: str, outcomes: list[tuple[Job, Outcome]]
    ) -> dict[str, str | None]:
        """Record many outcomes: the plain successes in one statement, the rest (retries,
        failures, cancellations: rare) in one transaction after it."""
        plain = [(job, out) for job, out in outcomes if out.error is None and not out.cancelled]
        states: dict[str, str | None] = {}
        if plain and self._finisher is not None:
            states = await self._succeed_pg(self._finisher, worker, plain)
        if len(states) == len(outcomes):
            return states
        async with self._db.transaction() as tx:
            if plain and self._finisher is None:
                states = await self._succeed_sqlite(tx, worker, plain)
            for job, out in outcomes:
                if job.id not in states:
                    states[job.id] = await self._finish_in(tx, job, worker, out)
        return states

    @staticmethod
    def _result_text(outcome: Outcome) -> str | None:
        return None if outcome.result is None else orjson.dumps(outcome.result).decode()

    async def _succeed_pg(
        self, direct: pg_direct.DirectConnection, worker: str, plain: list[tuple[Job, Outcome]]
    ) -> dict[str, str | None]:
        ids = [job.id for job, _ in plain]
        results = [self._result_text(out) for _, out in plain]
        done = await direct.fetch(pg_direct.SUCCEED, ids, results, now_us(), worker)
        succeeded = {row["id"] for row in done}
        return {job_id: "succeeded" if job_id in succeeded else None for job_id in ids}

    async def _succeed_sqlite(
        self, tx: Transaction, worker: str, plain: list[tuple[Job, Outcome]]
    ) -> dict[str, str | None]:
        now = now_us()
        args: list[Any] = []
        for job, out in plain:
            args += [job.id, self._result_text(out)]
        sql = sqlite_hot.succeed(len(plain))
        done = await tx.fetch_raw(sql, [*args, now, now, worker])
        succeeded = {row["id"] for row in done}
        return {job.id: "succeeded" if job.id in succeeded else None for job, _ in plain}

    async def _finish_in(
        self, tx: Transaction, job: Job, worker: str, outcome: Outcome
    ) -> str | None:
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
                "result": None if outcome.result is None else orjson.dumps(outcome.result).decode(),
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
        lease = now + int(lease_s * 1_000_000)
        rows: Any
        if self._claimer is not None:
            # With the claims: neither ever waits for a row lock, while the completer may.
            rows = await self._claimer.fetch(pg_direct.EXTEND, lease, now, job_ids, worker)
        else:
            async with self._db.transaction() as tx:
                sql = sqlite_hot.extend(len(job_ids))
                rows = await tx.fetch_raw(sql, [lease, now, *job_ids, worker])
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

    async def cancel(self, job_id: str, *, unstarted_only: bool = False) -> Job | None:
        now = now_us()
        unstarted = " AND attempts = 0" if unstarted_only else ""
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = :now, updated_at = :now"
                f" WHERE id = :id AND state = 'queued'{unstarted}",
                {"id": job_id, "now": now},
            )
            if not unstarted_only:
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
        rows: Any
        if self._finisher is not None:
            rows = await self._finisher.fetch(pg_direct.RELEASE, now_us(), job_ids, worker)
        else:
            async with self._db.transaction() as tx:
                sql = sqlite_hot.release(len(job_ids))
                rows = await tx.fetch_raw(sql, [now_us(), *job_ids, worker])
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
