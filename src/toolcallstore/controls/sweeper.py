"""Jobs of the controls: run job-mode tools, and sweep what crashes leave behind.

`tool.execute` runs a job tool's call and settles it; a retried run finds the execution already
closed and does nothing, and tools key their side effects by execution id, so a crash can
repeat the run but not the effect or the charge. `controls.sweep` (enqueued every
`TOOLCALLSTORE_HOLD_SWEEP_SECONDS`, one at a time across processes) releases holds whose
execution can no longer finish and expires approvals.
"""

from __future__ import annotations

import logging
from typing import Any

from toolcallstore.controls.approvals import expire_approvals
from toolcallstore.controls.executions import (
    JOB_TYPE,
    SWEEP_JOB_TYPE,
    Origin,
    close_execution,
    interrupt_execution,
    run_tool,
)
from toolcallstore.controls.quotes import Quote
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import APIError
from toolcallstore.ids import now_us
from toolcallstore.queue.worker import JobContext, Registry, RetryAt
from toolcallstore.tools import ToolCall, ToolRegistry
from toolcallstore.tools.registry import CostlyFailure, FinalFailure

log = logging.getLogger("toolcallstore.controls.sweeper")

LIVE_JOB_STATES = ("queued", "running")
SWEEP_BATCH = 500


def register_control_jobs(
    registry: Registry, db: Database, tools: ToolRegistry, *, job_hold_seconds: int
) -> None:
    async def execute_tool(ctx: JobContext) -> dict[str, Any]:
        return await run_tool_job(db, tools, ctx)

    async def sweep(ctx: JobContext) -> dict[str, int]:
        return await sweep_holds(db, job_hold_seconds=job_hold_seconds)

    registry.register(JOB_TYPE, execute_tool, queue="tools", max_attempts=5)
    registry.register(SWEEP_JOB_TYPE, sweep, max_attempts=1)


async def run_tool_job(db: Database, tools: ToolRegistry, ctx: JobContext) -> dict[str, Any]:
    execution_id = ctx.job.payload["execution_id"]
    execution = await db.fetch_one("SELECT * FROM executions WHERE id = :id", {"id": execution_id})
    if execution is None or execution["state"] != "running":
        return {"execution_id": execution_id, "skipped": "already closed"}
    tool = tools.get(execution["tool"])
    quote_row = await db.fetch_one(
        "SELECT * FROM quotes WHERE id = :id", {"id": execution["quote_id"]}
    )
    if tool is None or quote_row is None:
        raise RuntimeError(f"execution {execution_id}: tool or quote is missing")
    quote = Quote.from_row(quote_row)
    call = ToolCall(execution_id, quote.tenant_id, quote.project_id, quote.livemode, quote.params,
                    quote.estimate)  # fmt: skip
    result = await run_tool(tool, call)
    final = isinstance(result, FinalFailure)
    if isinstance(result, APIError) and not final and ctx.job.attempts < ctx.job.max_attempts:
        raise RuntimeError(result.message)  # the queue retries with backoff; the hold stays
    origin = Origin(execution["request_id"], execution["api_key_id"], None, "INTERNAL",
                    f"job:{JOB_TYPE}")  # fmt: skip
    if isinstance(result, APIError):
        # A failure that still cost the providers something keeps those costs on its receipt.
        spent = result.outcome if isinstance(result, CostlyFailure) else None
        await db.run_sync(close_execution, execution, origin, error=result, outcome=spent)
        # The job fails with its execution, so that neither says "succeeded" of the other.
        message = (f"the tool failed on its last attempt ({result.code}): its hold was"
                   f" released and nothing was charged. {result.message}")  # fmt: skip
        if final:
            raise RetryAt(message, None)  # no further attempt: nothing left to do
        raise RuntimeError(message)
    done = await db.run_sync(close_execution, execution, origin, outcome=result)
    status = "already closed" if done is None else done["state"]
    return {"execution_id": execution_id, "status": status}


async def sweep_holds(db: Database, *, job_hold_seconds: int) -> dict[str, int]:
    """Close holds past their expiry whose execution cannot finish any more; extend those whose
    job is still queued or running. Returns what it did."""
    now = now_us()
    rows = await db.fetch_all(
        "SELECT e.*, j.state AS job_state FROM holds h JOIN executions e ON e.id = h.execution_id"
        " LEFT JOIN jobs j ON j.id = e.job_id WHERE h.state = 'open' AND (h.expires_at <= :now"
        " OR j.state IN ('succeeded', 'failed', 'cancelled')) ORDER BY h.expires_at LIMIT :n",
        {"now": now, "n": SWEEP_BATCH},
    )
    released = extended = 0
    for row in rows:
        if row["job_state"] in LIVE_JOB_STATES:
            extended += await _extend(db, row, now + job_hold_seconds * 1_000_000)
        elif await interrupt_execution(db, row):
            released += 1
            log.warning("released the hold of interrupted execution %s", row["id"])
    expired = await db.run_sync(expire_approvals)
    return {"holds_released": released, "holds_extended": extended, "approvals_expired": expired}


async def _extend(db: Database, execution: Row, until: int) -> int:
    def extend(tx: SyncTransaction) -> int:
        rows = tx.fetch_all(
            "UPDATE holds SET expires_at = :until WHERE id = :id AND state = 'open' RETURNING id",
            {"until": until, "id": execution["hold_id"]},
        )
        return len(rows)

    return await db.run_sync(extend)
