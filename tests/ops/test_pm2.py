"""The real PM2 supervising the API from config/ecosystem.config.js, with a private PM2_HOME:
a SIGKILLed server is restarted and takes up the job it lost; `pm2 stop` lets a streamed chat
finish within the shutdown grace period."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.chat.helpers import models_file, sse_payloads
from tests.conftest import free_port
from toolcallstore.controls.pricing import REPO_CONFIG
from toolcallstore.db import Database
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob

ECOSYSTEM = REPO_CONFIG / "ecosystem.config.js"
GRACE_S = 8

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "pm2"], capture_output=True).returncode != 0,
    reason="pm2 is not installed (.ci/run installs it)",
)


@dataclass
class Pm2:
    home: Path
    env: dict[str, str]
    base_url: str
    database_url: str

    def run(self, *args: str) -> str:
        done = subprocess.run(["pm2", *args], env=self.env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def pid(self) -> int:
        apps = json.loads(self.run("jlist"))
        assert len(apps) == 1, apps
        return int(apps[0]["pid"])

    def restarts(self) -> int:
        return int(json.loads(self.run("jlist"))[0]["pm2_env"]["restart_time"])

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted((self.home / "logs").glob("*.log")))

    def wait_ready(self, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/readyz not green in {timeout} s:\n{self.logs()[-3000:]}")


@pytest.fixture
def pm2(database_url: str, tmp_path: Path) -> Iterator[Pm2]:
    """The API under a private PM2 daemon, started from the ecosystem file; the daemon is
    killed at the end."""
    port = free_port()
    models = models_file(tmp_path, {"slow": ("openai", "latency_ms=250")}, {"slow": ["slow"]})
    env_file = tmp_path / "toolcallstore.env"
    env_file.write_text(
        f"TOOLCALLSTORE_DATABASE_URL={database_url}\n"
        f"TOOLCALLSTORE_PORT={port}\n"
        f"TOOLCALLSTORE_ADMIN_KEY_FILE={tmp_path / 'admin-key'}\n"
        f"TOOLCALLSTORE_SHUTDOWN_GRACE_SECONDS={GRACE_S}\n"
        f"TOOLCALLSTORE_MODELS_FILE={models}\n"
        "TOOLCALLSTORE_JOB_LEASE_SECONDS=2\n"
        "TOOLCALLSTORE_PRICE_REFRESH_SECONDS=0\n"
        "TOOLCALLSTORE_ACCESS_LOG=false\n"
    )
    env_file.chmod(0o600)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")},
        "PM2_HOME": str(tmp_path / "pm2"),
        "TOOLCALLSTORE_ENV_FILE": str(env_file),
        "TOOLCALLSTORE_HOME": str(tmp_path),
        "TOOLCALLSTORE_LOG_DIR": str(tmp_path / "logs"),
        "TOOLCALLSTORE_PYTHON": sys.executable,
        "TOOLCALLSTORE_PM2_NAME": "tcs-test",
    }
    found = Pm2(tmp_path, env, f"http://127.0.0.1:{port}", database_url)
    try:
        found.run("start", str(ECOSYSTEM))
        found.wait_ready()
        yield found
    finally:
        subprocess.run(["pm2", "kill"], env=env, capture_output=True, timeout=60)


def _admin_key(pm2: Pm2) -> str:
    return (pm2.home / "admin-key").read_text().strip()


async def test_pm2_restarts_a_killed_server_and_the_job_it_held_completes_once(pm2: Pm2) -> None:
    config = subprocess.run(["pm2", "jlist"], env=pm2.env, capture_output=True, text=True)
    app = json.loads(config.stdout)[0]["pm2_env"]
    assert app["kill_timeout"] > GRACE_S * 1000 and app["max_memory_restart"] > 0
    assert app["pm_out_log_path"].startswith(str(pm2.home / "logs"))

    db = Database(pm2.database_url, readers=1)
    await db.connect()
    try:
        job, _ = await SqlJobStore(db).enqueue(NewJob("sandbox.record", {"ms": 4000}))
        deadline = time.monotonic() + 20
        while (await SqlJobStore(db).get(job.id)).state != "running":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the server did not take the job"
            await asyncio.sleep(0.05)
        first = pm2.pid()
        os.kill(first, signal.SIGKILL)  # mid-job: no shutdown, no lease handed back

        deadline = time.monotonic() + 30
        while pm2.pid() in (0, first):
            assert time.monotonic() < deadline, "PM2 did not restart the server"
            await asyncio.sleep(0.1)
        await asyncio.to_thread(pm2.wait_ready)
        assert pm2.restarts() == 1
        key = _admin_key(pm2)
        me = httpx.get(f"{pm2.base_url}/v1/me", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200, me.text

        deadline = time.monotonic() + 30
        while (done := await SqlJobStore(db).get(job.id)).state != "succeeded":  # type: ignore[union-attr]
            assert done is not None and done.state in ("queued", "running"), done
            assert time.monotonic() < deadline, "the job lost in the kill did not complete"
            await asyncio.sleep(0.1)
        assert done.attempts == 2  # the killed run, then the one that completed
        effects = await db.fetch_all("SELECT runs FROM sandbox_effects WHERE job_id = :id",
                                     {"id": job.id})  # fmt: skip
        assert effects == [{"runs": 1}]  # its effect happened once
    finally:
        await db.disconnect()


async def test_pm2_stop_lets_a_streamed_chat_finish_within_the_grace_period(pm2: Pm2) -> None:
    admin = _admin_key(pm2)
    async with httpx.AsyncClient(base_url=pm2.base_url, timeout=30) as client:
        r = await client.post(
            "/v1/keys",
            json={"scopes": ["llm:chat"], "auto_quote_max_usd": "1.00"},
            headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": "k1"},
        )
        assert r.status_code == 200, r.text
        key = r.json()["secret"]
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 50, "stream": True}  # fmt: skip
        chunks: list[bytes] = []
        stopping: asyncio.Task[subprocess.CompletedProcess[str]] | None = None
        refused_mid_stream = False
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as stream:  # fmt: skip
            assert stream.status_code == 200
            async for chunk in stream.aiter_bytes():
                chunks.append(chunk)
                if stopping is None and b"content" in b"".join(chunks):
                    # `pm2 stop` returns once the process has exited: run it alongside.
                    stopping = asyncio.create_task(asyncio.to_thread(
                        subprocess.run, ["pm2", "stop", "tcs-test"], env=pm2.env,
                        capture_output=True, text=True, timeout=60,
                    ))  # fmt: skip
                elif stopping is not None and not refused_mid_stream:
                    refused_mid_stream = not await _accepts_connections(pm2.base_url)
        assert stopping is not None
        stopped = await stopping
        assert stopped.returncode == 0, stopped.stderr
    # The server stopped listening while this stream went on, and the stream still ended
    # whole: the last chunk, the receipt, [DONE].
    assert refused_mid_stream
    payloads = sse_payloads(b"".join(chunks))
    assert payloads[-1] == "[DONE]"
    finished = [c["finish_reason"] for p in payloads[:-1] for c in p["choices"]]
    assert finished[-1] == "stop", payloads[-3:]
    assert payloads[-2]["toolcall"]["receipt_id"], payloads[-2]
    status = json.loads(pm2.run("jlist"))[0]["pm2_env"]["status"]
    assert status == "stopped"
    assert "draining" in pm2.logs()
    daemon_log = (pm2.home / "pm2" / "pm2.log").read_text()
    assert "via signal [SIGINT]" in daemon_log and "SIGKILL" not in daemon_log


async def _accepts_connections(base_url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as fresh:
            await fresh.get(f"{base_url}/healthz")
        return True
    except httpx.TransportError:
        return False
