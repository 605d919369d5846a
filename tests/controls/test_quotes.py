from tests.conftest import Api
from tests.controls.helpers import make_key, quote


async def test_the_catalog_lists_each_tool_with_scope_risk_approval_and_price(api: Api) -> None:
    agent = await make_key(api, ["jobs:read"])
    r = await api.client.get("/v1/tools", headers=api.auth(agent))
    assert r.status_code == 200
    tools = {t["name"]: t for t in r.json()["data"]}
    echo, risky = tools["sandbox.echo"], tools["sandbox.irreversible"]
    assert (echo["scope"], echo["risk"], echo["mode"]) == ("llm:chat", "low", "sync")
    assert echo["approval"] == "above_tenant_threshold"
    assert echo["price"] == {"basis": "per_call", "unit_price_usd": "0.001400"}
    assert (risky["risk"], risky["approval"], risky["irreversible"]) == ("high", "always", True)
    assert (await api.client.get("/v1/tools")).status_code == 401


async def test_a_quote_is_stored_priced_and_readable_by_its_tenant_only(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat"])
    q = await quote(api, agent, "sandbox.echo", {"message": "hello"}, expires_in=120)
    assert q.status_code == 200, q.text
    body = q.json()
    assert body["id"].startswith("q_") and body["status"] == "open"
    assert body["expires_at"] - body["created"] in (119, 120, 121)
    assert body["breakdown"]["lines"][0]["amount_usd"] == "0.001400"
    got = await api.client.get(f"/v1/quotes/{body['id']}", headers=api.auth(agent))
    assert got.json()["price_usd"] == "0.001400"
    tenant = await api.client.post("/v1/tenants", json={"name": "other"}, headers=api.idem())
    other = await make_key(api, ["quotes:create", "llm:chat"], tenant_id=tenant.json()["id"])
    hidden = await api.client.get(f"/v1/quotes/{body['id']}", headers=api.auth(other))
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"


async def test_quote_refusals_name_what_is_wrong(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat"])
    no_scope = await make_key(api, ["quotes:create"])
    unknown = await quote(api, agent, "sandbox.nope", {})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "tool"
    scope = await quote(api, no_scope, "sandbox.echo", {"message": "x"})
    assert scope.status_code == 403
    assert scope.json()["error"]["code"] == "insufficient_scope"
    assert scope.json()["error"]["required_scope"] == "llm:chat"
    missing = await quote(api, agent, "sandbox.echo", {})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "params.message"
    extra = await quote(api, agent, "sandbox.echo", {"message": "x", "rm": "-rf"})
    assert extra.json()["error"]["code"] == "unknown_parameter"
    assert extra.json()["error"]["param"] == "params.rm"
    too_slow = await quote(api, agent, "sandbox.echo", {"message": "x", "delay_ms": 99_999})
    assert too_slow.status_code == 400
    ttl = await quote(api, agent, "sandbox.echo", {"message": "x"}, expires_in=5)
    assert ttl.status_code == 400 and ttl.json()["error"]["param"] == "expires_in"
    no_key = await api.client.post(
        "/v1/quotes", json={"tool": "sandbox.echo", "params": {"message": "x"}},
        headers=api.auth(agent),
    )  # fmt: skip
    assert no_key.json()["error"]["code"] == "idempotency_key_required"
    db = api.app.state.services.db  # type: ignore[attr-defined]
    assert await db.fetch_val("SELECT COUNT(*) FROM quotes") == 0  # refusals wrote nothing


async def test_a_project_key_quotes_for_its_project_only(api: Api) -> None:
    project = await api.client.post("/v1/projects", json={"name": "p"}, headers=api.idem())
    project_id = project.json()["id"]
    bound = await make_key(api, ["quotes:create", "llm:chat"], project_id=project_id)
    q = await quote(api, bound, "sandbox.echo", {"message": "x"})
    assert q.json()["project_id"] == project_id
    other = await api.client.post("/v1/projects", json={"name": "p2"}, headers=api.idem())
    refused = await quote(
        api, bound, "sandbox.echo", {"message": "x"}, project_id=other.json()["id"]
    )
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "project_id"


async def test_concurrent_duplicates_of_a_quote_create_one_and_replay_it(api: Api) -> None:
    import asyncio

    agent = await make_key(api, ["quotes:create", "llm:chat"])
    headers = {**api.auth(agent), "Idempotency-Key": "same-quote"}
    body = {"tool": "sandbox.echo", "params": {"message": "x"}}
    results = await asyncio.gather(
        *(api.client.post("/v1/quotes", json=body, headers=headers) for _ in range(30))
    )
    ok = [r for r in results if r.status_code == 200]
    assert ok and all(r.status_code in (200, 409) for r in results)
    assert len({r.json()["id"] for r in ok}) == 1
    db = api.app.state.services.db  # type: ignore[attr-defined]
    assert await db.fetch_val("SELECT COUNT(*) FROM quotes") == 1
    again = await api.client.post("/v1/quotes", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == ok[0].json()["id"]
