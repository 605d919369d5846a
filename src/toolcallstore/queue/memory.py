"""An in-memory `QueueStore` for unit tests: the same contract as `SqlJobStore`, no database."""

from __future__ import annotations

import dataclasses
from typing import Any

from toolcallstore.ids import new_id, now_us
from toolcallstore.queue.store import TERMINAL, Job, NewJob, Outcome


class MemoryJobStore:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def _put(self, job: Job, **changes: Any) -> Job:
        updated = dataclasses.replace(job, **changes, updated_at=now_us())
        self._jobs[job.id] = updated
        return updated

    async def enqueue(self, job: NewJob) -> tuple[Job, bool]:
        if job.unique_key is not None:
            for existing in self._jobs.values():
                live = existing.state in ("queued", "running")
                if live and existing.unique_key == job.unique_key:
                    return existing, False
        now = now_us()
        created = Job(
            id=new_id("job"),
            queue=job.queue,
            type=job.type,
            tenant_id=job.tenant_id,
            payload=dict(job.payload),
            priority=job.priority,
            state="queued",
            run_at=now if job.run_at is None else job.run_at,
            attempts=0,
            max_attempts=job.max_attempts,
            unique_key=job.unique_key,
            lease_until=None,
            locked_by=None,
            progress=0,
            progress_message=None,
            result=None,
            errors=[],
            cancel_requested=False,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        self._jobs[created.id] = created
        return created, True

    async def enqueue_many(self, jobs: list[NewJob]) -> list[str]:
        if any(job.unique_key is not None for job in jobs):
            raise ValueError("jobs with a unique_key must go through enqueue()")
        return [(await self.enqueue(job))[0].id for job in jobs]

    async def finish_many(
        self, worker: str, outcomes: list[tuple[Job, Outcome]]
    ) -> dict[str, str | None]:
        return {job.id: await self.finish(job, worker, out) for job, out in outcomes}

    async def finish_and_claim(
        self,
        worker: str,
        succeeded: list[tuple[Job, Outcome]],
        queue: str,
        limit: int,
        lease_s: float,
    ) -> tuple[dict[str, str], list[Job]]:
        states = await self.finish_many(worker, succeeded)
        recorded = {job_id: state for job_id, state in states.items() if state is not None}
        return recorded, await self.claim(queue, worker, limit, lease_s)

    async def claim(self, queue: str, worker: str, limit: int, lease_s: float) -> list[Job]:
        now = now_us()
        due = sorted(
            (
                j
                for j in self._jobs.values()
                if j.state == "queued" and j.queue == queue and j.run_at <= now
            ),
            key=lambda j: (j.priority, j.run_at, j.id),
        )[:limit]
        lease = now + int(lease_s * 1_000_000)
        return [
            self._put(
                j, state="running", attempts=j.attempts + 1, locked_by=worker, lease_until=lease
            )
            for j in due
        ]

    def _held(self, job_id: str, worker: str) -> Job | None:
        job = self._jobs.get(job_id)
        held = job is not None and job.state == "running" and job.locked_by == worker
        return job if held else None

    async def finish(self, job: Job, worker: str, outcome: Outcome) -> str | None:
        current = self._held(job.id, worker)
        if current is None:
            return None
        now = now_us()
        errors = list(current.errors)
        if outcome.error is not None:
            errors.append({"attempt": current.attempts, "at": now, "error": outcome.error})
        run_at, state = current.run_at, "succeeded"
        if outcome.cancelled:
            state = "cancelled"
        elif outcome.error is not None:
            retry = outcome.retry_at is not None and current.attempts < current.max_attempts
            state = "queued" if retry else "failed"
            run_at = outcome.retry_at if retry and outcome.retry_at is not None else run_at
        self._put(
            current,
            state=state,
            run_at=run_at,
            result=outcome.result,
            errors=errors,
            lease_until=None,
            locked_by=None,
            finished_at=None if state == "queued" else now,
            progress=100 if state == "succeeded" else current.progress,
        )
        return state

    async def extend_leases(self, worker: str, job_ids: list[str], lease_s: float) -> set[str]:
        lease = now_us() + int(lease_s * 1_000_000)
        cancel = set()
        for job_id in job_ids:
            job = self._held(job_id, worker)
            if job is not None:
                self._put(job, lease_until=lease)
                if job.cancel_requested:
                    cancel.add(job_id)
        return cancel

    async def close(self) -> None:
        return None

    async def rescue_expired(self) -> int:
        now = now_us()
        expired = [
            j
            for j in self._jobs.values()
            if j.state == "running" and j.lease_until is not None and j.lease_until < now
        ]
        for job in expired:
            if job.attempts >= job.max_attempts:
                self._put(job, state="failed", lease_until=None, locked_by=None, finished_at=now)
            else:
                self._put(job, state="queued", lease_until=None, locked_by=None, run_at=now)
        return len(expired)

    async def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def set_progress(self, job: Job, worker: str, percent: int, message: str | None) -> None:
        current = self._held(job.id, worker)
        if current is not None:
            self._put(current, progress=max(0, min(100, percent)), progress_message=message)

    async def cancel(self, job_id: str, *, unstarted_only: bool = False) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.state == "queued" and not (unstarted_only and job.attempts):
            return self._put(job, state="cancelled", finished_at=now_us())
        if job.state == "running" and not unstarted_only:
            return self._put(job, cancel_requested=True)
        return job

    async def release(self, worker: str, job_ids: list[str]) -> int:
        held = [j for j in map(lambda i: self._held(i, worker), job_ids) if j is not None]
        for job in held:
            self._put(
                job, state="queued", attempts=job.attempts - 1, lease_until=None, locked_by=None
            )
        return len(held)

    async def prune_finished(self, before_us: int) -> int:
        old = [
            j.id
            for j in self._jobs.values()
            if j.state in TERMINAL and j.finished_at is not None and j.finished_at < before_us
        ]
        for job_id in old:
            del self._jobs[job_id]
        return len(old)

    async def retry(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.state in ("failed", "cancelled"):
            return self._put(
                job,
                state="queued",
                attempts=0,
                run_at=now_us(),
                finished_at=None,
                cancel_requested=False,
            )
        return job

    async def recent(self, state: str | None, limit: int) -> list[Job]:
        jobs = [j for j in self._jobs.values() if state is None or j.state == state]
        return sorted(jobs, key=lambda j: j.id, reverse=True)[:limit]

    async def depth(self) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        for job in self._jobs.values():
            if job.state in ("queued", "running"):
                counts[(job.queue, job.state)] = counts.get((job.queue, job.state), 0) + 1
        return [(queue, state, n) for (queue, state), n in sorted(counts.items())]
