import asyncio

from tests.conftest import Api
from toolcallstore.idempotency import prune_idempotency_keys
from toolcallstore.ids import now_us


async def test_a_replay_returns_the_original_response_marked_replayed(api: Api) -> None:
    headers = api.idem(key="k-1")
    first = await api.client.post("/v1/tenants", json={"name": "one"}, headers=headers)
    again = await api.client.post("/v1/tenants", json={"name": "one"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    listed = (await api.client.get("/v1/tenants", headers=api.auth())).json()["data"]
    assert [t["name"] for t in listed].count("one") == 1


async def test_the_same_key_with_another_body_is_422(api: Api) -> None:
    headers = api.idem(key="k-2")
    await api.client.post("/v1/tenants", json={"name": "one"}, headers=headers)
    r = await api.client.post("/v1/tenants", json={"name": "two"}, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    # Another path with the same key is another request too.
    r = await api.client.post("/v1/projects", json={"name": "one"}, headers=headers)
    assert r.status_code == 422


async def test_key_order_in_the_body_does_not_change_the_fingerprint(api: Api) -> None:
    headers = {**api.idem(key="k-3"), "Content-Type": "application/json"}
    a = await api.client.post(
        "/v1/keys", content=b'{"scopes":["jobs:read"],"name":"x"}', headers=headers
    )
    b = await api.client.post(
        "/v1/keys", content=b'{"name": "x", "scopes": ["jobs:read"]}', headers=headers
    )
    assert b.headers.get("Idempotent-Replayed") == "true" and a.json()["id"] == b.json()["id"]


async def test_create_without_a_key_is_400_and_creates_nothing(api: Api) -> None:
    r = await api.client.post("/v1/tenants", json={"name": "nokey"}, headers=api.auth())
    assert r.status_code == 400 and r.json()["error"]["code"] == "idempotency_key_required"
    for bad in ("", "x" * 256):
        headers = {**api.auth(), "Idempotency-Key": bad}
        r = await api.client.post("/v1/tenants", json={"name": "nokey"}, headers=headers)
        assert r.status_code == 400, bad
    listed = (await api.client.get("/v1/tenants", headers=api.auth())).json()["data"]
    assert "nokey" not in [t["name"] for t in listed]


async def test_rejections_are_not_stored_so_the_fixed_request_can_reuse_the_key(api: Api) -> None:
    headers = api.idem(key="k-4")
    bad = await api.client.post("/v1/keys", json={"scopes": ["nope"]}, headers=headers)
    assert bad.status_code == 400
    missing = await api.client.post(
        "/v1/keys", json={"scopes": ["jobs:read"], "project_id": "proj_x"}, headers=headers
    )
    assert missing.status_code == 404
    good = await api.client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=headers)
    assert good.status_code == 200 and "Idempotent-Replayed" not in good.headers


async def test_keys_are_scoped_per_api_key(api: Api) -> None:
    other = await api.client.post(
        "/v1/keys", json={"scopes": ["admin", "keys:manage"]}, headers=api.idem()
    )
    other_secret = other.json()["secret"]
    a = await api.client.post("/v1/tenants", json={"name": "a"}, headers=api.idem(key="shared"))
    b = await api.client.post(
        "/v1/tenants", json={"name": "a"}, headers=api.idem(other_secret, key="shared")
    )
    assert a.status_code == b.status_code == 200
    assert a.json()["id"] != b.json()["id"] and "Idempotent-Replayed" not in b.headers


async def test_an_in_flight_duplicate_gets_409(api: Api) -> None:
    svc = api.app.state.services  # type: ignore[attr-defined]
    me = (await api.client.get("/v1/me", headers=api.auth())).json()
    from toolcallstore.idempotency import fingerprint

    fp = fingerprint("POST", "/v1/tenants", {"name": "slow"})
    async with svc.db.transaction() as tx:  # a first attempt that is still running
        await tx.execute(
            "INSERT INTO idempotency_keys (api_key_id, key, tenant_id, fingerprint, state,"
            " created_at, locked_at) VALUES (:k, 'busy', :t, :fp, 'running', :now, :now)",
            {"k": me["id"], "t": me["tenant_id"], "fp": fp, "now": now_us()},
        )
    r = await api.client.post("/v1/tenants", json={"name": "slow"}, headers=api.idem(key="busy"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_key_in_use"
    # A claim whose lock expired (its process died before committing) is taken over.
    async with svc.db.transaction() as tx:
        await tx.execute("UPDATE idempotency_keys SET locked_at = 0 WHERE key = 'busy'")
    r = await api.client.post("/v1/tenants", json={"name": "slow"}, headers=api.idem(key="busy"))
    assert r.status_code == 200 and r.json()["name"] == "slow"


async def test_pruning_forgets_keys_older_than_the_window(api: Api) -> None:
    svc = api.app.state.services  # type: ignore[attr-defined]
    old = await api.client.post("/v1/tenants", json={"name": "old"}, headers=api.idem(key="old"))
    await api.client.post("/v1/tenants", json={"name": "new"}, headers=api.idem(key="new"))
    day_us = 86_400 * 1_000_000
    async with svc.db.transaction() as tx:
        await tx.execute(
            "UPDATE idempotency_keys SET created_at = created_at - :d WHERE key = 'old'",
            {"d": day_us + 1},
        )
    assert await prune_idempotency_keys(svc.db, now_us() - day_us, chunk=1) == 1
    assert await svc.db.fetch_val("SELECT count(*) FROM idempotency_keys WHERE key = 'new'") == 1
    # A pruned key is a new request again, as at Stripe.
    again = await api.client.post("/v1/tenants", json={"name": "old"}, headers=api.idem(key="old"))
    assert again.status_code == 200 and again.json()["id"] != old.json()["id"]


async def test_concurrent_duplicates_with_different_bodies_never_both_run(api: Api) -> None:
    bodies = [{"name": f"race-{i % 2}"} for i in range(20)]
    responses = await asyncio.gather(
        *(api.client.post("/v1/tenants", json=b, headers=api.idem(key="race")) for b in bodies)
    )
    assert {r.status_code for r in responses} <= {200, 409, 422}
    listed = await api.client.get("/v1/tenants", params={"limit": "100"}, headers=api.auth())
    names = [t["name"] for t in listed.json()["data"] if t["name"].startswith("race-")]
    assert len(names) == 1
