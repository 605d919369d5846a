"""The worker pool in the running app, seen through the jobs API."""

import asyncio
import time

import orjson

from tests.conftest import Api, running_api
from toolcallstore.db import Database
from toolcallstore.ids import now_us
from toolcallstore.metrics import Metrics
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import JobContext, PoolConfig, Registry, WorkerPool
from toolcallstore.settings import Settings


async def _tenant(api: Api) -> str:
    me = await api.client.get("/v1/me", headers=api.auth())
    tenant: str = me.json()["tenant_id"]
    return tenant


async def _enqueue(api: Api, job_type: str, payload: dict, **extra: object) -> str:
    pool = api.app.state.services.jobs  # type: ignore[attr-defined]
    job, _ = await pool.enqueue(NewJob(job_type, payload, tenant_id=await _tenant(api), **extra))
    job_id: str = job.id
    return job_id


async def _wait_for_state(api: Api, job_id: str, state: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await api.client.get(f"/v1/jobs/{job_id}?wait=2", headers=api.auth())
        body: dict = r.json()
        if body["state"] == state:
            return body
    raise AssertionError(f"job {job_id} never reached {state}: {body}")


async def test_a_job_runs_reports_progress_and_succeeds(api: Api) -> None:
    job_id = await _enqueue(api, "sandbox.sleep", {"ms": 300})
    done = await _wait_for_state(api, job_id, "succeeded")
    assert done["result"] == {"slept_ms": 300} and done["progress"] == 100
    assert done["attempts"] == 1 and done["errors"] == [] and done["finished"] is not None


async def test_long_poll_returns_soon_after_progress_changes(api: Api) -> None:
    job_id = await _enqueue(api, "sandbox.sleep", {"ms": 3000})
    await _wait_for_state(api, job_id, "running")
    first = (await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth())).json()
    started = time.monotonic()
    r = await api.client.get(f"/v1/jobs/{job_id}?wait=30", headers=api.auth())
    elapsed = time.monotonic() - started
    changed = r.json()
    assert (changed["progress"], changed["state"]) != (first["progress"], first["state"])
    # Progress moves every 300 ms; the answer comes with that change, far before 30 s.
    assert elapsed < 5
    lag = time.time() - changed["updated"]
    assert lag < 1.0, f"answered {lag:.3f} s after the change"


async def test_jobs_of_other_tenants_are_404(api: Api) -> None:
    pool = api.app.state.services.jobs  # type: ignore[attr-defined]
    other, _ = await pool.enqueue(NewJob("sandbox.noop", {}, tenant_id="ten_someone_else"))
    for path in (f"/v1/jobs/{other.id}", f"/v1/jobs/{other.id}/events"):
        r = await api.client.get(path, headers=api.auth())
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.client.post(f"/v1/jobs/{other.id}/cancel", headers=api.auth())
    assert r.status_code == 404
    weak = await api.client.post("/v1/keys", json={"scopes": ["llm:chat"]}, headers=api.idem())
    r = await api.client.get(f"/v1/jobs/{other.id}", headers=api.auth(weak.json()["secret"]))
    assert r.status_code == 403 and r.json()["error"]["required_scope"] == "jobs:read"


async def test_events_stream_progress_until_the_end(api: Api) -> None:
    job_id = await _enqueue(api, "sandbox.sleep", {"ms": 500})
    events = []
    async with api.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=api.auth()) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
    assert events[-1]["state"] == "succeeded"
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and len(events) >= 3


async def test_failures_retry_with_backoff_then_dead_letter(api: Api) -> None:
    flaky = await _enqueue(api, "sandbox.sleep", {"ms": 10, "fail_times": 1})
    doomed = await _enqueue(api, "sandbox.sleep", {"ms": 10, "fail_times": 9}, max_attempts=2)
    ok = await _wait_for_state(api, flaky, "succeeded")
    assert ok["attempts"] == 2 and len(ok["errors"]) == 1
    assert "failing on purpose" in ok["errors"][0]["error"]
    dead = await _wait_for_state(api, doomed, "failed")
    assert dead["attempts"] == 2 and [e["attempt"] for e in dead["errors"]] == [1, 2]
    # The retry waited for its backoff (0.5-1 s after the first failure).
    gap_us = dead["errors"][1]["at"] - dead["errors"][0]["at"]
    assert gap_us >= 500_000


