"""Jobs for agents: status (with long-poll), Server-Sent Events, cooperative cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from toolcallstore.auth import Principal, require_scope
from toolcallstore.controls.executions import JOB_TYPE as TOOL_JOB_TYPE
from toolcallstore.errors import NotFound, StateConflict
from toolcallstore.objects import job_object
from toolcallstore.queue.store import TERMINAL, Job
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import Operation
from toolcallstore.validation import Field, wait_seconds
from toolcallstore.webhooks.dispatch import DELIVER_JOB_TYPE

POLL_S = 0.05  # how often a waiting request looks again: changes show within 50-100 ms
MAX_WAIT_S = 60
SSE_PING_S = 15.0


def _view(job: Job) -> tuple[Any, ...]:
    """What an agent waits for a change of."""
    return (job.state, job.progress, job.progress_message, job.attempts, job.cancel_requested)


@dataclass(frozen=True)
class _Owner:
    """What a job belongs to: its mode, its project, and the scope that may cancel it."""

    livemode: bool
    project_id: str | None
    cancel_scope: str


async def _owner_of(request: Request, job: Job) -> _Owner | None:
    """A tool job is its execution's, a delivery job its endpoint's; others (no owning record:
    the tenant's internal jobs) are the tenant's own, test mode, and cancelled by `admin`."""
    db = services(request).db
    if job.type == TOOL_JOB_TYPE:
        row = await db.fetch_one(
            "SELECT livemode, project_id, tool FROM executions WHERE id = :id AND tenant_id = :t",
            {"id": job.payload.get("execution_id"), "t": job.tenant_id},
        )
        if row is None:
            return None
        tool = services(request).tools.get(row["tool"])
        scope = tool.scope if tool is not None else "admin"
        return _Owner(bool(row["livemode"]), row["project_id"], scope)
    if job.type == DELIVER_JOB_TYPE:
        row = await db.fetch_one(
            "SELECT e.livemode FROM webhook_deliveries d JOIN webhook_endpoints e"
            " ON e.id = d.endpoint_id WHERE d.id = :id AND d.tenant_id = :t",
            {"id": job.payload.get("delivery_id"), "t": job.tenant_id},
        )
        return None if row is None else _Owner(bool(row["livemode"]), None, "webhooks:manage")
    return _Owner(False, None, "admin")


async def _own_job(request: Request, principal: Principal) -> tuple[Job, _Owner]:
    """The job, if the caller may see it: same tenant, same mode and, for a key bound to a
    project, that project's; 404 otherwise, as for quotes and executions."""
    job = await services(request).jobs.store.get(request.path_params["job_id"])
    owner = None
    if job is not None and job.tenant_id == principal.tenant_id:
        owner = await _owner_of(request, job)
    if (
        job is None
        or owner is None
        or owner.livemode != principal.livemode
        or principal.key.project_id not in (None, owner.project_id)
    ):
        raise NotFound("No such job.", param="job_id")
    return job, owner


async def get_job(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    wait = wait_seconds(request, MAX_WAIT_S)
    job, _ = await _own_job(request, principal)
    store = services(request).jobs.store
    deadline = time.monotonic() + wait
    first = _view(job)
    while job.state not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        latest = await store.get(job.id)
        if latest is None:
            break
        job = latest
        if _view(job) != first:
            break
    return JSONResponse(job_object(job))


async def job_events(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    job, _ = await _own_job(request, principal)
    store = services(request).jobs.store

    async def events() -> AsyncIterator[bytes]:
        current: Job | None = job
        last_view = None
        last_sent = time.monotonic()
        while current is not None:
            if _view(current) != last_view:
                last_view = _view(current)
                last_sent = time.monotonic()
                yield b"event: job\ndata: " + orjson.dumps(job_object(current)) + b"\n\n"
                if current.state in TERMINAL:
                    return
            elif time.monotonic() - last_sent > SSE_PING_S:
                last_sent = time.monotonic()
                yield b": ping\n\n"
            await asyncio.sleep(POLL_S)
            current = await store.get(job.id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def cancel_job(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    job, owner = await _own_job(request, principal)
    require_scope(request, owner.cancel_scope)  # who may see a job may not stop it
    # A billable tool's job may have acted once it started (an effect, then a timeout): it is
    # cancelled only before its first attempt, else its hold would be released unpaid.
    tool_job = job.type == TOOL_JOB_TYPE
    cancelled = await services(request).jobs.store.cancel(job.id, unstarted_only=tool_job)
    assert cancelled is not None
    if tool_job and cancelled.state not in TERMINAL:
        raise StateConflict("This tool's job has already started, and its effect may have"
                            " happened: it can no longer be cancelled.", code="job_started",
                            param="job_id")  # fmt: skip
    return JSONResponse(job_object(cancelled))


routes = [
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
]

operations = [
    Operation("GET", "/v1/jobs/{job_id}", "A job; `?wait=` long-polls up to 60 s for a change",
              "jobs", "jobs:read", query={"wait": Field(float)}, responses={200: "Job"}),
    Operation("GET", "/v1/jobs/{job_id}/events", "A job's changes as Server-Sent Events"
              " (`event: job`, ends when the job does)", "jobs", "jobs:read",
              responses={200: "Job"}, streams=("text/event-stream",)),
    Operation("POST", "/v1/jobs/{job_id}/cancel", "Cancel a job (a tool's job only before"
              " its first attempt)", "jobs", "jobs:read", responses={200: "Job"},
              errors={409: ("job_started",)}),
]  # fmt: skip
