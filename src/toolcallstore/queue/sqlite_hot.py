"""The queue's hot statements on SQLite, with `?` placeholders for the driver directly
(`Transaction.fetch_raw`), run inside the single writer's BEGIN IMMEDIATE transactions. The
Postgres ones are in pg_direct.py."""

from __future__ import annotations

# Parameters: lease, worker, now, queue, now, limit.
CLAIM = """
UPDATE jobs SET state = 'running', lease_until = ?, attempts = attempts + 1,
    locked_by = ?, updated_at = ?
WHERE id IN (
    SELECT id FROM jobs WHERE state = 'queued' AND queue = ? AND run_at <= ?
    ORDER BY priority, run_at, id LIMIT ?
)
RETURNING *
"""


def succeed(count: int) -> str:
    """Parameters: (id, result) x count, now, now, worker."""
    rows = ", ".join("(?, ?)" for _ in range(count))
    return (
        f"WITH v(id, result) AS (VALUES {rows})"
        " UPDATE jobs SET state = 'succeeded', result = v.result, progress = 100,"
        " lease_until = NULL, locked_by = NULL, updated_at = ?, finished_at = ?"
        " FROM v WHERE jobs.id = v.id AND jobs.state = 'running' AND jobs.locked_by = ?"
        " RETURNING jobs.id"
    )


def extend(count: int) -> str:
    """Parameters: lease, now, id x count, worker."""
    return (
        "UPDATE jobs SET lease_until = ?, updated_at = ?"
        f" WHERE id IN ({_marks(count)}) AND state = 'running' AND locked_by = ?"
        " RETURNING id, cancel_requested"
    )


def release(count: int) -> str:
    """Parameters: now, id x count, worker."""
    return (
        "UPDATE jobs SET state = 'queued', attempts = attempts - 1,"
        " lease_until = NULL, locked_by = NULL, updated_at = ?"
        f" WHERE id IN ({_marks(count)}) AND state = 'running' AND locked_by = ?"
        " RETURNING id"
    )


def _marks(count: int) -> str:
    return ", ".join("?" for _ in range(count))
