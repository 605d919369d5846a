"""SIGTERM drains: a running job that fits in the grace period finishes, one that does not is
handed back to the queue (its attempt not spent), and the server exits on its own."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import start_server
from toolcallstore.db import Database
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob


async def test_sigterm_lets_short_jobs_finish_and_hands_long_ones_back(
    database_url: str, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(
        start_server, database_url, tmp_path, TOOLCALLSTORE_SHUTDOWN_GRACE_SECONDS="3",
        TOOLCALLSTORE_ACCESS_LOG="false", TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0",
    )  # fmt: skip
    db = Database(database_url, readers=1)
    await db.connect()
    try:
        store = SqlJobStore(db)
        short, _ = await store.enqueue(NewJob("sandbox.record", {"ms": 1500}))
        long, _ = await store.enqueue(NewJob("sandbox.sleep", {"ms": 60_000}))
        deadline = time.monotonic() + 20
        while {(await store.get(j.id)).state for j in (short, long)} != {"running"}:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the server did not take both jobs"
            await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.to_thread(server.process.communicate, timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            raise AssertionError("the server did not exit after SIGTERM") from None
        finished = await store.get(short.id)
        handed_back = await store.get(long.id)
        assert finished is not None and finished.state == "succeeded", out
        assert handed_back is not None and handed_back.state == "queued", out
        assert handed_back.attempts == 0 and handed_back.locked_by is None
        assert "draining" in out and "released unfinished jobs" in out
    finally:
        await db.disconnect()
        if server.process.poll() is None:
            server.process.kill()
