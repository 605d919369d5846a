"""Bring-your-own provider keys: the API, encryption at rest, rotation, and the promise that the
plaintext never reaches the database, the logs, the audit rows or a response."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import Api, running_api
from toolcallstore.app import create_app
from toolcallstore.byok import ByokKeyUnreadable, Keyring, rotate, tenant_keys
from toolcallstore.context import context_of
from toolcallstore.db import Database
from toolcallstore.errors import ConfigError
from toolcallstore.responses import JSONResponse
from toolcallstore.services import Services
from toolcallstore.settings import Settings, sqlite_path


def master_key(kid: str) -> str:
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


K1, K2, K3 = master_key("k1"), master_key("k2"), master_key("k3")


def provider_key() -> str:
    return "sk-byok-" + secrets.token_hex(16)


@pytest.fixture
async def byok_api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings.with_(master_key=K1)) as api:
        yield api


async def store(
    api: Api, provider: str, key: object, secret: str | None = None, idem: str | None = None
) -> httpx.Response:
    body = {"provider": provider, "key": key}
    return await api.client.post("/v1/byok-keys", json=body, headers=api.idem(secret, idem))


async def tenant_of(api: Api, secret: str | None = None) -> str:
    tenant: str = (await api.client.get("/v1/me", headers=api.auth(secret))).json()["tenant_id"]
    return tenant


async def other_tenant_secret(api: Api, scopes: list[str]) -> str:
    tenant = await api.client.post("/v1/tenants", json={"name": "acme"}, headers=api.idem())
    body = {"scopes": scopes, "tenant_id": tenant.json()["id"]}
    created = await api.client.post("/v1/keys", json=body, headers=api.idem())
    secret: str = created.json()["secret"]
    return secret


def services_of(api: Api) -> Services:
    found: Services = api.app.state.services  # type: ignore[attr-defined]
    return found


async def test_create_list_get_delete(byok_api: Api) -> None:
    plaintext = provider_key()
    r = await store(byok_api, "openai", plaintext)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["id"].startswith("byok_")
    assert created == {
        "id": created["id"],
        "object": "byok_key",
        "provider": "openai",
        "last4": plaintext[-4:],
        "created": created["created"],
    }
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth())).json()
    assert listed["object"] == "list" and listed["url"] == "/v1/byok-keys"
    assert listed["data"] == [created] and listed["has_more"] is False
    got = await byok_api.client.get(f"/v1/byok-keys/{created['id']}", headers=byok_api.auth())
    assert got.status_code == 200 and got.json() == created

    svc = services_of(byok_api)
    tenant = await tenant_of(byok_api)
    assert await tenant_keys(svc.db, svc.keyring, tenant) == {"openai": plaintext}

    r = await byok_api.client.delete(f"/v1/byok-keys/{created['id']}", headers=byok_api.auth())
    assert r.status_code == 200
    assert r.json() == {"id": created["id"], "object": "byok_key", "deleted": True}
    # The in-process cache is dropped at once: the next call no longer uses the key.
    assert await tenant_keys(svc.db, svc.keyring, tenant) == {}
    again = await byok_api.client.delete(f"/v1/byok-keys/{created['id']}", headers=byok_api.auth())
    assert again.status_code == 404
    got = await byok_api.client.get(f"/v1/byok-keys/{created['id']}", headers=byok_api.auth())
    assert got.status_code == 404 and got.json()["error"]["param"] == "byok_id"
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth())).json()
    assert listed["data"] == []


async def test_a_second_key_for_a_provider_replaces_the_first(byok_api: Api) -> None:
    first, second, other = provider_key(), provider_key(), provider_key()
    old = (await store(byok_api, "openai", first)).json()
    kept = (await store(byok_api, "anthropic", other)).json()
    new = (await store(byok_api, "openai", second)).json()
    assert new["id"] != old["id"] and new["last4"] == second[-4:]
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth())).json()
    assert [k["id"] for k in listed["data"]] == [new["id"], kept["id"]]
    gone = await byok_api.client.get(f"/v1/byok-keys/{old['id']}", headers=byok_api.auth())
    assert gone.status_code == 404
    svc = services_of(byok_api)
    keys = await tenant_keys(svc.db, svc.keyring, await tenant_of(byok_api))
    assert keys == {"openai": second, "anthropic": other}
    # The replaced row keeps its history but no longer holds the encrypted key.
    row = await svc.db.fetch_one("SELECT * FROM byok_keys WHERE id = :id", {"id": old["id"]})
    assert row is not None and row["deleted_at"] is not None
    assert bytes(row["ciphertext"]) == b""


async def test_concurrent_replacements_leave_one_live_key(byok_api: Api) -> None:
    plaintexts = [provider_key() for _ in range(8)]
    replies = await asyncio.gather(*(store(byok_api, "openai", p) for p in plaintexts))
    assert [r.status_code for r in replies] == [200] * 8
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth())).json()
    assert len(listed["data"]) == 1
    svc = services_of(byok_api)
    keys = await tenant_keys(svc.db, svc.keyring, await tenant_of(byok_api))
    assert keys["openai"][-4:] == listed["data"][0]["last4"] and keys["openai"] in plaintexts


async def test_other_tenants_keys_are_not_found(byok_api: Api) -> None:
    mine = (await store(byok_api, "openai", provider_key())).json()
    acme = await other_tenant_secret(byok_api, ["keys:manage"])
    for method in ("GET", "DELETE"):
        r = await byok_api.client.request(
            method, f"/v1/byok-keys/{mine['id']}", headers=byok_api.auth(acme)
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth(acme))).json()
    assert listed["data"] == []
    svc = services_of(byok_api)
    assert await tenant_keys(svc.db, svc.keyring, await tenant_of(byok_api, acme)) == {}
    assert (await store(byok_api, "openai", provider_key(), acme)).status_code == 200
    mine_still = await byok_api.client.get(f"/v1/byok-keys/{mine['id']}", headers=byok_api.auth())
    assert mine_still.status_code == 200


async def test_bad_input_is_refused_without_echoing_the_key(byok_api: Api) -> None:
    plaintext = provider_key()
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"provider": "nosuch", "key": plaintext}, "provider", "invalid_parameter"),
        ({"provider": plaintext, "key": "openai-key-1234"}, "provider", "invalid_parameter"),
        ({"provider": "openai", "key": "short"}, "key", "invalid_parameter"),
        ({"provider": "openai", "key": "sk has spaces 1234"}, "key", "invalid_parameter"),
        ({"provider": "openai", "key": "x" * 501}, "key", "invalid_parameter"),
        ({"provider": "openai", "key": 12345678}, "key", "invalid_parameter"),
        ({"provider": "openai"}, "key", "missing_parameter"),
        ({"provider": "openai", "key": plaintext, "extra": 1}, "extra", "unknown_parameter"),
    ]
    for body, param, code in cases:
        r = await byok_api.client.post("/v1/byok-keys", json=body, headers=byok_api.idem())
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert (error["param"], error["code"]) == (param, code)
        assert plaintext not in r.text
    assert "openai" in (await store(byok_api, "nosuch", plaintext)).json()["error"]["message"]
    r = await byok_api.client.post(
        "/v1/byok-keys", json={"provider": "openai", "key": plaintext}, headers=byok_api.auth()
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "idempotency_key_required"
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth())).json()
    assert listed["data"] == []


async def test_scopes_and_project_keys(byok_api: Api) -> None:
    body = {"scopes": ["jobs:read"]}
    reader = (await byok_api.client.post("/v1/keys", json=body, headers=byok_api.idem())).json()
    r = await store(byok_api, "openai", provider_key(), reader["secret"])
    assert r.status_code == 403 and r.json()["error"]["required_scope"] == "keys:manage"
    r = await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth(reader["secret"]))
    assert r.status_code == 403
    project = await byok_api.client.post(
        "/v1/projects", json={"name": "p"}, headers=byok_api.idem()
    )
    body = {"scopes": ["keys:manage"], "project_id": project.json()["id"]}
    bound = (await byok_api.client.post("/v1/keys", json=body, headers=byok_api.idem())).json()
    r = await store(byok_api, "openai", provider_key(), bound["secret"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "project_forbidden"
    r = await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth(bound["secret"]))
    assert r.status_code == 200


async def test_without_a_master_key_byok_is_unavailable(api: Api) -> None:
    r = await store(api, "openai", provider_key())
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "byok_unavailable" and "TOOLCALLSTORE_MASTER_KEY" in error["message"]
    listed = await api.client.get("/v1/byok-keys", headers=api.auth())
    assert listed.status_code == 200 and listed.json()["data"] == []
    svc = services_of(api)
    assert await tenant_keys(svc.db, svc.keyring, await tenant_of(api)) == {}


async def test_a_replay_returns_the_same_body_without_the_key(byok_api: Api) -> None:
    plaintext = provider_key()
    first = await store(byok_api, "openai", plaintext, idem="same")
    replay = await store(byok_api, "openai", plaintext, idem="same")
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json() and plaintext not in replay.text
    reused = await store(byok_api, "openai", provider_key(), idem="same")
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    listed = (await byok_api.client.get("/v1/byok-keys", headers=byok_api.auth())).json()
    assert [k["id"] for k in listed["data"]] == [first.json()["id"]]


async def _dump_tables(db: Database) -> str:
    """Every row of every table, as text (bytes columns as Python bytes reprs)."""
    if db.is_postgres:
        query = "SELECT table_name AS name FROM information_schema.tables"
        query += " WHERE table_schema = 'public'"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    names = [row["name"] for row in await db.fetch_all(query)]
    assert "byok_keys" in names and "audit_log" in names
    return "".join([repr(await db.fetch_all(f"SELECT * FROM {name}")) for name in names])


def _forms(plaintext: str) -> list[bytes]:
    raw = plaintext.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), raw.hex().encode()]


async def test_the_plaintext_appears_nowhere(
    settings: Settings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    plaintext = provider_key()
    replaced = provider_key()
    seen: list[httpx.Response] = []
    async with running_api(settings.with_(master_key=K1, access_log=True)) as api:
        seen.append(await store(api, "openai", replaced))
        seen.append(await store(api, "openai", plaintext, idem="grep"))
        seen.append(await store(api, "openai", plaintext, idem="grep"))  # the replay
        seen.append(await store(api, "nosuch", plaintext))
        seen.append(await store(api, plaintext, "openai-12345678"))
        body = {"provider": "openai", "key": plaintext}
        seen.append(await api.client.post("/v1/byok-keys", json=body, headers=api.auth()))
        seen.append(await api.client.get("/v1/byok-keys", headers=api.auth()))
        seen.append(
            await api.client.get(f"/v1/byok-keys/{seen[1].json()['id']}", headers=api.auth())
        )
        svc = services_of(api)
        assert await tenant_keys(svc.db, svc.keyring, await tenant_of(api)) == {"openai": plaintext}
        await svc.audit.flush()
        dumped = (await _dump_tables(svc.db)).encode()
        assert b"/v1/byok-keys" in dumped  # the audit rows are there, without the key
    replies = b"".join(r.content + repr(r.headers).encode() for r in seen)
    captured = capsys.readouterr()
    logs = (caplog.text + captured.out + captured.err).encode()
    assert b"/v1/byok-keys" in logs  # the access log was captured
    files = b""
    path = sqlite_path(settings.database_url)
    if path is not None:
        found = [p for p in path.parent.glob(path.name + "*") if p.is_file()]
        assert path in found
        files = b"".join(p.read_bytes() for p in found)
    for secret in (plaintext, replaced):
        for form in _forms(secret):
            for where, text in (("db", dumped), ("replies", replies), ("logs", logs)):
                assert form not in text, (where, form)
            assert form not in files, form


async def test_rotation_by_function_and_by_cli(settings: Settings, tmp_path: Path) -> None:
    keys = {"openai": provider_key(), "anthropic": provider_key()}
    async with running_api(settings.with_(master_key=K1)) as api:
        for provider, plaintext in keys.items():
            assert (await store(api, provider, plaintext)).status_code == 200
        tenant = await tenant_of(api)
    async with running_api(settings.with_(master_key=f"{K2},{K1}")) as api:
        svc = services_of(api)
        assert svc.keyring is not None and svc.keyring.current_kid == "k2"
        assert await rotate(svc.db, svc.keyring) == 2
        assert await rotate(svc.db, svc.keyring) == 0
        only_k2 = Keyring.parse(K2)
        assert await tenant_keys(svc.db, only_k2, tenant) == keys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    command = [sys.executable, "-m", "toolcallstore", "--database-url", settings.database_url]
    command += ["byok", "rotate"]

    def cli(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    missing = cli()
    assert missing.returncode != 0 and "TOOLCALLSTORE_MASTER_KEY is not set" in missing.stderr
    bad = cli(TOOLCALLSTORE_MASTER_KEY="k9:c2hvcnQ=")
    assert bad.returncode != 0 and "TOOLCALLSTORE_MASTER_KEY entry 1" in bad.stderr
    assert "c2hvcnQ" not in bad.stderr
    done = cli(TOOLCALLSTORE_MASTER_KEY=f"{K3},{K2}")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 BYOK key(s) under master key id 'k3'" in done.stdout
    for plaintext in keys.values():
        assert plaintext not in done.stdout + done.stderr

    db = Database(settings.database_url)
    await db.connect()
    try:
        kids = await db.fetch_all("SELECT DISTINCT master_key_id FROM byok_keys")
        assert [row["master_key_id"] for row in kids] == ["k3"]
        assert await tenant_keys(db, Keyring.parse(K3), tenant) == keys
        with pytest.raises(ByokKeyUnreadable, match="master key id 'k3'"):
            await tenant_keys(db, Keyring.parse(K1), tenant)
    finally:
        await db.disconnect()


async def test_a_tampered_row_fails_with_a_clear_503(byok_api: Api) -> None:
    plaintext = provider_key()
    created = (await store(byok_api, "openai", plaintext)).json()
    svc = services_of(byok_api)
    db, keyring = svc.db, svc.keyring
    assert keyring is not None

    async def use_keys(request: Request) -> Response:
        # Stands in for the chat path: an endpoint that routes with the tenant's keys.
        principal = context_of(request).principal
        assert principal is not None
        return JSONResponse(sorted(await tenant_keys(db, keyring, principal.tenant_id)))

    byok_api.app.router.routes.append(Route("/test/byok-use", use_keys))  # type: ignore[attr-defined]
    used = await byok_api.client.get("/test/byok-use", headers=byok_api.auth())
    assert used.json() == ["openai"]
    row = await db.fetch_one("SELECT ciphertext FROM byok_keys WHERE id = :id", created)
    assert row is not None
    flipped = bytearray(row["ciphertext"])
    flipped[0] ^= 1
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE byok_keys SET ciphertext = :c WHERE id = :id",
            {"c": bytes(flipped), "id": created["id"]},
        )
    keyring.forget(await tenant_of(byok_api))
    r = await byok_api.client.get("/test/byok-use", headers=byok_api.auth())
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "byok_key_unreadable" and "integrity" in error["message"]
    assert error["provider"] == "openai" and error["byok_key_id"] == created["id"]
    assert plaintext not in r.text and "Traceback" not in r.text


async def test_a_row_moved_to_another_tenant_does_not_decrypt_there(byok_api: Api) -> None:
    plaintext = provider_key()
    created = (await store(byok_api, "openai", plaintext)).json()
    svc = services_of(byok_api)
    acme = await tenant_of(byok_api, await other_tenant_secret(byok_api, ["keys:manage"]))
    async with svc.db.transaction() as tx:
        await tx.execute(
            "UPDATE byok_keys SET tenant_id = :t WHERE id = :id", {"t": acme, "id": created["id"]}
        )
    with pytest.raises(ByokKeyUnreadable) as caught:
        await tenant_keys(svc.db, svc.keyring, acme)
    assert caught.value.status == 503 and plaintext not in str(caught.value)
    assert await tenant_keys(svc.db, svc.keyring, await tenant_of(byok_api)) == {}


def test_master_key_format(settings: Settings) -> None:
    raw = base64.b64encode(os.urandom(32)).decode()
    bare = Keyring.parse(raw)
    assert bare.current_kid == "k1" and raw not in repr(bare)
    two = Keyring.parse(f" k2:{base64.urlsafe_b64encode(os.urandom(32)).decode()} , k1:{raw}")
    kid, nonce, sealed = bare.encrypt("sk-test-12345678", b"aad")
    assert two.current_kid == "k2" and two.decrypt(kid, nonce, sealed, b"aad") == "sk-test-12345678"
    loaded = Settings.from_env({"TOOLCALLSTORE_MASTER_KEY": f"k1:{raw}"})
    assert loaded.master_key == f"k1:{raw}" and raw not in repr(loaded)
    short = base64.b64encode(b"sixteen byte key").decode()
    for bad in (f"k1:{short}", "k1:not base64!!", f"k1:{raw},k1:{raw}", f"bad id:{raw}", ","):
        with pytest.raises(ConfigError, match="TOOLCALLSTORE_MASTER_KEY") as caught:
            create_app(settings.with_(master_key=bad))
        assert raw not in str(caught.value) and short not in str(caught.value)
