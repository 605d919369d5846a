"""The SSRF guard: live endpoints reach only public https addresses, checked when saved and at
every delivery (names are resolved then, and the connection goes to the address checked);
redirects are never followed, in either mode."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Api, running_api
from tests.webhooks.helpers import FAST, Receiver, create_endpoint, live_key, wait_for
from toolcallstore.db import Database
from toolcallstore.settings import Settings
from toolcallstore.webhooks.guard import address_allowed, url_problem
from toolcallstore.webhooks.http import HttpPoster


@pytest.fixture
async def hooks_api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings.with_(**FAST)) as api:
        yield api


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://192.168.0.10/hook",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "http://93.184.215.14/hook",  # public, but live endpoints must use https
    ],
)
async def test_live_endpoints_at_private_addresses_are_refused(hooks_api: Api, url: str) -> None:
    live = await live_key(hooks_api, ("webhooks:manage",))
    response = await hooks_api.client.post(
        "/v1/webhook_endpoints", json={"url": url, "events": ["*"]}, headers=hooks_api.idem(live)
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert response.json()["error"]["param"] == "url"


def test_test_mode_may_use_loopback_but_not_private_networks() -> None:
    assert url_problem("http://127.0.0.1:8000/x", livemode=False) is None
    assert url_problem("http://[::1]:8000/x", livemode=False) is None
    assert url_problem("http://10.0.0.1/x", livemode=False) is not None
    assert url_problem("http://169.254.169.254/x", livemode=False) is not None
    assert url_problem("https://93.184.215.14/x", livemode=True) is None
    assert not address_allowed(ipaddress.ip_address("fd00::1"), livemode=True)
    assert not address_allowed(ipaddress.ip_address("fe80::1"), livemode=False)


async def _attempts(db: Database) -> list[dict[str, object]]:
    return await db.fetch_all("SELECT * FROM webhook_attempts ORDER BY id")


async def test_a_live_hostname_resolving_to_loopback_is_refused_at_delivery(
    hooks_api: Api,
) -> None:
    receiver = await Receiver().start()
    try:
        live = await live_key(hooks_api, ("webhooks:manage", "quotes:create", "llm:chat"))
        url = f"https://localhost:{receiver.port}/hook"
        await create_endpoint(hooks_api, url, ["quote.created"], secret=live)
        body = {"tool": "sandbox.echo", "params": {"message": "hi"}}
        quoted = await hooks_api.client.post("/v1/quotes", json=body, headers=hooks_api.idem(live))
        assert quoted.status_code == 200, quoted.text
        db: Database = hooks_api.app.state.services.db  # type: ignore[attr-defined]
        (attempt,) = await wait_for(lambda: _attempts(db), what="the attempt")
        assert attempt["status"] is None
        assert "localhost resolves to" in str(attempt["error"])
        assert "not a permitted address" in str(attempt["error"])
        assert receiver.received == []  # nothing was sent, not even a TLS hello
    finally:
        await receiver.stop()


async def test_the_poster_refuses_a_name_resolving_to_loopback_in_live_mode() -> None:
    receiver = await Receiver().start()
    poster = HttpPoster()
    try:
        live = await poster.post(f"https://localhost:{receiver.port}/", b"{}", {}, livemode=True)
        assert live.blocked and live.status is None
        test = await poster.post(f"http://localhost:{receiver.port}/", b"{}", {}, livemode=False)
        assert test.status == 200  # test mode may receive on loopback
        assert len(receiver.received) == 1
    finally:
        await poster.aclose()
        await receiver.stop()


async def test_a_redirect_to_loopback_is_not_followed(hooks_api: Api) -> None:
    target = await Receiver().start()
    redirector = await Receiver().start()
    redirector.script = [(302, {"Location": target.url}, b"")] * 2
    try:
        await create_endpoint(hooks_api, redirector.url, ["quote.created"])
        await hooks_api.client.post(
            "/v1/quotes", json={"tool": "sandbox.echo", "params": {"message": "x"}},
            headers=hooks_api.idem(),
        )  # fmt: skip
        db: Database = hooks_api.app.state.services.db  # type: ignore[attr-defined]
        (attempt,) = await wait_for(lambda: _attempts(db), what="the attempt")
        assert attempt["status"] == 302
        delivery = await db.fetch_one("SELECT * FROM webhook_deliveries")
        assert delivery is not None and delivery["state"] == "pending"  # a failure, retried
        assert len(redirector.received) == 1
        assert target.received == []
    finally:
        await target.stop()
        await redirector.stop()
