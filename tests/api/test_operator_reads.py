"""Projects and keys an operator makes for another tenant (`tenant_id`) can be read back by
that operator, and by no other tenant's key."""

from __future__ import annotations

from tests.conftest import Api


async def test_an_admin_reads_the_project_it_made_for_another_tenant(api: Api) -> None:
    tenant = await api.client.post("/v1/tenants", json={"name": "acme"}, headers=api.idem())
    assert tenant.status_code == 200, tenant.text
    made = await api.client.post(
        "/v1/projects", json={"name": "web", "tenant_id": tenant.json()["id"]}, headers=api.idem()
    )
    assert made.status_code == 200, made.text
    project = made.json()
    read = await api.client.get(f"/v1/projects/{project['id']}", headers=api.auth())
    assert read.status_code == 200
    assert read.json() == project

    manager = await api.client.post(
        "/v1/keys", json={"scopes": ["keys:manage"]}, headers=api.idem()
    )  # the admin's own tenant, without the admin scope
    hidden = await api.client.get(
        f"/v1/projects/{project['id']}", headers=api.auth(manager.json()["secret"])
    )
    assert hidden.status_code == 404


async def test_an_admin_reads_the_key_it_made_for_another_tenant(api: Api) -> None:
    tenant = await api.client.post("/v1/tenants", json={"name": "acme"}, headers=api.idem())
    made = await api.client.post(
        "/v1/keys",
        json={"scopes": ["jobs:read"], "tenant_id": tenant.json()["id"]},
        headers=api.idem(),
    )
    assert made.status_code == 200, made.text
    key_id = made.json()["id"]
    read = await api.client.get(f"/v1/keys/{key_id}", headers=api.auth())
    assert read.status_code == 200
    assert read.json()["tenant_id"] == tenant.json()["id"]
    assert read.json()["secret"] is None  # shown once, at creation
    manager = await api.client.post(
        "/v1/keys", json={"scopes": ["keys:manage"]}, headers=api.idem()
    )
    hidden = await api.client.get(f"/v1/keys/{key_id}", headers=api.auth(manager.json()["secret"]))
    assert hidden.status_code == 404
