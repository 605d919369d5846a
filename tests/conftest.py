"""Fixtures: a real database per test (an SQLite file, or a fresh Postgres database when
TOOLCALLSTORE_TEST_DATABASE_URL is set), the app in-process, and the server as a subprocess."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from toolcallstore.app import create_app
from toolcallstore.bootstrap import bootstrap
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.settings import Settings

PG_URL = os.environ.get("TOOLCALLSTORE_TEST_DATABASE_URL")
requires_postgres = pytest.mark.skipif(
    not PG_URL, reason="TOOLCALLSTORE_TEST_DATABASE_URL is not set"
)


def _pg_url_for(database: str) -> str:
    assert PG_URL is not None
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{database}"


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def database_url(tmp_path: Path) -> AsyncIterator[str]:
    """A new, empty database: Postgres when configured, else an SQLite file."""
    if not PG_URL:
        yield f"sqlite:///{tmp_path / 'toolcallstore.db'}"
        return
    name = f"tcs_test_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url_for(name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.connect()
    await migrate(database)
    try:
        yield database
    finally:
        await database.disconnect()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        admin_key_file=str(tmp_path / "admin-key"),
        assets_dir=str(tmp_path / "assets"),
        audit_flush_ms=10,
        access_log=False,
        job_lease_seconds=3.0,
        # In-process apps have no socket for their own sandbox: tests that refresh prices
        # set this themselves.
        price_refresh_seconds=0,
        # Tests fire hundreds of requests from one key at once: the rate limits (issue 22) are
        # off unless a test sets them (tests/api/test_rate_limits.py; a key's own applies).
        rate_limit_key_per_s=0.0,
        rate_limit_tenant_per_s=0.0,
    )


@dataclass
class Api:
    """An in-process app and a client for it, plus the bootstrap admin key's secret."""

    client: httpx.AsyncClient
    admin_key: str
    app: object

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.admin_key}"}

    def idem(self, secret: str | None = None, key: str | None = None) -> dict[str, str]:
        return {**self.auth(secret), "Idempotency-Key": key or secrets.token_hex(8)}


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as value:
        yield value


class running_api:
    """Start create_app(settings) with its lifespan and bootstrap its admin key."""

    def __init__(self, settings: Settings, client_addr: str = "127.0.0.1") -> None:
        self.settings = settings
        self.client_addr = client_addr

    async def __aenter__(self) -> Api:
        app = create_app(self.settings)
        self._lifespan = app.router.lifespan_context(app)
        await self._lifespan.__aenter__()
        svc = app.state.services
        created = await bootstrap(svc.db, self.settings.resolved_admin_key_file())
        secret = created[1] if created else self.settings.resolved_admin_key_file().read_text()
        transport = httpx.ASGITransport(app=app, client=(self.client_addr, 40000))
        self._client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        return Api(self._client, secret.strip(), app)

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    admin_key: str


def start_server(database_url: str, workdir: Path, port: int | None = None, **env: str) -> Server:
    """`toolcallstore serve` in a subprocess; returns once /readyz answers 200."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "TOOLCALLSTORE_DATABASE_URL": database_url,
        "TOOLCALLSTORE_ADMIN_KEY_FILE": str(workdir / "admin-key"),
        # As in `settings`: off unless the test sets them.
        "TOOLCALLSTORE_RATE_LIMIT_KEY_PER_S": "0",
        "TOOLCALLSTORE_RATE_LIMIT_TENANT_PER_S": "0",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "toolcallstore", "serve", "--port", str(port)],
        cwd=workdir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("server did not become ready in 30 s")
    key_file = workdir / "admin-key"  # absent when another process bootstrapped the database
    key = key_file.read_text().strip() if key_file.exists() else ""
    return Server(process, base_url, key)


def kill_server(server: Server) -> str:
    """SIGKILL: no shutdown, no flush, no lease handed back."""
    server.process.kill()
    out, _ = server.process.communicate()
    return out


def stop_server(server: Server) -> str:
    server.process.terminate()
    try:
        out, _ = server.process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        out, _ = server.process.communicate()
    return out


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    srv = start_server(database_url, tmp_path)
    try:
        yield srv
    finally:
        stop_server(srv)
