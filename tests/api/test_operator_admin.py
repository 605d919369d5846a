"""Issue 22: `admin` is the operator's scope, held only by keys of the operator's tenant."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from tests.conftest import Api
from tests.test_cli import cli
from toolcallstore.db import Database
from toolcallstore.db.migrate import load_migrations, migrate
from toolcallstore.ids import now_us


async def _tenant(api: Api, name: str) -> str:
    r = await api.client.post("/v1/tenants", json={"name": name}, headers=api.idem())
    tenant_id: str = r.json()["id"]
    return tenant_id


async def test_no_key_of_another_tenant_gets_admin_through_the_api(api: Api) -> None:
    other = await _tenant(api, "b")
    for scopes in (["admin"], ["admin", "keys:manage"]):
        body = {"scopes": scopes, "tenant_id": other}
        r = await api.client.post("/v1/keys", json=body, headers=api.idem())
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "admin_scope_forbidden"
        assert error["param"] == "scopes" and "operator" in error["message"]
    keys = await api.app.state.services.db.fetch_val(  # type: ignore[attr-defined]
        "SELECT count(*) FROM api_keys WHERE tenant_id = :t", {"t": other}
    )
    assert keys == 0
    body = {"scopes": ["keys:manage", "billing:manage"], "tenant_id": other}
    manager = await api.client.post("/v1/keys", json=body, headers=api.idem())
    assert manager.status_code == 200  # tenants manage themselves with the ordinary scopes
    own = await api.client.post("/v1/keys", json={"scopes": ["admin"]}, headers=api.idem())
    assert own.status_code == 200 and own.json()["scopes"] == ["admin"]


def test_the_cli_refuses_admin_for_another_tenant_unless_told_operator(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    tenant = json.loads(cli(url, "tenants", "create", "--name", "b").stdout)["id"]
    refused = cli(url, "keys", "create", "--tenant", tenant, "--scopes", "admin,jobs:read")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "operator" in refused.stderr and "--operator" in refused.stderr
    plain = cli(url, "keys", "create", "--tenant", tenant, "--scopes", "keys:manage")
    assert plain.returncode == 0, plain.stderr
    told = cli(url, "keys", "create", "--tenant", tenant, "--scopes", "admin", "--operator")
    assert told.returncode == 0, told.stderr
    assert json.loads(told.stdout)["scopes"] == ["admin"]


async def test_the_upgrade_takes_admin_from_keys_outside_the_operators_tenant(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.connect()
    try:
        async with db.transaction() as tx:
            await tx.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at BIGINT NOT NULL)"
            )
            for migration in load_migrations(db.dialect)[:7]:
                for statement in migration.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations VALUES (:v, :n, 0)",
                    {"v": migration.version, "n": migration.name},
                )
            for n, tenant in enumerate(("ten_operator", "ten_b")):
                await tx.execute(
                    "INSERT INTO tenants (id, name, created_at) VALUES (:id, 'x', :at)",
                    {"id": tenant, "at": now_us() + n},
                )
            for key, tenant, scopes in (
                ("key_op", "ten_operator", ["admin", "keys:manage"]),
                ("key_b", "ten_b", ["admin", "keys:manage"]),
                ("key_b_only", "ten_b", ["admin"]),
            ):
                await tx.execute(
                    "INSERT INTO api_keys (id, tenant_id, name, mode, lookup, secret_hash, last4,"
                    " scopes, created_at) VALUES (:id, :t, '', 'test', :id, 'h', 'abcd', :s, 0)",
                    {"id": key, "t": tenant, "s": orjson.dumps(scopes).decode()},
                )
        assert 8 in await migrate(db)
        rows = await db.fetch_all("SELECT id, scopes FROM api_keys ORDER BY id")
        scopes = {r["id"]: orjson.loads(r["scopes"]) for r in rows}
        assert scopes == {"key_b": ["keys:manage"], "key_b_only": [], "key_op": ["admin",
                          "keys:manage"]}  # fmt: skip
        operators = await db.fetch_all("SELECT id FROM tenants WHERE operator = 1")
        assert [r["id"] for r in operators] == ["ten_operator"]
    finally:
        await db.disconnect()
