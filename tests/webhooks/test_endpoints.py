"""The endpoints API: the secret shown once and stored encrypted, rotation's 24 h overlap,
validation, scopes, modes and the 16-endpoint limit."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from standardwebhooks import Webhook

from tests.conftest import Api, running_api
from tests.webhooks.helpers import (
    FAST,
    MASTER_KEY,
    Receiver,
    create_endpoint,
    live_key,
    quote,
    wait_for,
)
from toolcallstore.db import Database
from toolcallstore.ids import now_us
from toolcallstore.settings import Settings


@pytest.fixture
async def hooks_api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings.with_(**FAST)) as api:
        yield api


def db_of(api: Api) -> Database:
    db: Database = api.app.state.services.db  # type: ignore[attr-defined]
    return db


async def make_key(api: Api, scopes: list[str], **extra: object) -> str:
    body = {"scopes": scopes, **extra}
    response = await api.client.post("/v1/keys", json=body, headers=api.idem())
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def test_the_secret_is_shown_once_and_stored_only_encrypted(hooks_api: Api) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "events": ["quote.*"], "description": "dev"}
    headers = hooks_api.idem(key="create-1")
    first = await hooks_api.client.post("/v1/webhook_endpoints", json=body, headers=headers)
    assert first.status_code == 200, first.text
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    replay = await hooks_api.client.post("/v1/webhook_endpoints", json=body, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["secret"] is None
    assert replay.json()["id"] == first.json()["id"]
    shown = await hooks_api.client.get(
        f"/v1/webhook_endpoints/{first.json()['id']}", headers=hooks_api.auth()
    )
    assert shown.json()["secret"] is None
    assert shown.json()["events"] == ["quote.*"] and shown.json()["livemode"] is False
    db = db_of(hooks_api)
    for table in ("webhook_endpoints", "idempotency_keys", "audit_log"):
        rows = await db.fetch_all(f"SELECT * FROM {table}")
        assert secret not in repr(rows), table


async def test_rotation_signs_with_both_secrets_for_24_hours(hooks_api: Api) -> None:
    receiver = await Receiver().start()
    try:
        endpoint = await create_endpoint(hooks_api, receiver.url, ["quote.created"])
        old = endpoint["secret"]
        rotated = await hooks_api.client.post(
            f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", json={},
            headers=hooks_api.idem(),
        )  # fmt: skip
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old and rotated.json()["previous_secret_expires"] is not None
        await quote(hooks_api)
        await wait_for(lambda: len(receiver.received) == 1)
        delivery = receiver.received[0]
        Webhook(old).verify(delivery.body, delivery.headers)
        Webhook(new).verify(delivery.body, delivery.headers)
        assert delivery.headers["toolcall-signature"].count("v1=") == 2

        await db_of(hooks_api).run_sync(
            lambda tx: tx.execute(
                "UPDATE webhook_endpoints SET previous_expires_at = :t", {"t": now_us() - 1}
            )
        )
        await quote(hooks_api)
        await wait_for(lambda: len(receiver.received) == 2)
        later = receiver.received[1]
        Webhook(new).verify(later.body, later.headers)
        assert later.headers["toolcall-signature"].count("v1=") == 1
        assert len(later.headers["webhook-signature"].split(" ")) == 1
    finally:
        await receiver.stop()


async def test_list_patch_delete(hooks_api: Api) -> None:
    a = await create_endpoint(hooks_api, "http://127.0.0.1:9/a", ["quote.created"])
    b = await create_endpoint(hooks_api, "http://127.0.0.1:9/b", ["*"])
    listed = await hooks_api.client.get("/v1/webhook_endpoints?limit=1", headers=hooks_api.auth())
    assert [e["id"] for e in listed.json()["data"]] == [b["id"]]
    assert listed.json()["has_more"] is True
    patched = await hooks_api.client.patch(
        f"/v1/webhook_endpoints/{a['id']}", json={"events": ["receipt.created"], "disabled": True},
        headers=hooks_api.auth(),
    )  # fmt: skip
    assert patched.status_code == 200, patched.text
    assert patched.json()["events"] == ["receipt.created"]
    assert patched.json()["status"] == "disabled"
    tested = await hooks_api.client.post(
        f"/v1/webhook_endpoints/{a['id']}/test", json={}, headers=hooks_api.idem()
    )
    assert tested.status_code == 409
    assert tested.json()["error"]["code"] == "endpoint_disabled"
    deleted = await hooks_api.client.delete(
        f"/v1/webhook_endpoints/{a['id']}", headers=hooks_api.auth()
    )
    assert deleted.json() == {"id": a["id"], "object": "webhook_endpoint", "deleted": True}
    gone = await hooks_api.client.get(f"/v1/webhook_endpoints/{a['id']}", headers=hooks_api.auth())
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "http://10.0.0.5/x", "events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "http://user:pw@127.0.0.1:9/x", "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:9/x", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/x", "events": ["nope.created"]}, "events[0]"),
        ({"url": "http://127.0.0.1:9/x", "events": "*"}, "events"),
        ({"url": "http://127.0.0.1:9/x", "events": ["*"], "secret": "mine"}, "secret"),
        ({"events": ["*"]}, "url"),
    ],
)
async def test_bad_input_gets_the_error_envelope(
    hooks_api: Api, body: dict[str, object], param: str
) -> None:
    response = await hooks_api.client.post(
        "/v1/webhook_endpoints", json=body, headers=hooks_api.idem()
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_at_most_sixteen_endpoints(hooks_api: Api) -> None:
    for i in range(16):
        await create_endpoint(hooks_api, f"http://127.0.0.1:9/{i}")
    response = await hooks_api.client.post(
        "/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/x", "events": ["*"]},
        headers=hooks_api.idem(),
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_endpoint_limit"


async def test_scope_project_keys_and_modes(hooks_api: Api) -> None:
    reader = await make_key(hooks_api, ["jobs:read"])
    response = await hooks_api.client.get("/v1/webhook_endpoints", headers=hooks_api.auth(reader))
    assert response.status_code == 403
    assert response.json()["error"]["required_scope"] == "webhooks:manage"
    response = await hooks_api.client.get("/v1/events", headers=hooks_api.auth(reader))
    assert response.status_code == 403
    mine = await create_endpoint(hooks_api, "http://127.0.0.1:9/x")
    live = await live_key(hooks_api, ("webhooks:manage",))
    unseen = await hooks_api.client.get(
        f"/v1/webhook_endpoints/{mine['id']}", headers=hooks_api.auth(live)
    )
    assert unseen.status_code == 404  # a live key sees live endpoints only
    me = (await hooks_api.client.get("/v1/me", headers=hooks_api.auth())).json()
    project = await hooks_api.client.post(
        "/v1/projects", json={"name": "p", "tenant_id": me["tenant_id"]}, headers=hooks_api.idem()
    )
    assert project.status_code == 200, project.text
    scoped = await make_key(hooks_api, ["webhooks:manage"], project_id=project.json()["id"])
    refused = await hooks_api.client.get("/v1/webhook_endpoints", headers=hooks_api.auth(scoped))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "project_forbidden"


async def test_without_a_master_key_webhooks_are_unavailable(settings: Settings) -> None:
    async with running_api(settings) as api:
        response = await api.client.post(
            "/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/x", "events": ["*"]},
            headers=api.idem(),
        )  # fmt: skip
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "webhooks_unavailable"


async def test_byok_rotate_reseals_webhook_secrets_under_the_new_master_key(
    settings: Settings,
) -> None:
    old_key, new_key = MASTER_KEY, "k2:" + base64.b64encode(os.urandom(32)).decode()
    receiver = await Receiver().start()
    try:
        async with running_api(settings.with_(**FAST)) as api:
            endpoint = await create_endpoint(api, receiver.url, ["quote.created"])
            rotated = await api.client.post(
                f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", json={},
                headers=api.idem(),
            )  # fmt: skip
            secret, previous = rotated.json()["secret"], endpoint["secret"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
        done = subprocess.run(
            [sys.executable, "-m", "toolcallstore", "--database-url", settings.database_url,
             "byok", "rotate"],
            env={**env, "TOOLCALLSTORE_MASTER_KEY": f"{new_key},{old_key}"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "signing secrets of 1 webhook endpoint(s)" in done.stdout
        assert secret not in done.stdout + done.stderr
        # Only the new master key now: both secrets still sign.
        async with running_api(settings.with_(**{**FAST, "master_key": new_key})) as api:
            await quote(api)
            await wait_for(lambda: len(receiver.received) == 1)
        delivery = receiver.received[0]
        Webhook(secret).verify(delivery.body, delivery.headers)
        Webhook(previous).verify(delivery.body, delivery.headers)
    finally:
        await receiver.stop()


async def test_another_tenants_endpoints_and_events_are_404(hooks_api: Api) -> None:
    mine = await create_endpoint(hooks_api, "http://127.0.0.1:9/x")
    await quote(hooks_api)
    events = (await hooks_api.client.get("/v1/events", headers=hooks_api.auth())).json()["data"]
    other = await hooks_api.client.post(
        "/v1/tenants", json={"name": "other"}, headers=hooks_api.idem()
    )
    assert other.status_code == 200, other.text
    key = await make_key(hooks_api, ["webhooks:manage"], tenant_id=other.json()["id"])
    for path in (f"/v1/webhook_endpoints/{mine['id']}", f"/v1/events/{events[0]['id']}"):
        response = await hooks_api.client.get(path, headers=hooks_api.auth(key))
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    redeliver = await hooks_api.client.post(
        f"/v1/events/{events[0]['id']}/redeliver", json={}, headers=hooks_api.idem(key)
    )
    assert redeliver.status_code == 404
    listed = await hooks_api.client.get("/v1/events", headers=hooks_api.auth(key))
    assert listed.json()["data"] == []
