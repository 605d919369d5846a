"""Issue 22: who may see and touch what across projects and modes (jobs, keys, approvals)."""

from __future__ import annotations

from tests.conftest import Api
from tests.controls.helpers import execute, make_key, quote
from toolcallstore.db.keys import insert_key

RISKY = {"action": "buy example.com"}
AGENT_SCOPES = ["quotes:create", "domains:register", "receipts:read", "jobs:read"]


def _db(api: Api):  # type: ignore[no-untyped-def]
    return api.app.state.services.db  # type: ignore[attr-defined]


async def _tenant_id(api: Api) -> str:
    me = await api.client.get("/v1/me", headers=api.auth())
    tenant: str = me.json()["tenant_id"]
    return tenant


async def _live_key(api: Api, scopes: tuple[str, ...]) -> str:
    """A live-mode key of the admin's tenant (live keys are made by live keys or the CLI)."""
    async with _db(api).transaction() as tx:
        _, secret = await insert_key(tx, tenant_id=await _tenant_id(api), project_id=None,
                                     name="live", mode="live", scopes=scopes)  # fmt: skip
    return secret


async def _project(api: Api, name: str) -> str:
    r = await api.client.post("/v1/projects", json={"name": name}, headers=api.idem())
    project_id: str = r.json()["id"]
    return project_id


async def _queued_tool_job(api: Api, project_id: str) -> dict:
    """A granted `sandbox.irreversible` call of project `project_id`, queued as a job."""
    agent = await make_key(api, AGENT_SCOPES, project_id=project_id)
    human = await make_key(api, ["approvals:grant"])
    q = (await quote(api, agent, "sandbox.irreversible", RISKY)).json()
    approval = await api.client.post(
        "/v1/approvals", json={"quote_id": q["id"]}, headers=api.idem(agent)
    )
    approval_id = approval.json()["id"]
    granted = await api.client.post(f"/v1/approvals/{approval_id}/grant", headers=api.auth(human))
    assert granted.status_code == 200, granted.text
    started = await execute(api, agent, {"quote_id": q["id"], "approval_id": approval_id})
    assert started.status_code == 202, started.text
    answer: dict = started.json()
    return answer


async def test_jobs_follow_project_and_mode_and_cancel_needs_the_tools_scope(api: Api) -> None:
    await api.app.state.services.jobs.stop()  # type: ignore[attr-defined]  # jobs stay queued
    p1, p2 = await _project(api, "p1"), await _project(api, "p2")
    started = await _queued_tool_job(api, p2)
    job_id = started["job_id"]
    paths = [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/events"),
             ("POST", f"/v1/jobs/{job_id}/cancel")]  # fmt: skip
    other_project = await make_key(api, ["jobs:read", "domains:register"], project_id=p1)
    live = await _live_key(api, ("jobs:read", "domains:register"))
    for secret in (other_project, live):
        for method, path in paths:
            r = await api.client.request(method, path, headers=api.auth(secret))
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["code"] == "not_found"
    reader = await make_key(api, ["jobs:read"])
    seen = await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(reader))
    assert seen.status_code == 200 and seen.json()["state"] == "queued"
    refused = await api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(reader))
    assert refused.status_code == 403
    assert refused.json()["error"]["required_scope"] == "domains:register"
    same_project = await make_key(api, ["jobs:read"], project_id=p2)
    assert (await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(same_project))).is_success
    state = await _db(api).fetch_val("SELECT state FROM jobs WHERE id = :id", {"id": job_id})
    assert state == "queued"  # nobody above stopped P2's purchase


async def test_a_test_key_neither_sees_nor_revokes_live_keys(api: Api) -> None:
    live = await _live_key(api, ("jobs:read",))
    live_id = (await api.client.get("/v1/me", headers=api.auth(live))).json()["id"]
    manager = await make_key(api, ["keys:manage", "jobs:read"])
    for secret in (api.admin_key, manager):
        shown = await api.client.get(f"/v1/keys/{live_id}", headers=api.auth(secret))
        assert shown.status_code == 404 and shown.json()["error"]["code"] == "not_found"
        revoked = await api.client.post(f"/v1/keys/{live_id}/revoke", headers=api.auth(secret))
        assert revoked.status_code == 404, revoked.text
        listed = await api.client.get("/v1/keys?limit=100", headers=api.auth(secret))
        assert live_id not in [k["id"] for k in listed.json()["data"]]
    still = await api.client.get("/v1/me", headers=api.auth(live))
    assert still.status_code == 200 and still.json()["revoked"] is None


async def _mint(api: Api, parent: str, scopes: list[str]) -> str:
    r = await api.client.post("/v1/keys", json={"scopes": scopes}, headers=api.idem(parent))
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def _pending(api: Api, asker: str) -> str:
    q = (await quote(api, asker, "sandbox.irreversible", RISKY)).json()
    r = await api.client.post("/v1/approvals", json={"quote_id": q["id"]}, headers=api.idem(asker))
    assert r.status_code == 200, r.text
    approval_id: str = r.json()["id"]
    return approval_id


async def test_a_key_minted_in_the_agents_line_cannot_approve_its_requests(api: Api) -> None:
    everything = [*AGENT_SCOPES, "approvals:grant", "keys:manage"]
    agent = await make_key(api, everything)
    child = await _mint(api, agent, everything)
    grandchild = await _mint(api, child, ["approvals:grant"])
    sibling = await _mint(api, agent, ["approvals:grant"])
    human = await make_key(api, ["approvals:grant"])
    for asker, deciders in (
        (agent, [agent, child, grandchild, sibling, api.admin_key]),  # admin made the agent
        (child, [agent, grandchild, sibling]),
    ):
        approval_id = await _pending(api, asker)
        for decider in deciders:
            for verb in ("grant", "deny"):
                r = await api.client.post(
                    f"/v1/approvals/{approval_id}/{verb}", headers=api.auth(decider)
                )
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "self_approval_forbidden"
        granted = await api.client.post(
            f"/v1/approvals/{approval_id}/grant", headers=api.auth(human)
        )
        assert granted.status_code == 200 and granted.json()["status"] == "granted"
