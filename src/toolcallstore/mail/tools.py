"""The mail tools: `email.domain.setup` (a job: the domain on Stalwart, its administrator, its
DKIM key and records, MX/SPF/DKIM/DMARC published through the DNS tool, then the wait for
verification) and `email.mailbox.create` (sync: an account on the domain, created as the
domain's own administrator; its password leaves only through `Outcome.once`).

Setup is resumable: each step records what it made on the domain's row before the next starts,
so a retried job (Stalwart failed halfway) carries on where it stopped; the domain is looked up
by name before it is created, so even a crash between Stalwart's answer and our write does not
create it twice.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

from toolcallstore.byok import Keyring
from toolcallstore.controls.ledger import receipt_id_for
from toolcallstore.controls.pricing import Estimate, Pricing
from toolcallstore.controls.spend import period_of
from toolcallstore.errors import APIError, ProviderError, StateConflict, Unavailable, Unprocessable
from toolcallstore.ids import now_us
from toolcallstore.mail import store
from toolcallstore.mail.base import Credential, DnsPublisher, MailProvider
from toolcallstore.mail.objects import domain_object, mailbox_object
from toolcallstore.mail.records import mail_records
from toolcallstore.mail.stalwart import AccountExists, StalwartJmap
from toolcallstore.sandbox.stalwart import ADMIN_PASSWORD, ADMIN_USER
from toolcallstore.services import Services
from toolcallstore.site.fields import body_schema
from toolcallstore.tools import Outcome, Tool, ToolCall
from toolcallstore.validation import Field, invalid, validate

SETUP = "email.domain.setup"
CREATE = "email.mailbox.create"
ADMIN_LOCAL = "tcs-admin"  # the domain administrator the setup creates on each domain
VERIFY_POLL_S = 0.5
MAX_QUOTA_MB = 102_400
DEFAULT_QUOTA_MB = 1024
_DOMAIN = re.compile(r"^(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_LOCAL = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")
SETUP_PARAMS = {"domain": Field(str, required=True, max_length=253)}
CREATE_PARAMS = {
    "address": Field(str, required=True, max_length=254),
    "display_name": Field(str, max_length=200),
    "quota_mb": Field(int),
}


def check_domain(raw: str, param: str = "domain") -> str:
    name = raw.strip().lower().rstrip(".")
    if not _DOMAIN.match(name):
        raise invalid(param, f"'{raw[:100]}' is not a domain name (like example.com).")
    return name


def parse_setup(params: dict[str, Any]) -> dict[str, Any]:
    clean = validate(params, SETUP_PARAMS)
    return {"domain": check_domain(clean["domain"])}


def parse_create(params: dict[str, Any]) -> dict[str, Any]:
    clean = validate(params, CREATE_PARAMS)
    local, at, domain = clean["address"].strip().lower().rpartition("@")
    if not at or not _LOCAL.match(local) or local == ADMIN_LOCAL:
        raise invalid("address", "'address' must be an address like jane@example.com (the"
                      f" local part 1-64 of a-z 0-9 . _ + -, not '{ADMIN_LOCAL}').")  # fmt: skip
    quota = clean.get("quota_mb", DEFAULT_QUOTA_MB)
    if not 1 <= quota <= MAX_QUOTA_MB:
        raise invalid("quota_mb", f"'quota_mb' must be from 1 to {MAX_QUOTA_MB}.")
    return {"address": f"{local}@{check_domain(domain, 'address')}",
            "display_name": clean.get("display_name", local), "quota_mb": quota}  # fmt: skip


def _fixed(name: str) -> Any:
    def price(params: dict[str, Any], pricing: Pricing) -> Estimate:
        return pricing.for_tool(name).quote()

    return price


@dataclass
class MailTools:
    svc: Services
    dns: DnsPublisher

    def keyring(self) -> Keyring:
        if self.svc.keyring is None:
            raise Unavailable("Mail needs TOOLCALLSTORE_MASTER_KEY: domain credentials are kept"
                              " encrypted under it.", code="provider_not_configured")  # fmt: skip
        return self.svc.keyring

    def provider(self, livemode: bool) -> tuple[MailProvider, Credential]:
        """Stalwart for this mode and the provisioning credential: the sandbox's for test keys."""
        settings = self.svc.settings
        assert self.svc.http is not None, "the lifespan opens the http client"
        if not livemode:
            base = settings.sandbox_base() + "/stalwart"
            return StalwartJmap(self.svc.http, base), Credential(ADMIN_USER, ADMIN_PASSWORD)
        if not (settings.stalwart_url and settings.stalwart_user):
            raise Unavailable("Live mail needs TOOLCALLSTORE_STALWART_URL and its provisioning"
                              " credential.", code="provider_not_configured")  # fmt: skip
        credential = Credential(settings.stalwart_user, settings.stalwart_password)
        return StalwartJmap(self.svc.http, settings.stalwart_url), credential

    async def setup_domain(self, call: ToolCall) -> Outcome:
        name = call.params["domain"]
        keyring = self.keyring()
        row = await self.svc.db.run_sync(store.claim_domain, call, name)
        try:
            row = await self._set_up(call, row, keyring)
        except APIError as error:
            await store.update_domain(self.svc.db, row["id"], error=error.message[:500])
            raise
        if row["error"] is not None:  # an earlier run's failure, now behind us
            row = await store.update_domain(self.svc.db, row["id"], error=None)
        return Outcome(result=domain_object(row), price_micros=call.estimate.price_micros,
                       provider_cost_micros=call.estimate.provider_cost_micros,
                       provider="stalwart", usage={"domains": 1},
                       attempts=[{"provider": "stalwart", "outcome": "succeeded"}])  # fmt: skip

    async def _set_up(self, call: ToolCall, row: Any, keyring: Keyring) -> Any:
        db, name = self.svc.db, row["name"]
        provider, admin = self.provider(call.livemode)
        if row["stalwart_domain_id"] is None:
            domain_id = await provider.create_domain(admin, name)
            row = await store.update_domain(db, row["id"], stalwart_domain_id=domain_id,
                                            state="created")  # fmt: skip
        if row["admin_ciphertext"] is None:  # sealed before it exists: a retry knows it
            sealed = store.seal_admin(keyring, row, store.new_password())
            row = await store.update_domain(db, row["id"], admin_name=f"{ADMIN_LOCAL}@{name}",
                                            **sealed)  # fmt: skip
        if row["admin_account_id"] is None:
            account_id = await self._domain_admin(provider, admin, row, keyring)
            row = await store.update_domain(db, row["id"], admin_account_id=account_id)
        if row["records"] is None:
            keys = await provider.domain_keys(admin, row["stalwart_domain_id"])
            if not keys.dkim:
                raise ProviderError(f"Stalwart has no DKIM key for {name} yet.",
                                    code="provider_not_ready")  # fmt: skip
            dkim = [{"selector": k.selector, "algorithm": k.algorithm} for k in keys.dkim]
            row = await store.update_domain(db, row["id"], dkim=dkim,
                                            records=mail_records(name, keys))  # fmt: skip
        if row["dns_change_id"] is None:
            change_id = await self.dns.publish(
                tenant_id=call.tenant_id, livemode=call.livemode, project_id=call.project_id,
                domain=name, records=store.loads(row["records"]), execution_id=call.execution_id,
            )  # fmt: skip
            row = await store.update_domain(db, row["id"], dns_change_id=change_id,
                                            state="publishing")  # fmt: skip
        return await self._await_verification(row)

    async def _domain_admin(self, provider: MailProvider, admin: Credential, row: Any,
                            keyring: Keyring) -> str:  # fmt: skip
        own = store.open_admin(keyring, row)
        try:
            return await provider.create_account(
                admin, domain_id=row["stalwart_domain_id"], local_part=ADMIN_LOCAL,
                display_name="ToolCall Store domain administrator", password=own.secret,
                quota_mb=1, role="domain_admin",
            )  # fmt: skip
        except AccountExists as exists:  # made by a run that died before recording it
            if exists.account_id is None:
                raise
            await provider.update_account(admin, exists.account_id, password=own.secret)
            return exists.account_id

    async def _await_verification(self, row: Any) -> Any:
        deadline = time.monotonic() + self.svc.settings.mail_verify_wait_seconds
        while True:
            status = await self.dns.status(row["dns_change_id"])
            state = status.get("status")
            if state == "verified":
                return await store.update_domain(self.svc.db, row["id"], state="active",
                                                 dns_status=state, missing=[])  # fmt: skip
            row = await store.update_domain(self.svc.db, row["id"], dns_status=state,
                                            missing=status.get("missing", []))  # fmt: skip
            if state == "failed":
                raise ProviderError(f"The DNS change for {row['name']} failed.",
                                    code="dns_change_failed")  # fmt: skip
            if time.monotonic() >= deadline:
                return row  # still verifying: GET /v1/email/domains/{domain} follows it
            await asyncio.sleep(VERIFY_POLL_S)

    async def create_mailbox(self, call: ToolCall) -> Outcome:
        keyring = self.keyring()
        address = call.params["address"]
        local, _, name = address.partition("@")
        domain = await store.find_domain(self.svc.db, call.tenant_id, call.livemode, name)
        if domain is None or domain["state"] not in store.SET_UP:
            raise not_set_up(name)
        provider, _ = self.provider(call.livemode)
        password = store.new_password()
        try:
            account_id = await provider.create_account(
                store.open_admin(keyring, domain), domain_id=domain["stalwart_domain_id"],
                local_part=local, display_name=call.params["display_name"], password=password,
                quota_mb=call.params["quota_mb"],
            )  # fmt: skip
        except AccountExists:
            raise mailbox_exists(address) from None
        row = await self.svc.db.run_sync(
            store.insert_mailbox, call, domain, account_id, receipt_id_for(call.execution_id),
            period_of(now_us()),
        )  # fmt: skip
        return Outcome(result=mailbox_object(row), price_micros=call.estimate.price_micros,
                       provider_cost_micros=call.estimate.provider_cost_micros,
                       provider="stalwart", usage={"mailbox_months": 1},
                       attempts=[{"provider": "stalwart", "outcome": "succeeded"}],
                       once={"password": password})  # fmt: skip


