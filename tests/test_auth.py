import asyncio
import time

from tests.conftest import Api, running_api
from toolcallstore.settings import Settings


async def _make_key(api: Api, scopes: list[str], **extra: object) -> dict:
    r = await api.client.post("/v1/keys", json={"scopes": scopes, **extra}, headers=api.idem())
    assert r.status_code == 200, r.text
    return r.json()


async def test_no_key_is_401_in_the_envelope(api: Api) -> None:
    r = await api.client.get("/v1/keys")
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "unauthenticated"
    assert error["request_id"] == r.headers["ToolCall-Request-Id"]


async def test_wrong_malformed_and_non_bearer_keys_are_401(api: Api) -> None:
    real = api.admin_key
    for header in (
        f"Bearer {real[:-1]}{'A' if real[-1] != 'A' else 'B'}",  # one character off
        "Bearer tcs_test_short",
        "Bearer ",
        f"Basic {real}",
        "Bearer ' OR 1=1 --",
        f"Bearer {real}\u00e9",
    ):
        r = await api.client.get("/v1/me", headers={"Authorization": header.encode("latin-1")})
        assert r.status_code == 401, header
        assert r.json()["error"]["type"] == "authentication_error"


async def test_missing_scope_is_403_naming_it(api: Api) -> None:
    weak = await _make_key(api, ["jobs:read"])
    r = await api.client.get("/v1/keys", headers=api.auth(weak["secret"]))
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert error["required_scope"] == "keys:manage"
    assert "keys:manage" in error["message"]


async def test_a_key_sees_itself_at_v1_me(api: Api) -> None:
    weak = await _make_key(api, ["jobs:read"], name="reader")
    r = await api.client.get("/v1/me", headers=api.auth(weak["secret"]))
    assert r.status_code == 200
    assert r.json()["id"] == weak["id"] and r.json()["scopes"] == ["jobs:read"]
    assert r.json()["secret"] is None


async def test_revocation_is_immediate_in_the_revoking_process(api: Api) -> None:
    key = await _make_key(api, ["keys:manage"])
    assert (await api.client.get("/v1/me", headers=api.auth(key["secret"]))).status_code == 200
    r = await api.client.post(f"/v1/keys/{key['id']}/revoke", headers=api.auth())
    assert r.status_code == 200 and r.json()["revoked"] is not None
    assert (await api.client.get("/v1/me", headers=api.auth(key["secret"]))).status_code == 401


async def test_revocation_reaches_another_process_within_5_seconds(
    api: Api, settings: Settings
) -> None:
    key = await _make_key(api, ["jobs:read"])
    async with running_api(settings) as other:
        # The other instance has the key cached as valid.
        assert (await other.client.get("/v1/me", headers=other.auth(key["secret"]))).is_success
        await api.client.post(f"/v1/keys/{key['id']}/revoke", headers=api.auth())
        revoked_at = time.monotonic()
        while (await other.client.get("/v1/me", headers=other.auth(key["secret"]))).is_success:
            assert time.monotonic() - revoked_at < 5, "revocation not seen within 5 s"
            await asyncio.sleep(0.1)
