"""The Stalwart adapter against the sandbox fake over a real loopback socket: discovery,
domains, DKIM, accounts, and JMAP's three failure shapes mapped to our errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.billing.helpers import Served
from toolcallstore.errors import ProviderError
from toolcallstore.mail.base import Credential
from toolcallstore.mail.stalwart import AccountExists, StalwartJmap
from toolcallstore.sandbox import create_sandbox_app
from toolcallstore.sandbox.stalwart import ADMIN_PASSWORD, ADMIN_USER

ADMIN = Credential(ADMIN_USER, ADMIN_PASSWORD)


@pytest.fixture
async def stalwart() -> AsyncIterator[tuple[StalwartJmap, str]]:
    served = await Served(create_sandbox_app()).start()
    try:
        async with httpx.AsyncClient() as http:
            yield StalwartJmap(http, served.url + "/stalwart"), served.url + "/stalwart"
    finally:
        await served.stop()


async def test_discovery_follows_the_redirect_to_the_session(
    stalwart: tuple[StalwartJmap, str],
) -> None:
    adapter, base = stalwart
    async with httpx.AsyncClient() as http:
        raw = await http.get(base + "/.well-known/jmap")
    assert raw.status_code == 307 and raw.headers["location"].endswith("/stalwart/jmap/session")
    session = await adapter.session(ADMIN)
    assert session["username"] == "admin"
    assert session["apiUrl"] == base + "/jmap/"
    assert session["primaryAccounts"]["urn:stalwart:jmap"]


async def test_a_domain_is_created_once_and_its_dkim_key_read_back(
    stalwart: tuple[StalwartJmap, str],
) -> None:
    adapter, _ = stalwart
    first = await adapter.create_domain(ADMIN, "adapter.test")
    again = await adapter.create_domain(ADMIN, "adapter.test")
    assert first == again
    keys = await adapter.domain_keys(ADMIN, first)
    assert len(keys.dkim) == 1 and keys.dkim[0].algorithm == "rsa"
    assert len(keys.dkim[0].public_key) > 255  # an RSA key: its TXT record needs two strings
    zone = {(r.type, r.name) for r in keys.zone}
    assert ("MX", "adapter.test") in zone
    assert ("TXT", f"{keys.dkim[0].selector}._domainkey.adapter.test") in zone


async def test_accounts_log_in_with_their_password_until_it_is_reset_or_deleted(
    stalwart: tuple[StalwartJmap, str],
) -> None:
    adapter, _ = stalwart
    domain_id = await adapter.create_domain(ADMIN, "accounts.test")
    await adapter.create_account(ADMIN, domain_id=domain_id, local_part="boss",
                                 display_name="Boss", password="boss-pw", quota_mb=1,
                                 role="domain_admin")  # fmt: skip
    boss = Credential("boss@accounts.test", "boss-pw")
    jane = await adapter.create_account(
        boss,
        domain_id=domain_id,
        local_part="jane",
        display_name="Jane",
        password="first",
        quota_mb=5,
    )
    session = await adapter.session(Credential("jane@accounts.test", "first"))
    assert session["username"] == "jane@accounts.test"
    with pytest.raises(AccountExists) as exists:
        await adapter.create_account(
            boss,
            domain_id=domain_id,
            local_part="jane",
            display_name="Jane",
            password="x",
            quota_mb=5,
        )
    assert exists.value.account_id == jane and exists.value.status == 409
    await adapter.update_account(boss, jane, password="second", quota_mb=10)
    with pytest.raises(ProviderError) as refused:
        await adapter.session(Credential("jane@accounts.test", "first"))
    assert refused.value.code == "provider_auth_failed"  # a 401 problem document
    assert (await adapter.session(Credential("jane@accounts.test", "second")))["username"]
    await adapter.update_account(boss, jane, enabled=False)
    with pytest.raises(ProviderError):
        await adapter.session(Credential("jane@accounts.test", "second"))
    await adapter.delete_account(boss, jane)
    await adapter.delete_account(boss, jane)  # already gone counts as deleted
    assert "jane@accounts.test" not in [a for a in await _accounts(adapter)]


async def _accounts(adapter: StalwartJmap) -> list[str]:
    found = await adapter.call(ADMIN, "x:Account/get", {"ids": None})
    return [a["emailAddress"] for a in found["list"]]


async def test_a_domain_administrator_is_confined_to_its_domain(
    stalwart: tuple[StalwartJmap, str],
) -> None:
    adapter, _ = stalwart
    mine = await adapter.create_domain(ADMIN, "mine.test")
    theirs = await adapter.create_domain(ADMIN, "theirs.test")
    await adapter.create_account(ADMIN, domain_id=mine, local_part="boss", display_name="",
                                 password="pw", quota_mb=1, role="domain_admin")  # fmt: skip
    boss = Credential("boss@mine.test", "pw")
    with pytest.raises(ProviderError) as refused:  # notCreated: forbidden
        await adapter.create_account(boss, domain_id=theirs, local_part="x", display_name="",
                                     password="pw", quota_mb=1)  # fmt: skip
    assert refused.value.code == "provider_rejected"
    assert refused.value.details["provider_type"] == "forbidden"
    with pytest.raises(ProviderError) as method_error:  # a method-level error
        await adapter.create_domain(boss, "other.test")
    assert method_error.value.details["provider_type"] == "forbidden"


async def test_jmap_failures_map_to_our_errors(stalwart: tuple[StalwartJmap, str]) -> None:
    adapter, base = stalwart
    with pytest.raises(ProviderError) as invalid:  # notCreated: invalidProperties
        await adapter.create_domain(ADMIN, "nodot")
    assert invalid.value.code == "provider_rejected" and invalid.value.status == 502
    assert invalid.value.details["properties"] == ["name"]
    async with httpx.AsyncClient() as http:
        await http.post(base + "/_faults", json={"method": "x:Domain/query", "kind": "http_503"})
    with pytest.raises(ProviderError) as unavailable:  # a problem document with its status
        await adapter.create_domain(ADMIN, "later.test")
    assert unavailable.value.details["provider_status"] == 503
    envelope = unavailable.value.envelope("req_x")["error"]
    assert envelope["type"] == "api_error" and "Stalwart" in envelope["message"]
    async with httpx.AsyncClient() as http:
        with pytest.raises(ProviderError) as unreachable:
            await StalwartJmap(http, "http://127.0.0.1:9").session(ADMIN)
    assert unreachable.value.code == "provider_unreachable"