def not_set_up(name: str) -> Unprocessable:
    return Unprocessable(f"{name} is not a mail domain set up for you: set it up first (POST"
                         " /v1/email/domains).", code="domain_not_set_up",
                         param="address")  # fmt: skip


def mailbox_exists(address: str) -> StateConflict:
    return StateConflict(f"{address} already exists.", code="mailbox_exists", param="address")


def mail_tool_list(mail: MailTools) -> list[Tool]:
    wait = mail.svc.settings.mail_verify_wait_seconds
    return [
        Tool(name=SETUP, description="Sets a domain you hold up for mail on Stalwart: the"
             " domain, its DKIM key, and MX/SPF/DKIM/DMARC (p=none) published through DNS."
             " High risk: needs a human approval; runs as a job.", scope="email:provision",
             risk="high", billable=True, irreversible=True, mode="job",
             parse_params=parse_setup, price=_fixed(SETUP), execute=mail.setup_domain,
             params_doc={"domain": "string, required: a domain you hold"},
             params_schema=body_schema(SETUP_PARAMS), timeout_s=wait + 120.0),
        Tool(name=CREATE, description="Creates a mailbox on a domain set up for mail; its"
             " password is shown once. Priced per month. High risk: needs a human approval.",
             scope="email:provision", risk="high", billable=True, irreversible=False,
             mode="sync", parse_params=parse_create, price=_fixed(CREATE),
             execute=mail.create_mailbox,
             params_doc={"address": "string, required", "display_name": "string",
                         "quota_mb": f"1-{MAX_QUOTA_MB}, default {DEFAULT_QUOTA_MB}"},
             params_schema=body_schema(CREATE_PARAMS), timeout_s=60.0),
    ]  # fmt: skip