async def test_scheduled_jobs_wait_for_their_time(api: Api) -> None:
    job_id = await _enqueue(api, "sandbox.noop", {}, run_at=now_us() + 1_500_000)
    await asyncio.sleep(0.5)
    early = (await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth())).json()
    assert early["state"] == "queued"
    done = await _wait_for_state(api, job_id, "succeeded")
    assert done["finished"] >= done["run_at"]


async def test_cancel_a_queued_job_at_once_and_a_running_one_cooperatively(api: Api) -> None:
    later = await _enqueue(api, "sandbox.noop", {}, run_at=now_us() + 60_000_000)
    r = await api.client.post(f"/v1/jobs/{later}/cancel", headers=api.auth())
    assert r.json()["state"] == "cancelled"
    running = await _enqueue(api, "sandbox.sleep", {"ms": 20_000})
    await _wait_for_state(api, running, "running")
    r = await api.client.post(f"/v1/jobs/{running}/cancel", headers=api.auth())
    assert r.json()["cancel_requested"] is True
    stopped = await _wait_for_state(api, running, "cancelled", timeout=10)
    assert stopped["progress"] < 100


async def test_unknown_job_types_fail_with_a_reason(api: Api) -> None:
    job_id = await _enqueue(api, "nobody.handles.this", {}, max_attempts=1)
    dead = await _wait_for_state(api, job_id, "failed")
    assert "no handler" in dead["errors"][0]["error"]


async def test_shutdown_hands_running_jobs_back_for_another_worker(
    api: Api, settings: Settings
) -> None:
    grace = settings.with_(job_lease_seconds=60.0)
    async with running_api(grace) as first:
        first.app.state.services.jobs.config = PoolConfig(  # type: ignore[attr-defined]
            concurrency=4, lease_s=60.0, grace_s=0.3
        )
        job_id = await _enqueue(first, "sandbox.sleep", {"ms": 4000})
        await _wait_for_state(first, job_id, "running")
    # The first instance has stopped: the job is queued again, its attempt not spent, and the
    # already running second instance takes it at once instead of after a 60 s lease.
    done = await _wait_for_state(api, job_id, "succeeded", timeout=15)
    assert done["attempts"] == 1


async def test_per_queue_concurrency_limits_hold(db: Database) -> None:
    running = 0
    peak = 0

    async def slow(ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    registry = Registry()
    registry.register("slow", slow, queue="narrow")
    store = SqlJobStore(db)
    pool = WorkerPool(
        store, registry, PoolConfig(concurrency=8, queue_limits={"narrow": 2}), Metrics()
    )
    tasks = pool.start()
    try:
        jobs = [(await pool.enqueue(NewJob("slow", {"i": i})))[0] for i in range(12)]
        assert all(j.queue == "narrow" for j in jobs)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = {(await store.get(j.id)).state for j in jobs}  # type: ignore[union-attr]
            if states == {"succeeded"}:
                break
            await asyncio.sleep(0.05)
        assert states == {"succeeded"} and peak == 2
    finally:
        await pool.stop()
    assert all(t.done() for t in tasks.values())


async def test_metrics_show_queue_depth_claim_latency_and_run_time(api: Api) -> None:
    job_id = await _enqueue(api, "sandbox.noop", {})
    await _wait_for_state(api, job_id, "succeeded")
    await _enqueue(api, "sandbox.noop", {}, run_at=now_us() + 60_000_000)
    text = (await api.client.get("/metrics")).text
    assert 'toolcallstore_jobs{queue="default",state="queued"} 1.0' in text
    assert 'toolcallstore_job_claim_latency_seconds_count{queue="default"}' in text
    assert 'toolcallstore_job_run_seconds_count{state="succeeded",type="sandbox.noop"} 1.0' in text
    ready = (await api.client.get("/readyz")).json()
    assert {"task:workers", "task:heartbeat", "task:rescuer"} <= set(ready["checks"])


async def test_an_instance_with_no_workers_serves_and_stops_cleanly(settings: Settings) -> None:
    async with running_api(settings.with_(workers=0)) as api:
        job_id = await _enqueue(api, "sandbox.noop", {})
        await asyncio.sleep(0.3)
        job = (await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth())).json()
        assert job["state"] == "queued"  # nobody here runs jobs
        assert (await api.client.get("/readyz")).status_code == 200
