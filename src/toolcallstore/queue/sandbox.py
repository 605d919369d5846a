"""Sandbox job types: try the queue end to end without any provider (and crash-test it)."""

from __future__ import annotations

import asyncio
from typing import Any

from toolcallstore.db import Database
from toolcallstore.ids import now_us
from toolcallstore.queue.worker import JobContext, Registry


def register_sandbox_handlers(registry: Registry, db: Database) -> None:
    async def sleep(ctx: JobContext) -> dict[str, Any]:
        """Sleep `ms` in ten steps, reporting progress and honouring cancellation."""
        total_ms = int(ctx.job.payload.get("ms", 100))
        for step in range(1, 11):
            ctx.check_cancelled()
            await asyncio.sleep(total_ms / 10_000)
            await ctx.progress(step * 10, f"slept {step * total_ms // 10} ms")
        if ctx.job.payload.get("fail_times", 0) >= ctx.job.attempts:
            raise RuntimeError(f"failing on purpose (attempt {ctx.job.attempts})")
        return {"slept_ms": total_ms}

    async def record(ctx: JobContext) -> dict[str, Any]:
        """Record this job's effect once, however many times the job runs (counting the runs);
        with `fail_times`, fail its first N runs, whatever its attempts (a retried dead job)."""
        await asyncio.sleep(int(ctx.job.payload.get("ms", 0)) / 1000)
        async with db.transaction() as tx:
            runs = await tx.fetch_val(
                "INSERT INTO sandbox_effects (job_id, worker, runs, created_at)"
                " VALUES (:id, :worker, 1, :now)"
                " ON CONFLICT (job_id) DO UPDATE SET runs = sandbox_effects.runs + 1"
                " RETURNING runs",
                {"id": ctx.job.id, "worker": ctx.worker, "now": now_us()},
            )
        if int(runs) <= int(ctx.job.payload.get("fail_times", 0)):
            raise RuntimeError(f"failing on purpose (run {runs})")
        return {"recorded": ctx.job.id}

    async def noop(ctx: JobContext) -> None:
        return None

    registry.register("sandbox.sleep", sleep)
    registry.register("sandbox.record", record)
    registry.register("sandbox.noop", noop)
