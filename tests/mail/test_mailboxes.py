"""Mailboxes through the API with the test key: created under every control, the password
shown once and found nowhere afterwards, reset, deleted; and the refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.mail.helpers import Mail, hold_domain, mail_app, stored_anywhere
from toolcallstore.settings import Settings


@pytest.fixture
async def mail(settings: Settings) -> AsyncIterator[Mail]:
    async with mail_app(settings) as value:
        yield value


async def _login(mail: Mail, address: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(mail.stalwart + "/.well-known/jmap", auth=(address, password),
                                follow_redirects=True)  # fmt: skip


async def test_a_password_reset_shows_the_new_one_once_and_the_old_one_stops_working(
    mail: Mail,
) -> None:
    await hold_domain(mail, "reset.test")
    await mail.set_up("reset.test")
    made = await mail.create_mailbox("sam@reset.test")
    assert made.status_code == 200, made.text
    first = made.json()
    path = f"/v1/email/mailboxes/{first['id']}/reset-password"
    reset = await mail.post(path, {}, key="reset-1")
    assert reset.status_code == 200, reset.text
    new = reset.json()["password"]
    assert new and new != first["password"]
    assert (await _login(mail, "sam@reset.test", first["password"])).status_code == 401
    assert (await _login(mail, "sam@reset.test", new)).status_code == 200
    again = await mail.post(path, {}, key="reset-1")  # a replay resets nothing
    assert again.json()["password"] is None
    assert (await _login(mail, "sam@reset.test", new)).status_code == 200
    assert await stored_anywhere(mail, new) == []


async def test_a_deleted_mailbox_is_gone_from_stalwart_and_its_address_free_again(
    mail: Mail,
) -> None:
    await hold_domain(mail, "gone.test")
    await mail.set_up("gone.test")
    box = (await mail.create_mailbox("max@gone.test")).json()
    r = await mail.api.client.delete(f"/v1/email/mailboxes/{box['id']}",
                                     headers=mail.api.auth(mail.agent))  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] == "deleted"
    assert "max@gone.test" not in (await mail.fake_state())["accounts"]
    assert (await _login(mail, "max@gone.test", box["password"])).status_code == 401
    again = await mail.create_mailbox("max@gone.test")
    assert again.status_code == 200, again.text
    assert again.json()["id"] != box["id"]


async def test_refusals_name_what_to_fix_and_charge_nothing(mail: Mail) -> None:
    await hold_domain(mail, "rules.test")
    await mail.set_up("rules.test")
    outside = await mail.post("/v1/email/mailboxes", {"address": "a@elsewhere.test"})
    assert outside.status_code == 422, outside.text
    assert outside.json()["error"]["code"] == "domain_not_set_up"

    assert (await mail.create_mailbox("taken@rules.test")).status_code == 200
    params = {"address": "taken@rules.test"}
    call = await mail.approved("email.mailbox.create", params)
    duplicate = await mail.post("/v1/email/mailboxes", {**params, **call})
    assert duplicate.status_code == 409, duplicate.text
    assert duplicate.json()["error"]["code"] == "mailbox_exists"

    fresh = {"address": "new@rules.test"}
    quoted = (await mail.approved("email.mailbox.create", fresh))["quote_id"]
    unapproved = await mail.post("/v1/email/mailboxes", {**fresh, "quote_id": quoted})
    assert unapproved.status_code == 403, unapproved.text
    assert unapproved.json()["error"]["code"] == "approval_required"
    unquoted = await mail.post("/v1/email/mailboxes", fresh)
    assert unquoted.status_code == 403 and unquoted.json()["error"]["code"] == "quote_required"
    bad = await mail.post("/v1/email/mailboxes", {"address": "no at sign"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "address"
    scoped = await mail.api.client.get("/v1/email/mailboxes",
                                       headers=mail.api.auth(mail.human))  # fmt: skip
    assert scoped.status_code == 403
    assert scoped.json()["error"]["code"] == "insufficient_scope"
    assert "new@rules.test" not in (await mail.fake_state())["accounts"]
