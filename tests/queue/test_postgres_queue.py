"""The queue on Postgres: outcomes written in batches after the slot is freed, and a LISTEN that
survives losing its connection. Real Postgres connections and row locks, no stand-ins."""

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Api, requires_postgres, running_api
from toolcallstore.db import Database
from toolcallstore.metrics import Metrics
from toolcallstore.queue.listener import APPLICATION_NAME
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import JobContext, PoolConfig, Registry, WorkerPool
from toolcallstore.settings import Settings

pytestmark = requires_postgres


async def _state(api: Api, job_id: str) -> str:
    r = await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth())
    state: str = r.json()["state"]
    return state


async def _wait_state(api: Api, job_id: str, wanted: set[str], timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = await _state(api, job_id)
        if state in wanted:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} is {state!r}, never one of {wanted} in {timeout} s")


async def test_a_finished_job_frees_its_slot_at_once_but_shows_finished_only_once_written(
    settings: Settings,
) -> None:
    async with running_api(settings.with_(workers=1, job_lease_seconds=30.0)) as api:
        pool = api.app.state.services.jobs  # type: ignore[attr-defined]
        tenant = (await api.client.get("/v1/me", headers=api.auth())).json()["tenant_id"]
        first, _ = await pool.enqueue(NewJob("sandbox.record", {"ms": 1500}, tenant_id=tenant))
        await _wait_state(api, first.id, {"running"})
        second, _ = await pool.enqueue(NewJob("sandbox.noop", {}, tenant_id=tenant))
        # Another session locks the first job's row: its outcome cannot be written until
        # this session ends, as when the database is slow.
        locker = await asyncpg.connect(settings.database_url)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", first.id)
            # The only slot frees when the first handler returns, not when its outcome lands.
            assert await _wait_state(api, second.id, {"running", "succeeded"}) != "queued"
            # Until its outcome is durable, nobody is told the first job finished.
            assert await _state(api, first.id) == "running"
            await tx.rollback()
        finally:
            await locker.close()
        assert await _wait_state(api, first.id, {"succeeded"}) == "succeeded"
        assert await _wait_state(api, second.id, {"succeeded"}) == "succeeded"


@pytest.fixture
async def listening_pool(db: Database) -> AsyncIterator[tuple[WorkerPool, list[str]]]:
    """A pool that polls only once a minute: within seconds, only a NOTIFY (or the listener's
    own poll after a reconnect) can make it claim a job enqueued by another store."""
    ran: list[str] = []

    async def record(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    registry = Registry()
    registry.register("test.record", record)
    pool = WorkerPool(SqlJobStore(db), registry, PoolConfig(concurrency=2, poll_s=60), Metrics())
    close = await pool.listen(db.url)
    pool.start()
    try:
        yield pool, ran
    finally:
        await pool.stop()
        await close()


async def _runs_soon(db: Database, producer: SqlJobStore, ran: list[str]) -> str:
    job, _ = await producer.enqueue(NewJob("test.record", {}))
    deadline = time.monotonic() + 5
    while job.id not in ran and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert job.id in ran, "a job enqueued by another process was not picked up within 5 s"
    # Let its outcome land, and the claim that follows it find nothing.
    while (await producer.get(job.id)).state != "succeeded":  # type: ignore[union-attr]
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    return job.id


async def _listener_pids(db: Database) -> list[int]:
    rows = await db.fetch_all(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = :name",
        {"name": APPLICATION_NAME},
    )
    return [int(r["pid"]) for r in rows]


async def test_listen_reconnects_after_its_connection_is_killed_and_polls_once(
    db: Database, listening_pool: tuple[WorkerPool, list[str]]
) -> None:
    _, ran = listening_pool
    producer = SqlJobStore(db)  # its enqueues NOTIFY; they cannot wake the pool any other way
    await _runs_soon(db, producer, ran)
    (old_pid,) = await _listener_pids(db)

    assert await db.fetch_val("SELECT pg_terminate_backend(:pid)", {"pid": old_pid})
    # Enqueued while the LISTEN is down or coming back: its NOTIFY may reach nobody, and the
    # next poll is a minute away; the poll after reconnecting picks it up.
    await _runs_soon(db, producer, ran)

    deadline = time.monotonic() + 5
    while (pids := await _listener_pids(db)) in ([], [old_pid]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pids and old_pid not in pids
    # And the new connection listens: a NOTIFY wakes the pool again.
    await _runs_soon(db, producer, ran)
    await producer.close()


async def _lease(store: SqlJobStore, job_id: str) -> int:
    job = await store.get(job_id)
    assert job is not None and job.lease_until is not None
    return job.lease_until


async def test_a_heartbeat_skips_a_row_held_elsewhere_instead_of_waiting_for_it(
    db: Database,
) -> None:
    store = SqlJobStore(db)
    for n in range(2):
        await store.enqueue(NewJob("t", {"n": n}))
    held, free = await store.claim("default", "w", 2, lease_s=5)
    locker = await asyncpg.connect(db.url)
    try:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", held.id)
            # Waiting here would let every other lease of this worker run out meanwhile.
            await asyncio.wait_for(store.extend_leases("w", [held.id, free.id], 60), 5)
        assert await _lease(store, free.id) > free.lease_until + 30_000_000  # type: ignore[operator]
        assert await _lease(store, held.id) == held.lease_until  # skipped: the next beat extends it
        await store.extend_leases("w", [held.id], 60)
        assert await _lease(store, held.id) > held.lease_until + 30_000_000  # type: ignore[operator]
    finally:
        await locker.close()
        await store.close()
