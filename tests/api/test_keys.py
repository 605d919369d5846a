import asyncio
from pathlib import Path

from tests.conftest import Api
from toolcallstore.db.keys import hash_secret
from toolcallstore.settings import Settings, sqlite_path


async def create(api: Api, body: dict, secret: str | None = None, key: str | None = None):
    return await api.client.post("/v1/keys", json=body, headers=api.idem(secret, key))


async def test_the_secret_is_shown_once_and_stored_only_hashed(
    api: Api, settings: Settings
) -> None:
    r = await create(api, {"scopes": ["llm:chat", "jobs:read"], "name": "agent"})
    assert r.status_code == 200
    key = r.json()
    secret = key["secret"]
    assert secret.startswith("tcs_test_") and len(secret) == len("tcs_test_") + 32
    assert key["redacted"].endswith(secret[-4:]) and key["scopes"] == ["jobs:read", "llm:chat"]
    listed = (await api.client.get("/v1/keys", headers=api.auth())).json()["data"]
    fetched = (await api.client.get(f"/v1/keys/{key['id']}", headers=api.auth())).json()
    assert key["id"] in [k["id"] for k in listed]
    assert all(k["secret"] is None for k in listed) and fetched["secret"] is None
    db = api.app.state.services.db  # type: ignore[attr-defined]
    rows = await db.fetch_all("SELECT * FROM api_keys")
    dumped = repr(rows) + repr(await db.fetch_all("SELECT * FROM idempotency_keys"))
    dumped += repr(await db.fetch_all("SELECT * FROM audit_log"))
    assert secret not in dumped and api.admin_key not in dumped
    assert hash_secret(secret) in dumped
    path = sqlite_path(settings.database_url)
    if path is not None:
        await api.app.state.services.audit.flush()  # type: ignore[attr-defined]
        files = [p for p in Path(path).parent.glob(path.name + "*") if p.is_file()]
        for file in files:
            assert secret.encode() not in file.read_bytes(), file


async def test_a_key_cannot_grant_scopes_it_lacks(api: Api) -> None:
    manager = (await create(api, {"scopes": ["keys:manage", "jobs:read"]})).json()["secret"]
    r = await create(api, {"scopes": ["jobs:read", "llm:chat", "admin"]}, manager)
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "insufficient_scope" and error["missing_scopes"] == [
        "admin",
        "llm:chat",
    ]
    ok = await create(api, {"scopes": ["jobs:read"]}, manager)
    assert ok.status_code == 200 and ok.json()["created_by"] is not None


async def test_test_keys_cannot_create_live_keys(api: Api) -> None:
    r = await create(api, {"scopes": ["jobs:read"], "mode": "live"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "live_mode_forbidden"


async def test_only_admin_keys_act_on_other_tenants(api: Api) -> None:
    tenant = (
        await api.client.post("/v1/tenants", json={"name": "acme"}, headers=api.idem())
    ).json()
    r = await create(api, {"scopes": ["jobs:read"], "tenant_id": tenant["id"]})
    assert r.status_code == 200 and r.json()["tenant_id"] == tenant["id"]
    manager = (await create(api, {"scopes": ["keys:manage", "jobs:read"]})).json()["secret"]
    r = await create(api, {"scopes": ["jobs:read"], "tenant_id": tenant["id"]}, manager)
    assert r.status_code == 403 and r.json()["error"]["required_scope"] == "admin"
    # Keys of the other tenant are invisible (404, not 403) to this tenant.
    other_key = (await api.client.get("/v1/keys", headers=api.auth())).json()["data"]
    acme = await create(api, {"scopes": ["keys:manage"], "tenant_id": tenant["id"]})
    acme_secret = acme.json()["secret"]
    for key in other_key:
        r = await api.client.get(f"/v1/keys/{key['id']}", headers=api.auth(acme_secret))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_project_keys_stay_in_their_project(api: Api) -> None:
    project = (
        await api.client.post("/v1/projects", json={"name": "bots"}, headers=api.idem())
    ).json()
    bound = await create(api, {"scopes": ["keys:manage", "jobs:read"], "project_id": project["id"]})
    bound_secret = bound.json()["secret"]
    assert bound.json()["project_id"] == project["id"]
    child = await create(api, {"scopes": ["jobs:read"]}, bound_secret)
    assert child.status_code == 200 and child.json()["project_id"] == project["id"]
    escape = await create(api, {"scopes": ["jobs:read"], "project_id": "proj_other"}, bound_secret)
    assert escape.status_code == 403 and escape.json()["error"]["code"] == "project_forbidden"
    missing = await create(api, {"scopes": ["jobs:read"], "project_id": "proj_missing"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "project_id"
    listed = (await api.client.get("/v1/keys", headers=api.auth(bound_secret))).json()["data"]
    assert {k["project_id"] for k in listed} == {project["id"]}


async def test_a_key_cannot_revoke_a_stronger_key(api: Api) -> None:
    manager = (await create(api, {"scopes": ["keys:manage"]})).json()
    me = (await api.client.get("/v1/me", headers=api.auth())).json()
    r = await api.client.post(f"/v1/keys/{me['id']}/revoke", headers=api.auth(manager["secret"]))
    assert r.status_code == 403
    assert (await api.client.get("/v1/me", headers=api.auth())).status_code == 200
    # Revoking twice keeps the first revocation time.
    first = await api.client.post(f"/v1/keys/{manager['id']}/revoke", headers=api.auth())
    second = await api.client.post(f"/v1/keys/{manager['id']}/revoke", headers=api.auth())
    assert first.json()["revoked"] == second.json()["revoked"] is not None


async def test_lists_paginate_newest_first_with_a_cursor(api: Api) -> None:
    made = [
        (await create(api, {"scopes": ["jobs:read"], "name": f"k{i}"})).json() for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"starting_after": cursor} if cursor else {})}
        page = (await api.client.get("/v1/keys", params=params, headers=api.auth())).json()
        seen += [k["id"] for k in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["data"][-1]["id"]
    assert seen[:5] == [k["id"] for k in reversed(made)]
    assert len(seen) == len(set(seen)) == 6  # five made + the bootstrap admin key


async def test_fifty_concurrent_duplicates_create_exactly_one_key(api: Api) -> None:
    headers = api.idem(key="same-key-50")
    body = {"scopes": ["jobs:read"], "name": "dup"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/keys", json=body, headers=headers) for _ in range(50))
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, statuses
    created = [
        r for r in responses if r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    ]
    replays = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    assert len(created) == 1
    assert len(replays) + statuses.count(409) == 49
    assert all(r.json()["id"] == created[0].json()["id"] for r in replays)
    assert all(r.json()["secret"] is None for r in replays)
    db = api.app.state.services.db  # type: ignore[attr-defined]
    assert await db.fetch_val("SELECT count(*) FROM api_keys WHERE name = 'dup'") == 1
