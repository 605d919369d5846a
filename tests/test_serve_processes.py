"""`toolcallstore serve --processes N`: real server processes sharing one port on Postgres, and
a clear refusal on SQLite."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, requires_postgres, start_server
from toolcallstore.db import Database
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.settings import Settings

PID = re.compile(r'toolcallstore_process_info\{pid="(\d+)"\}')


def _answering_pids(base_url: str, want: int, tries: int = 400) -> set[int]:
    """The pids that answer /metrics, each request on a new connection."""
    seen: set[int] = set()
    for _ in range(tries):
        with httpx.Client(base_url=base_url, timeout=5) as client:
            match = PID.search(client.get("/metrics").text)
        assert match is not None
        seen.add(int(match[1]))
        if len(seen) >= want:
            break
    return seen


def _parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M)[1])  # type: ignore[index]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@requires_postgres
async def test_two_processes_share_the_port_each_runs_jobs_and_sigterm_stops_all(
    database_url: str, tmp_path: Path
) -> None:
    env = {"TOOLCALLSTORE_PROCESSES": "2", "TOOLCALLSTORE_WORKERS": "4"}
    server = await asyncio.to_thread(start_server, database_url, tmp_path, **env)
    db = Database(database_url)
    await db.connect()
    try:
        pids = await asyncio.to_thread(_answering_pids, server.base_url, 2)
        assert len(pids) == 2, pids
        assert all(_parent_of(pid) == server.process.pid for pid in pids)
        # One bootstrap for both: one tenant, one admin key, and it works in either process.
        assert await db.fetch_val("SELECT count(*) FROM tenants") == 1
        assert await db.fetch_val("SELECT count(*) FROM api_keys") == 1
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        for _ in range(10):
            assert httpx.get(f"{server.base_url}/v1/me", headers=headers).status_code == 200

        # Each process runs jobs from the one queue, none twice.
        store = SqlJobStore(db)
        await store.enqueue_many([NewJob("sandbox.record", {"ms": 20}) for _ in range(300)])
        deadline = time.monotonic() + 60
        while await db.fetch_val("SELECT count(*) FROM sandbox_effects") < 300:
            assert time.monotonic() < deadline, "the jobs did not all run in 60 s"
            await asyncio.sleep(0.1)
        rows = await db.fetch_all("SELECT worker, runs FROM sandbox_effects")
        assert {row["runs"] for row in rows} == {1}
        assert {int(row["worker"].split(":")[1]) for row in rows} == pids
    finally:
        server.process.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(server.process.communicate, timeout=30)
        await db.disconnect()
    assert server.process.returncode == 0, out
    assert not any(_alive(pid) for pid in pids)
    assert out.count("Application shutdown complete") == 2, out
    assert "Traceback" not in out


def test_sqlite_refuses_several_processes_with_a_reason(tmp_path: Path) -> None:
    env = {**os.environ, "TOOLCALLSTORE_DATABASE_URL": f"sqlite:///{tmp_path / 'one.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "toolcallstore", "serve", "--port", str(free_port()),
         "--processes", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--processes 2 needs Postgres" in done.stderr
    assert "one writer" in done.stderr
    assert not (tmp_path / "one.db").exists()  # refused before touching anything


def test_the_settings_a_parent_exports_are_the_ones_its_processes_read() -> None:
    custom = Settings(
        database_url="postgresql://u@h:5432/d", port=9123, processes=3, access_log=False,
        job_lease_seconds=2.5, queue_limits="media=2", master_key="k1:AAAA",
    )  # fmt: skip
    assert Settings.from_env(custom.to_env()) == custom
