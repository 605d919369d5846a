"""The operator's view: `toolcallstore serve` and the CLI as real subprocesses."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import Server, free_port, start_server, stop_server


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOOLCALLSTORE_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "toolcallstore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_first_start_prints_a_working_admin_key_once(tmp_path: Path) -> None:
    # The README's first command: no configuration, SQLite in the working directory.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    log = tmp_path / "serve.log"

    def serve() -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "toolcallstore", "serve", "--port", str(port)],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).is_success:
                    return process
            except httpx.TransportError:
                time.sleep(0.1)
        process.kill()
        raise AssertionError(log.read_text())

    process = serve()
    try:
        banner = log.read_text()
        key_file = tmp_path / "toolcallstore.db.admin-key"
        secret = key_file.read_text().strip()
        assert secret.startswith("tcs_test_") and secret in banner
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert (tmp_path / "toolcallstore.db").exists()
        base = f"http://127.0.0.1:{port}"
        me = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {secret}"})
        assert me.status_code == 200 and "admin" in me.json()["scopes"]
        assert httpx.get(f"{base}/v1/me").status_code == 401
        weak = httpx.post(
            f"{base}/v1/keys",
            json={"scopes": ["jobs:read"]},
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "first"},
        ).json()["secret"]
        denied = httpx.get(f"{base}/v1/keys", headers={"Authorization": f"Bearer {weak}"})
        assert denied.status_code == 403 and "keys:manage" in denied.json()["error"]["message"]
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert "Traceback" not in log.read_text() and "ERROR" not in log.read_text()
    # A restart finds the tenant and prints no new key.
    process = serve()
    process.terminate()
    process.wait(timeout=15)
    assert "tcs_test_" not in log.read_text()
    assert key_file.read_text().strip() == secret


def test_cli_creates_tenants_and_keys_that_the_server_honours(
    server: Server, database_url: str
) -> None:
    made = cli(database_url, "tenants", "create", "--name", "acme")
    assert made.returncode == 0, made.stderr
    tenant = json.loads(made.stdout)
    made = cli(
        database_url,
        "keys",
        "create",
        "--tenant",
        tenant["id"],
        "--scopes",
        "keys:manage,jobs:read",
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    auth = {"Authorization": f"Bearer {key['secret']}"}
    me = httpx.get(f"{server.base_url}/v1/me", headers=auth).json()
    assert me["tenant_id"] == tenant["id"] and me["scopes"] == ["jobs:read", "keys:manage"]
    listed = cli(database_url, "keys", "list", "--tenant", tenant["id"])
    assert key["id"] in listed.stdout and key["secret"] not in listed.stdout
    revoked = cli(database_url, "keys", "revoke", "--tenant", tenant["id"], key["id"])
    assert revoked.returncode == 0
    started = time.monotonic()
    while httpx.get(f"{server.base_url}/v1/me", headers=auth).status_code != 401:
        assert time.monotonic() - started < 5, "revocation not effective within 5 s"
        time.sleep(0.1)


def test_cli_mints_an_agent_key_that_quotes_its_own_calls(
    server: Server, database_url: str
) -> None:
    tenant = json.loads(cli(database_url, "tenants", "create", "--name", "agents").stdout)
    made = {}
    for name, extra in (("agent", ["--auto-quote-max-usd", "0.50"]), ("plain", [])):
        done = cli(database_url, "keys", "create", "--tenant", tenant["id"],
                   "--scopes", "llm:chat", "--name", name, *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
        made[name] = json.loads(done.stdout)
    assert made["agent"]["auto_quote_max_usd"] == "0.500000"
    assert made["plain"]["auto_quote_max_usd"] is None
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    answers = {
        name: httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key['secret']}"})
        for name, key in made.items()
    }  # fmt: skip
    assert answers["agent"].status_code == 200, answers["agent"].text  # no quote call first
    assert answers["plain"].json()["error"]["code"] == "quote_required"
    bad = cli(database_url, "keys", "create", "--tenant", tenant["id"], "--scopes", "llm:chat",
              "--auto-quote-max-usd", "-1")  # fmt: skip
    assert bad.returncode == 2 and "--auto-quote-max-usd must be a finite, non-negative" in (
        bad.stderr
    )


def test_cli_refuses_bad_input_with_a_message_not_a_traceback(database_url: str) -> None:
    bad_scope = cli(database_url, "keys", "create", "--tenant", "ten_x", "--scopes", "root")
    assert bad_scope.returncode == 2 and "unknown or empty scopes: root" in bad_scope.stderr
    no_tenant = cli(database_url, "keys", "create", "--tenant", "ten_x", "--scopes", "jobs:read")
    assert no_tenant.returncode == 2 and "no tenant ten_x" in no_tenant.stderr
    bad_url = cli("mysql://x/y", "migrate")
    assert bad_url.returncode == 2 and "unsupported database URL" in bad_url.stderr
    for result in (bad_scope, no_tenant, bad_url):
        assert "Traceback" not in result.stderr


def test_two_instances_run_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_server(f"sqlite:///{tmp_path / 'a' / 'a.db'}", tmp_path / "a")
    b = start_server(f"sqlite:///{tmp_path / 'b' / 'b.db'}", tmp_path / "b")
    try:
        assert a.admin_key != b.admin_key
        for srv, other in ((a, b), (b, a)):
            assert httpx.get(f"{srv.base_url}/v1/me", headers=_auth(srv)).is_success
            assert httpx.get(f"{srv.base_url}/v1/me", headers=_auth(other)).status_code == 401
    finally:
        stop_server(a)
        stop_server(b)


def _auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key}"}


def test_shutdown_flushes_the_audit_log_and_access_log(server: Server, database_url: str) -> None:
    request_ids = {
        httpx.get(f"{server.base_url}/v1/me", headers=_auth(server)).headers["ToolCall-Request-Id"]
        for _ in range(20)
    }
    out = stop_server(server)
    assert "Traceback" not in out
    access = [json.loads(line) for line in out.splitlines() if '"toolcallstore.access"' in line]
    logged = {line["request_id"]: line for line in access}
    assert request_ids <= set(logged)
    line = logged[next(iter(request_ids))]
    assert line["route"] == "/v1/me" and line["status"] == 200 and line["key_id"].startswith("key_")
    logs = [line for line in out.splitlines() if line.startswith("{")]
    assert logs and server.admin_key not in "\n".join(logs)
    verified = cli(database_url, "audit", "verify")
    assert verified.returncode == 0, verified.stdout
    rows = int(verified.stdout.split(":")[1].split()[0])
    assert rows >= 20


def test_metrics_trust_forwarded_addresses_only_from_the_proxy(server: Server) -> None:
    # Behind Caddy every request arrives from 127.0.0.1 with the real client in X-Forwarded-For.
    direct = httpx.get(f"{server.base_url}/metrics")
    assert direct.status_code == 200 and "toolcallstore_http_requests_total" in direct.text
    proxied = httpx.get(f"{server.base_url}/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 403 and proxied.json()["error"]["required_scope"] == "admin"
    as_admin = httpx.get(
        f"{server.base_url}/metrics", headers={"X-Forwarded-For": "203.0.113.7", **_auth(server)}
    )
    assert as_admin.status_code == 200


async def test_jobs_cli_lists_shows_cancels_and_retries(database_url: str) -> None:
    import asyncio

    from toolcallstore.db import Database
    from toolcallstore.db.migrate import migrate
    from toolcallstore.ids import now_us
    from toolcallstore.queue.sql import SqlJobStore
    from toolcallstore.queue.store import NewJob

    db = Database(database_url)
    await db.connect()
    await migrate(db)
    job, _ = await SqlJobStore(db).enqueue(
        NewJob("sandbox.noop", {}, run_at=now_us() + 3_600_000_000)
    )
    await db.disconnect()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(database_url, "jobs", *args)

    listed = await asyncio.to_thread(run, "list")
    assert job.id in listed.stdout and "# queue default: 1 queued" in listed.stdout
    shown = await asyncio.to_thread(run, "show", job.id)
    assert json.loads(shown.stdout)["state"] == "queued"
    cancelled = await asyncio.to_thread(run, "cancel", job.id)
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    retried = await asyncio.to_thread(run, "retry", job.id)
    assert json.loads(retried.stdout)["state"] == "queued"
    missing = await asyncio.to_thread(run, "show", "job_nope")
    assert missing.returncode == 2 and "no job job_nope" in missing.stderr
