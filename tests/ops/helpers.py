"""A store holding every kind of object, and the commands run as an operator runs them."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Api, running_api
from tests.controls.helpers import execute, make_key, quote
from toolcallstore.settings import Settings

MASTER_KEY = "k1:" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Populated:
    admin_key: str
    agent_key: str
    other_tenant_key: str
    queued_execution_id: str


async def populate(api: Api) -> Populated:
    """Tenants, keys (one revoked), a BYOK key, quotes, an approval granted and one pending,
    executions with receipts and ledger entries, an approved job left queued with its hold
    open (the app runs no workers), and the audit rows of all of it."""
    other = await api.client.post("/v1/tenants", json={"name": "acme"}, headers=api.idem())
    assert other.status_code == 200, other.text
    body = {"scopes": ["llm:chat"], "tenant_id": other.json()["id"], "auto_quote_max_usd": "1"}
    created = await api.client.post("/v1/keys", json=body, headers=api.idem())
    other_key = created.json()["secret"]
    agent = await make_key(
        api, ["quotes:create", "llm:chat", "domains:register", "receipts:read", "jobs:read"]
    )
    human = await make_key(api, ["approvals:grant"])
    revoked = await api.client.post("/v1/keys", json={"scopes": ["llm:chat"]}, headers=api.idem())
    r = await api.client.post(f"/v1/keys/{revoked.json()['id']}/revoke", headers=api.idem())
    assert r.status_code == 200, r.text
    byok = await api.client.post(
        "/v1/byok-keys", json={"provider": "openai", "key": "sk-byok-" + secrets.token_hex(12)},
        headers=api.idem(),
    )  # fmt: skip
    assert byok.status_code == 200, byok.text
    for n in range(3):
        q = (await quote(api, agent, "sandbox.echo", {"message": f"hi {n}"})).json()
        done = await execute(api, agent, {"quote_id": q["id"]})
        assert done.status_code == 200, done.text
    for _ in range(2):
        r = await execute(api, other_key, {"tool": "sandbox.echo", "params": {"message": "x"}})
        assert r.status_code == 200, r.text
    risky = (await quote(api, agent, "sandbox.irreversible", {"action": "buy a.example"})).json()
    approval = await api.client.post(
        "/v1/approvals", json={"quote_id": risky["id"]}, headers=api.idem(agent)
    )
    assert approval.status_code == 200, approval.text
    granted = await api.client.post(
        f"/v1/approvals/{approval.json()['id']}/grant", headers=api.auth(human)
    )
    assert granted.status_code == 200, granted.text
    started = await execute(
        api, agent, {"quote_id": risky["id"], "approval_id": approval.json()["id"]}
    )
    assert started.status_code == 202, started.text
    pending = (await quote(api, agent, "sandbox.irreversible", {"action": "buy b.example"})).json()
    r = await api.client.post("/v1/approvals", json={"quote_id": pending["id"]},
                              headers=api.idem(agent))  # fmt: skip
    assert r.status_code == 200, r.text
    await api.app.state.services.audit.flush()  # type: ignore[attr-defined]
    return Populated(api.admin_key, agent, other_key, started.json()["id"])


async def populated_sqlite_store(tmp_path: Path) -> tuple[str, Populated]:
    """An SQLite store full of objects, stopped; its URL and the keys that work on it."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = Settings(
        database_url=url, admin_key_file=str(tmp_path / "admin-key"), audit_flush_ms=10,
        access_log=False, price_refresh_seconds=0, workers=0, master_key=MASTER_KEY,
    )  # fmt: skip
    async with running_api(settings) as api:
        found = await populate(api)
    return url, found


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`toolcallstore ARGS` as an operator runs it, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "toolcallstore", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


async def new_pg_database() -> str:
    """A new, empty Postgres database beside the test one (dropped with the test's)."""
    from tests.conftest import _pg_admin, _pg_url_for

    name = f"tcs_ops_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    CREATED.append(name)
    return _pg_url_for(name)


CREATED: list[str] = []


async def drop_created() -> None:
    from tests.conftest import _pg_admin

    while CREATED:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{CREATED.pop()}" WITH (FORCE)')
