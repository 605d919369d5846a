"""Shared bench helpers: start a server subprocess, drive it with wrk (or an aiohttp loop)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Throughput benches drive one key as hard as they can: the rate limits (issue 22) would answer
# most of that 429. Off unless a bench sets them (bench/rate_limit.py does).
RATE_LIMITS_OFF = {
    "TOOLCALLSTORE_RATE_LIMIT_KEY_PER_S": "0",
    "TOOLCALLSTORE_RATE_LIMIT_TENANT_PER_S": "0",
}


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class BenchServer:
    process: subprocess.Popen[bytes]
    base_url: str
    admin_key: str
    workdir: Path
    database_url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(port: int, database_url: str | None = None, **env: str) -> BenchServer:
    workdir = Path(tempfile.mkdtemp(prefix="tcs-bench-"))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    full_env.update(RATE_LIMITS_OFF)
    full_env.update(env)
    full_env["TOOLCALLSTORE_DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.db'}"
    full_env["TOOLCALLSTORE_ADMIN_KEY_FILE"] = str(workdir / "admin-key")
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "toolcallstore", "serve", "--port", str(port)],
        cwd=workdir,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).is_success:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        raise SystemExit(f"server did not start; see {workdir / 'server.log'}")
    key = (workdir / "admin-key").read_text().strip()
    return BenchServer(process, base, key, workdir, full_env["TOOLCALLSTORE_DATABASE_URL"])


def drive(url: str, connections: int, seconds: float, headers: dict[str, str]) -> Load:
    """Closed-loop load: `connections` clients each sending the next request on reply."""
    if shutil.which("wrk"):
        return _drive_wrk(url, connections, seconds, headers)
    return asyncio.run(_drive_aiohttp(url, connections, seconds, headers))


def load_generator() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp (install wrk for a lighter client)"


def _drive_wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> Load:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(rps, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"), int(errors[1]) if errors else 0)


def _wrk_ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def _drive_aiohttp(
    url: str, connections: int, seconds: float, headers: dict[str, str]
) -> Load:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    errors += resp.status >= 400
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Load(
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99) - 1] * 1000,
        errors,
    )


def admin_post(client: httpx.Client, admin_key: str, path: str, body: dict[str, object]) -> Any:
    """POST as the admin key with a fresh Idempotency-Key; the answer's JSON (raises on non-2xx)."""
    headers = {"Authorization": f"Bearer {admin_key}", "Idempotency-Key": secrets.token_hex(16)}
    resp = client.post(path, json=body, headers=headers)
    resp.raise_for_status()
    return resp.json()
