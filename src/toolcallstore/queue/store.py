"""The job model and the `JobStore` interface every implementation keeps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from toolcallstore.db.database import Row

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class NewJob:
    type: str
    payload: dict[str, Any]
    queue: str = "default"
    tenant_id: str | None = None
    priority: int = 0
    run_at: int | None = None  # epoch microseconds; None means now
    max_attempts: int = 5
    unique_key: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    queue: str
    type: str
    tenant_id: str | None
    payload: dict[str, Any]
    priority: int
    state: str
    run_at: int
    attempts: int
    max_attempts: int
    unique_key: str | None
    lease_until: int | None
    locked_by: str | None
    progress: int
    progress_message: str | None
    result: Any
    errors: list[dict[str, Any]]
    cancel_requested: bool
    created_at: int
    updated_at: int
    finished_at: int | None

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(
            id=row["id"],
            queue=row["queue"],
            type=row["type"],
            tenant_id=row["tenant_id"],
            payload=orjson.loads(row["payload"]),
            priority=row["priority"],
            state=row["state"],
            run_at=row["run_at"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            unique_key=row["unique_key"],
            lease_until=row["lease_until"],
            locked_by=row["locked_by"],
            progress=row["progress"],
            progress_message=row["progress_message"],
            result=None if row["result"] is None else orjson.loads(row["result"]),
            errors=orjson.loads(row["errors"]),
            cancel_requested=bool(row["cancel_requested"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True)
class Outcome:
    """How a run ended: a result, an error (retried at `retry_at` if attempts remain), or a
    cooperative cancellation."""

    result: Any = None
    error: str | None = None
    retry_at: int | None = None
    cancelled: bool = False


def backoff_us(attempt: int, *, base_s: float = 1.0, cap_s: float = 3600.0) -> int:
    """Exponential backoff with equal jitter: uniform in [c/2, c], c = min(cap, base * 2^(n-1))."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return int(random.uniform(ceiling / 2, ceiling) * 1_000_000)


class JobStore(Protocol):
    async def enqueue(self, job: NewJob) -> tuple[Job, bool]:
        """Insert a job, or return the live job holding its unique key; True if inserted."""

    async def claim(self, queue: str, worker: str, limit: int, lease_s: float) -> list[Job]:
        """Atomically move up to `limit` due jobs of `queue` to running under a lease."""

    async def finish_many(
        self, worker: str, outcomes: list[tuple[Job, Outcome]]
    ) -> dict[str, str | None]:
        """Record runs' outcomes where `worker` still holds the lease; new state per job id
        (None where the lease was lost). Each outcome commits or not as a whole; when this
        returns, every one of them is durable."""

    async def finish_and_claim(
        self,
        worker: str,
        succeeded: list[tuple[Job, Outcome]],
        queue: str,
        limit: int,
        lease_s: float,
    ) -> tuple[dict[str, str], list[Job]]:
        """Record plain successes where `worker` holds the lease, then `claim`, in one round
        trip where the store can. Returns the state of each outcome it recorded (durable when
        this returns); those it left out (lease lost, or row locked elsewhere) are for
        `finish_many`."""

    async def extend_leases(self, worker: str, job_ids: list[str], lease_s: float) -> set[str]:
        """Heartbeat: extend the leases `worker` holds; returns ids whose cancel was requested."""

    async def rescue_expired(self) -> int:
        """Requeue (or dead-letter) running jobs whose lease expired; returns how many."""

    async def close(self) -> None:
        """Let go of connections of the store's own (the pool calls it when it stops)."""


class JobControl(Protocol):
    async def get(self, job_id: str) -> Job | None:
        """One job, or None."""

    async def set_progress(self, job: Job, worker: str, percent: int, message: str | None) -> None:
        """Record progress (0-100) of a job `worker` runs."""

    async def cancel(self, job_id: str, *, unstarted_only: bool = False) -> Job | None:
        """Cancel a queued job now, or ask a running one to stop; terminal jobs are unchanged.
        With `unstarted_only`, only a job that never began an attempt is cancelled."""

    async def release(self, worker: str, job_ids: list[str]) -> int:
        """Hand running jobs back to the queue at once (shutdown), without spending an attempt."""

    async def prune_finished(self, before_us: int) -> int:
        """Delete terminal jobs finished before `before_us`; returns how many."""


class JobAdmin(Protocol):
    async def enqueue_many(self, jobs: list[NewJob]) -> list[str]:
        """Insert many jobs without unique keys at once; returns their ids."""

    async def retry(self, job_id: str) -> Job | None:
        """Put a failed or cancelled job back in the queue with fresh attempts."""

    async def recent(self, state: str | None, limit: int) -> list[Job]:
        """The newest jobs, optionally of one state."""

    async def finish(self, job: Job, worker: str, outcome: Outcome) -> str | None:
        """`finish_many` for one job."""

    async def depth(self) -> list[tuple[str, str, int]]:
        """(queue, state, count) for queued and running jobs."""


class QueueStore(JobStore, JobControl, JobAdmin, Protocol):
    """Everything the worker pool, the jobs API and the CLI need of a store."""
