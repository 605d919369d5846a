"""The adapters against the fakes' quirks: OpenProvider's login token cached and renewed on
code 196, errors under HTTP 200 (OpenProvider `code` != 0, Porkbun `status: ERROR`) taken as
errors, rate limits as "nothing done" (the check fails over), FQDNs and quoted TXT on read."""

from __future__ import annotations

from tests.domains.helpers import Live

NAMES = {"names": ["wire-shop.com"]}


async def _check(live: Live, secret: str) -> tuple[int, dict[str, object]]:
    r = await live.client.post("/v1/domains/check", json=NAMES, headers=live.auth(secret))
    return r.status_code, r.json()


async def _logins(live: Live) -> int:
    log = await live.fake_log("openprovider")
    return sum(1 for method, path in log["requests"] if path == "/auth/login")


async def test_the_login_token_is_cached_and_renewed_on_code_196(live: Live) -> None:
    agent = await live.key()
    for _ in range(3):
        assert (await _check(live, agent))[0] == 200
    assert await _logins(live) == 1  # one login, reused
    r = await live.client.post(f"{live.fake('openprovider')}/_expire_tokens")
    assert r.status_code == 200
    status, body = await _check(live, agent)  # 401 + code 196: log in again, once
    assert status == 200 and body["data"][0]["available"] is True  # type: ignore[index]
    assert await _logins(live) == 2
    await live.fault("openprovider", "code_196", path="/domains/check", times=1)  # under 200
    assert (await _check(live, agent))[0] == 200
    assert await _logins(live) == 3
    assert (await live.fake_log("porkbun"))["requests"] == []


async def test_errors_under_200_are_errors_and_rate_limits_fail_over(live: Live) -> None:
    agent = await live.key()
    await live.fault("openprovider", "error_under_200", path="/domains/check", times=1)
    status, body = await _check(live, agent)
    assert status == 502 and body["error"]["code"] == "provider_error"  # type: ignore[index]
    assert (await live.fake_log("porkbun"))["requests"] == []  # a refusal: no failover

    await live.fault("openprovider", "rate_limit", path="/domains/check", times=1)
    status, body = await _check(live, agent)  # nothing done: Porkbun answers instead
    assert status == 200, body
    assert body["data"] == [
        {
            "name": "wire-shop.com",
            "available": True,
            "premium": False,
            "registration_usd": "11.148000",
            "renewal_usd": "11.148000",
        }
    ]
    await live.fault("openprovider", "down")
    await live.fault("porkbun", "error_under_200", path="/domain/checkDomain/wire-shop.com")
    status, body = await _check(live, agent)
    assert status == 502 and "unexpected error" in body["error"]["message"]  # type: ignore[index]


async def test_check_refuses_more_than_50_names_and_bad_names(live: Live) -> None:
    agent = await live.key()
    many = {"names": [f"n{i}.com" for i in range(51)]}
    r = await live.client.post("/v1/domains/check", json=many, headers=live.auth(agent))
    assert r.status_code == 400 and r.json()["error"]["param"] == "names"
    r = await live.client.post("/v1/domains/check", json={"names": ["ok.com", "not a name"]},
                               headers=live.auth(agent))  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["param"] == "names[1]"
    no_scope = await live.key(["quotes:create"])
    r = await live.client.post("/v1/domains/check", json=NAMES, headers=live.auth(no_scope))
    assert r.status_code == 403 and "domains:check" in r.json()["error"]["message"]
    assert (await live.fake_log("openprovider"))["requests"] == []


async def test_live_mode_uses_only_configured_registrars(live: Live) -> None:
    from toolcallstore.domains import service
    from toolcallstore.errors import Unavailable

    svc = live.svc
    try:
        service.registrars(svc, True)
    except Unavailable as error:
        assert error.code == "provider_not_configured" and error.status == 503
    else:
        raise AssertionError("live mode without credentials must refuse")
    svc.settings = svc.settings.with_(porkbun_api_key="pk1_x", porkbun_secret_key="sk1_x")
    assert [r.name for r in service.registrars(svc, True)] == ["porkbun"]
    svc.settings = svc.settings.with_(openprovider_username="u", openprovider_password="p")
    found = service.registrars(svc, True)
    assert [r.name for r in found] == ["openprovider", "porkbun"]
    assert "api.openprovider.eu" in found[0].base  # type: ignore[attr-defined]
    shown = repr(svc.settings)  # secrets are kept out of the settings' repr
    assert "openprovider_password" not in shown and "sk1_x" not in shown
