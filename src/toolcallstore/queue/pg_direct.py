"""The queue's hot statements on Postgres: one autocommitted statement each, on connections of
the queue's own.

Through the shared pool (`Database.transaction()`) a claim costs a checkout, BEGIN, the
statement, COMMIT and the pool's reset on release: five round trips and most of the client's
CPU per batch. Here it is one round trip, its statement prepared once (arrays, not a VALUES
list per batch size). A statement on its own is its own transaction, so each of these still
commits or not as a whole, and each re-checks `state = 'running' AND locked_by = <worker>` in
its WHERE exactly as the transactional path does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

# Parameters: lease, worker, now, queue, now, limit.
CLAIM = """
WITH next AS (
    SELECT id FROM jobs WHERE state = 'queued' AND queue = $4 AND run_at <= $5
    ORDER BY priority, run_at, id LIMIT $6 FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'running', lease_until = $1, attempts = jobs.attempts + 1,
    locked_by = $2, updated_at = $3
FROM next WHERE jobs.id = next.id
RETURNING jobs.*
"""
# Parameters: ids, results (JSON text or NULL), now, worker.
SUCCEED = """
UPDATE jobs SET state = 'succeeded', result = v.result, progress = 100,
    lease_until = NULL, locked_by = NULL, updated_at = $3, finished_at = $3
FROM unnest($1::text[], $2::text[]) AS v(id, result)
WHERE jobs.id = v.id AND jobs.state = 'running' AND jobs.locked_by = $4
RETURNING jobs.id
"""
# SUCCEED then CLAIM in one statement, one commit: the pool's usual round trip when handlers
# finish fast. The two touch disjoint rows (running ones, queued ones) and see one snapshot. A
# success whose row another transaction has locked (a cancel, a rescue in flight) is skipped,
# not waited for, so the claim never queues behind it: the caller records it apart.
# Claimed rows come back with `done_id` NULL, recorded successes as rows holding only it.
# Parameters: lease, worker, now, queue, now, limit, ids, results.
SUCCEED_AND_CLAIM = """
WITH held AS (
    SELECT id FROM jobs
    WHERE id = ANY($7::text[]) AND state = 'running' AND locked_by = $2
    FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE jobs SET state = 'succeeded', result = v.result, progress = 100,
        lease_until = NULL, locked_by = NULL, updated_at = $3, finished_at = $3
    FROM unnest($7::text[], $8::text[]) AS v(id, result), held
    WHERE jobs.id = v.id AND held.id = v.id
    RETURNING jobs.id
), next AS (
    SELECT id FROM jobs WHERE state = 'queued' AND queue = $4 AND run_at <= $5
    ORDER BY priority, run_at, id LIMIT $6 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET state = 'running', lease_until = $1, attempts = jobs.attempts + 1,
        locked_by = $2, updated_at = $3
    FROM next WHERE jobs.id = next.id
    RETURNING jobs.*
)
SELECT claimed.*, NULL::text AS done_id FROM claimed
UNION ALL
SELECT (NULL::jobs).*, done.id FROM done
"""
# A heartbeat never waits for a row another transaction holds (it skips it until the next
# beat, a third of a lease later): it must not fall behind while others' leases run out.
# Parameters: lease, now, ids, worker.
EXTEND = """
WITH held AS (
    SELECT id FROM jobs
    WHERE id = ANY($3::text[]) AND state = 'running' AND locked_by = $4
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET lease_until = $1, updated_at = $2
FROM held WHERE jobs.id = held.id
RETURNING jobs.id, jobs.cancel_requested
"""
# Parameters: now, ids, worker.
RELEASE = """
UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_until = NULL,
    locked_by = NULL, updated_at = $1
WHERE id = ANY($2::text[]) AND state = 'running' AND locked_by = $3
RETURNING id
"""


class DirectConnection:
    """One asyncpg connection used by one statement at a time, opened on first use and opened
    again after it was lost (a statement that fails on a lost connection raises; the next
    one reconnects)."""

    def __init__(self, url: str, application_name: str) -> None:
        self._url = url
        self._name = application_name
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def fetch(self, sql: str, *args: Any) -> Sequence[asyncpg.Record]:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self._url, server_settings={"application_name": self._name}
                )
            conn = self._conn
            try:
                rows: Sequence[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows
            except BaseException:
                if conn.is_closed():
                    self._conn = None
                raise

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close(timeout=5)
