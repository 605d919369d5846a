"""Crash and multi-process behaviour of the queue, with real server processes."""

import asyncio
import time
from pathlib import Path

from tests.conftest import kill_server, requires_postgres, start_server, stop_server
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob

FAST_RECOVERY = {
    "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2",
    "TOOLCALLSTORE_WORKERS": "8",
    "TOOLCALLSTORE_JOB_POLL_MS": "200",
    "TOOLCALLSTORE_ACCESS_LOG": "false",
}
# Only the test's own jobs: the server also queues its periodic sweep, which may be waiting,
# running or stranded by the kill when these counts are taken.
RECORD_JOBS = "SELECT count(*) FROM jobs WHERE type = 'sandbox.record'"


async def _count(db: Database, sql: str) -> int:
    return int(await db.fetch_val(sql))


async def _wait_until(db: Database, sql: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    value = 0
    while time.monotonic() < deadline:
        value = await _count(db, sql)
        if value >= at_least:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sql!r} reached only {value} of {at_least} in {timeout} s")


async def test_kill_9_mid_run_loses_no_job_and_repeats_no_effect(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(database_url)
    await db.connect()
    await migrate(db)
    store = SqlJobStore(db)
    for i in range(1000):
        await store.enqueue(NewJob("sandbox.record", {"ms": 20, "i": i}, max_attempts=10))
    server = await asyncio.to_thread(start_server, database_url, tmp_path, **FAST_RECOVERY)
    try:
        await _wait_until(db, "SELECT count(*) FROM sandbox_effects", 250, timeout=60)
    finally:
        await asyncio.to_thread(kill_server, server)
    stranded = await _count(db, f"{RECORD_JOBS} AND state = 'running'")
    done_before = await _count(db, f"{RECORD_JOBS} AND state = 'succeeded'")
    assert done_before < 1000, "the run finished before the kill; the test proves nothing"

    restarted = await asyncio.to_thread(start_server, database_url, tmp_path, **FAST_RECOVERY)
    try:
        await _wait_until(db, f"{RECORD_JOBS} AND state = 'succeeded'", 1000, timeout=90)
    finally:
        out = await asyncio.to_thread(stop_server, restarted)
    assert "Traceback" not in out
    assert await _count(db, f"{RECORD_JOBS} AND state <> 'succeeded'") == 0
    assert await _count(db, "SELECT count(*) FROM sandbox_effects") == 1000
    runs = await _count(db, "SELECT sum(runs) FROM sandbox_effects")
    # Jobs stranded by the kill may have run twice: their effect still happened once.
    assert 1000 <= runs <= 1000 + stranded
    await db.disconnect()


@requires_postgres
async def test_two_processes_share_the_postgres_queue(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    await db.connect()
    await migrate(db)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    servers = [
        await asyncio.to_thread(start_server, database_url, d, **FAST_RECOVERY) for d in dirs
    ]
    try:
        store = SqlJobStore(db)
        for i in range(1000):
            await store.enqueue(NewJob("sandbox.record", {"ms": 10, "i": i}))
        await _wait_until(db, f"{RECORD_JOBS} AND state = 'succeeded'", 1000, timeout=90)
    finally:
        for server in servers:
            await asyncio.to_thread(stop_server, server)
    assert await _count(db, "SELECT count(*) FROM sandbox_effects") == 1000
    assert await _count(db, "SELECT max(runs) FROM sandbox_effects") == 1  # none ran twice
    rows = await db.fetch_all("SELECT worker, count(*) AS n FROM sandbox_effects GROUP BY worker")
    pids = {row["worker"].split(":")[1] for row in rows}
    assert len(pids) == 2, rows  # both processes did work
    await db.disconnect()
