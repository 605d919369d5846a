"""The isolation sweep (issue 22, "must show"): every route of the app's route table, tried by
  - another tenant's key           on this tenant's object   -> 404
  - a key bound to another project on a project's object     -> 404
  - a key of the other mode        on a live object           -> 404
  - a key holding every scope but the route's                  -> 403 insufficient_scope
All attackers hold every other scope (never `admin`), so nothing but the rule under test can
refuse them. Objects belong to tenant T, project P2, live mode (the dangerous direction: a test
key must never reach live data); the attackers of the mode check are T's test keys.

A route is found in the app, not listed here: a route without a rule in RULES fails
`test_every_route_has_a_rule` (and the sweep), and a rule without its route fails it too.

How to add a route (media, domains, mail, admin...):
  1. If it names a new kind of object, add a factory to `World.make` (`"media": ...`): create one
     object as `world.owner` (T, P2, live; `world.tenant_wide` for tenant-wide objects) and
     return its id.
  2. Add one line to RULES keyed by (METHOD, path) exactly as routed:
       ("GET", "/v1/media/{media_id}"): Rule("media"),
     The object kind fills the path's one `{...}` parameter. Options:
       body=lambda w: {...}      the JSON body of a POST/PATCH (may reference w.ids["quote"]);
       listed="media"            a list route: the object must not appear in the attackers' lists;
       project=False / mode=False / tenant=False with a reason string instead, where a check
                                 cannot apply (say why: e.g. "tenant-wide object");
       expect_scope=...          when a route's refusal is not the generic 403.
     A route a check cannot apply to at all (public, another protocol) gets `Exempt("why")`.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Api, running_api
from toolcallstore import api as api_package
from toolcallstore.auth import SCOPES
from toolcallstore.db.keys import insert_key
from toolcallstore.settings import Settings
from toolcallstore.site.openapi import declared_operations, route_keys

EVERY = tuple(s for s in SCOPES if s != "admin")
NOT_APPLICABLE = object()


@dataclass(frozen=True)
class Rule:
    obj: str | None = None  # the object named by the path's parameter (a World.make kind)
    body: Callable[[World], dict[str, Any]] | None = None
    query: Callable[[World], str] | None = None
    listed: str | None = None  # a list route: this object must not be listed to attackers
    # True, or the reason the check does not apply to this route.
    tenant: bool | str = True
    project: bool | str = True
    mode: bool | str = True
    # The answer of the project check when the route refuses with its own rule first.
    project_refusal: int = 404
    # The answer of every check when the route answers an unseen object with its own error
    # (the same one as for an object that does not exist: nothing is revealed).
    refusal: int = 404
    # True, or why the rightful key's control read cannot succeed here.
    control: bool | str = True


@dataclass(frozen=True)
class Exempt:
    why: str


TENANT_WIDE = "a tenant-wide object: project keys are refused or see their tenant's"
NO_OBJECT = "acts on nothing but the caller's own tenant and mode"
UNMODED = "not moded: one per tenant for both modes"
OPERATOR = "the operator's `admin` only: every tenant key is refused 403 (the scope check)"
ADMIN_PAGE = ("the operator's own sign-in flow and status page: loopback-only and an admin"
              " session cookie (admin/session.py), no tenant key is ever taken, no tenant's objects"
              " are served per tenant; tests/admin covers its guards")  # fmt: skip
SIGNED = ("public by signature: the URL's HMAC (asset id, expiry, key id) is the credential, no"
          " key; a signature for one asset opening another is tested in tests/storage"
          " (test_signed_urls.py: test_another_tenants_asset_with_a_signature_for_mine)"
          )  # fmt: skip
NO_LIVE_DNS = "live mode has no DNS host credentials here: the rightful read answers 503"


CONTACT = {
    "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org",
    "phone": "+31.201234567", "street": "Keizersgracht 1", "city": "Amsterdam",
    "zipcode": "1015 AA", "country": "NL",
}  # fmt: skip


def _quote_body(w: World) -> dict[str, Any]:
    return {"tool": "sandbox.echo", "params": {"message": "x"}}


RULES: dict[tuple[str, str], Rule | Exempt] = {
    # approvals
    ("POST", "/v1/approvals"): Rule(body=lambda w: {"quote_id": w.ids["risky_quote"]}),
    ("GET", "/v1/approvals"): Rule(listed="approval"),
    ("GET", "/v1/approvals/{approval_id}"): Rule("approval"),
    ("POST", "/v1/approvals/{approval_id}/grant"): Rule("approval", body=lambda w: {}),
    ("POST", "/v1/approvals/{approval_id}/deny"): Rule("approval", body=lambda w: {}),
    # billing
    ("POST", "/v1/billing/checkout"): Rule(body=lambda w: {"plan": "starter"}, tenant=NO_OBJECT,
                                           project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/v1/billing/account"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("POST", "/v1/stripe/webhook"): Exempt("public: Stripe's signed events, no key"),
    # byok
    ("POST", "/v1/byok-keys"): Rule(body=lambda w: {"provider": "openai", "key": "sk-" + "b" * 40},
                                    tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/v1/byok-keys"): Rule(listed="byok", project=TENANT_WIDE, mode=UNMODED),
    ("GET", "/v1/byok-keys/{byok_id}"): Rule("byok", project=TENANT_WIDE, mode=UNMODED),
    ("DELETE", "/v1/byok-keys/{byok_id}"): Rule("byok", project=TENANT_WIDE, mode=UNMODED),
    # chat
    ("POST", "/v1/chat/completions"): Rule(
        body=lambda w: {"model": "cheap", "messages": [{"role": "user", "content": "hi"}],
                        "quote_id": w.ids["chat_quote"]}),
    ("GET", "/v1/models"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    # events
    ("GET", "/v1/events"): Rule(listed="event", project=TENANT_WIDE),
    ("GET", "/v1/events/{event_id}"): Rule("event", project=TENANT_WIDE),
    ("POST", "/v1/events/{event_id}/redeliver"): Rule("event", body=lambda w: {},
                                                      project=TENANT_WIDE),
    # executions
    ("POST", "/v1/executions"): Rule(body=lambda w: {"quote_id": w.ids["quote"]}),
    ("GET", "/v1/executions/{execution_id}"): Rule("execution"),
    ("GET", "/v1/health/providers"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/healthz"): Exempt("public probe"),
    ("GET", "/readyz"): Exempt("public probe"),
    ("GET", "/metrics"): Exempt("operators: admin key or loopback, no tenant data"),
    # jobs
    ("GET", "/v1/jobs/{job_id}"): Rule("job"),
    ("GET", "/v1/jobs/{job_id}/events"): Rule("job"),
    ("POST", "/v1/jobs/{job_id}/cancel"): Rule("job"),
    # keys
    ("POST", "/v1/keys"): Rule(body=lambda w: {"scopes": ["jobs:read"],
                                               "project_id": w.ids["project"]},
                               mode="a key is made in the caller's mode (or refused live)",
                               project_refusal=403),  # 403 project_forbidden: its own rule
    ("GET", "/v1/keys"): Rule(listed="key"),
    ("GET", "/v1/keys/{key_id}"): Rule("key"),
    ("POST", "/v1/keys/{key_id}/revoke"): Rule("key"),
    ("GET", "/v1/me"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/mcp"): Exempt("MCP: another protocol; its tool calls run the same controls"),
    ("POST", "/mcp"): Exempt("MCP: another protocol; its tool calls run the same controls"),
    ("DELETE", "/mcp"): Exempt("MCP: another protocol; its tool calls run the same controls"),
    ("GET", "/v1/tools"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    # quotes
    ("POST", "/v1/quotes"): Rule(body=lambda w: {**_quote_body(w), "project_id": w.ids["project"]},
                                 mode="projects are not moded"),
    ("GET", "/v1/quotes/{quote_id}"): Rule("quote"),
    # receipts
    ("GET", "/v1/receipts"): Rule(listed="receipt"),
    ("GET", "/v1/receipts/{receipt_id}"): Rule("receipt"),
    ("GET", "/v1/usage"): Rule(query=lambda w: f"project_id={w.ids['project']}",
                               mode="projects are not moded"),
    ("GET", "/v1/admin/reconciliation"): Rule(
        query=lambda w: "period=2026-01", tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    # spend caps
    ("POST", "/v1/spend_caps"): Rule(
        body=lambda w: {"project_id": w.ids["project"], "monthly_cap_usd": "1"},
        mode="projects are not moded"),
    ("GET", "/v1/spend_caps"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    # tenants and projects (tenants: the operator's `admin` only)
    ("POST", "/v1/tenants"): Rule(body=lambda w: {"name": "x"}, tenant=NO_OBJECT,
                                  project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/v1/tenants"): Rule(tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/v1/tenants/{tenant_id}"): Rule("tenant", tenant=OPERATOR, project=TENANT_WIDE,
                                             mode=UNMODED),
    ("POST", "/v1/projects"): Rule(body=lambda w: {"name": "x"}, tenant=NO_OBJECT,
                                   project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/v1/projects"): Rule(listed="project", mode=UNMODED),
    ("GET", "/v1/projects/{project_id}"): Rule("project", mode=UNMODED),
    # webhook endpoints
    ("POST", "/v1/webhook_endpoints"): Rule(
        body=lambda w: {"url": "https://example.com/x", "events": ["receipt.created"]},
        tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("GET", "/v1/webhook_endpoints"): Rule(listed="endpoint", project=TENANT_WIDE),
    ("GET", "/v1/webhook_endpoints/{endpoint_id}"): Rule("endpoint", project=TENANT_WIDE),
    ("PATCH", "/v1/webhook_endpoints/{endpoint_id}"): Rule(
        "endpoint", body=lambda w: {"description": "x"}, project=TENANT_WIDE),
    ("DELETE", "/v1/webhook_endpoints/{endpoint_id}"): Rule("endpoint", project=TENANT_WIDE),
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/rotate_secret"): Rule(
        "endpoint", project=TENANT_WIDE),
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/test"): Rule("endpoint", project=TENANT_WIDE),
    # admin page (the operator's browser flow)
    ("GET", "/admin"): Exempt(ADMIN_PAGE),
    ("GET", "/admin/login"): Exempt(ADMIN_PAGE),
    ("POST", "/admin/login"): Exempt(ADMIN_PAGE),
    ("POST", "/admin/logout"): Exempt(ADMIN_PAGE),
    ("GET", "/admin/status.json"): Exempt(ADMIN_PAGE),
    ("POST", "/admin/jobs/{job_id}/retry"): Exempt(ADMIN_PAGE),
    ("POST", "/admin/jobs/{job_id}/cancel"): Exempt(ADMIN_PAGE),
    ("POST", "/admin/audit/verify"): Exempt(ADMIN_PAGE),
    # assets (signed and published URLs)
    ("GET", "/v1/assets/{asset_id}"): Exempt(SIGNED),
    ("GET", "/v1/assets/verify"): Exempt(SIGNED + " (Caddy's forward_auth of the same URLs)"),
    ("GET", "/p/{asset_id}/{name}"): Exempt("public on purpose: a published asset's permanent"
                                            " URL, published through an approved media.publish"),
    # domains
    ("POST", "/v1/domains/check"): Rule(body=lambda w: {"names": ["example-iso.com"]},
                                        tenant=NO_OBJECT, project=NO_OBJECT, mode=NO_OBJECT),
    ("POST", "/v1/domains"): Rule(body=lambda w: {"name": "example-iso.com", "contact": CONTACT,
                                                  "quote_id": w.ids["quote"]}),
    ("GET", "/v1/domains"): Rule(listed="domain_id"),
    ("GET", "/v1/domains/{name}"): Rule("domain"),
    ("GET", "/v1/domains/{name}/dns"): Rule("domain", control=NO_LIVE_DNS),
    ("PUT", "/v1/domains/{name}/dns"): Rule("domain", body=lambda w: {
        "records": [], "quote_id": w.ids["quote"]}),
    # email
    ("POST", "/v1/email/domains"): Rule(body=lambda w: {"domain": w.ids["held_spare"]}),
    ("GET", "/v1/email/domains"): Rule(listed="mail_domain_id"),
    ("GET", "/v1/email/domains/{domain}"): Rule("mail_domain"),
    ("POST", "/v1/email/mailboxes"): Rule(
        body=lambda w: {"address": f"new@{w.ids['mail_domain']}", "quote_id": w.ids["quote"]},
        refusal=422, project_refusal=422),  # domain_not_set_up: as for a domain not there
    ("GET", "/v1/email/mailboxes"): Rule(listed="mailbox"),
    ("GET", "/v1/email/mailboxes/{mailbox_id}"): Rule("mailbox"),
    ("DELETE", "/v1/email/mailboxes/{mailbox_id}"): Rule("mailbox"),
    ("POST", "/v1/email/mailboxes/{mailbox_id}/reset-password"): Rule("mailbox"),
    # media
    ("POST", "/v1/media/generations"): Rule(body=lambda w: {"quote_id": w.ids["media_quote"]}),
    ("GET", "/v1/media/generations"): Rule(listed="generation"),
    ("GET", "/v1/media/generations/{generation_id}"): Rule("generation"),
    ("DELETE", "/v1/media/generations/{generation_id}"): Rule("generation"),
    ("GET", "/v1/media/generations/{generation_id}/events"): Rule("generation"),
    ("POST", "/v1/media/generations/{generation_id}/cancel"): Rule("generation"),
    ("POST", "/v1/media/generations/{generation_id}/publish"): Rule("generation"),
    ("POST", "/v1/provider-webhooks/{provider}"): Exempt(
        "public, no key: a provider's hint to poll a request now (Replicate's signed), never"
        " taken as a result and answering nothing of any tenant's"),
}  # fmt: skip


def app_routes() -> list[tuple[str, str]]:
    return route_keys(api_package.routes())


def test_every_route_has_a_rule() -> None:
    routed = set(app_routes())
    missing = sorted(routed - set(RULES))
    assert not missing, f"routes without an isolation rule (add them to RULES): {missing}"
    stale = sorted(set(RULES) - routed)
    assert not stale, f"rules for routes that no longer exist: {stale}"


@dataclass
class World:
    api: Api
    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    async def key(self, name: str, *, tenant: str, mode: str, project: str | None,
                  scopes: tuple[str, ...] = EVERY) -> str:  # fmt: skip
        db = self.api.app.state.services.db  # type: ignore[attr-defined]
        async with db.transaction() as tx:
            made, secret = await insert_key(tx, tenant_id=tenant, project_id=project, name=name,
                                            mode=mode, scopes=scopes)  # fmt: skip
        self.secrets[name] = secret
        self.ids[f"key:{name}"] = made.id
        return secret

    async def call(self, secret: str, method: str, path: str, body: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
        headers = {**self.api.auth(secret), "Idempotency-Key": secrets.token_hex(8)}
        return await self.api.client.request(method, path, json=body, headers=headers)

    async def made(self, secret: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.call(secret, "POST", path, body)
        assert r.status_code in (200, 202), (path, r.text)
        answer: dict[str, Any] = r.json()
        return answer


async def build_world(api: Api) -> World:
    w = World(api)
    admin = api.auth()
    tenant = (await api.client.get("/v1/me", headers=admin)).json()["tenant_id"]
    other = (await w.made(api.admin_key, "/v1/tenants", {"name": "other"}))["id"]
    p1 = (await w.made(api.admin_key, "/v1/projects", {"name": "p1"}))["id"]
    p2 = (await w.made(api.admin_key, "/v1/projects", {"name": "p2"}))["id"]
    w.ids.update(tenant=tenant, project=p2, other_tenant=other)
    owner = await w.key("owner", tenant=tenant, mode="live", project=p2)
    wide = await w.key("tenant_wide", tenant=tenant, mode="live", project=None)
    human = await w.key("human", tenant=tenant, mode="live", project=None,
                        scopes=("approvals:grant",))  # fmt: skip
    await w.key("other_tenant", tenant=other, mode="live", project=None)
    await w.key("other_project", tenant=tenant, mode="live", project=p1)
    await w.key("other_mode", tenant=tenant, mode="test", project=None)
    # The owner's objects: T, P2, live.
    w.ids["quote"] = (await w.made(owner, "/v1/quotes", _quote_body(w)))["id"]
    used = (await w.made(owner, "/v1/quotes", _quote_body(w)))["id"]
    done = await w.made(owner, "/v1/executions", {"quote_id": used})
    w.ids.update(execution=done["id"], receipt=done["receipt_id"])
    chat = {
        "tool": "llm.chat",
        "params": {
            "model": "cheap",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    }
    w.ids["chat_quote"] = (await w.made(owner, "/v1/quotes", chat))["id"]
    risky = {"tool": "sandbox.irreversible", "params": {"action": "buy"}}
    w.ids["risky_quote"] = (await w.made(owner, "/v1/quotes", risky))["id"]
    pending_quote = (await w.made(owner, "/v1/quotes", risky))["id"]
    w.ids["approval"] = (await w.made(owner, "/v1/approvals", {"quote_id": pending_quote}))["id"]
    job_quote = (await w.made(owner, "/v1/quotes", risky))["id"]
    granted = (await w.made(owner, "/v1/approvals", {"quote_id": job_quote}))["id"]
    await w.made(human, f"/v1/approvals/{granted}/grant", {})
    started = await w.made(owner, "/v1/executions",
                           {"quote_id": job_quote, "approval_id": granted})  # fmt: skip
    w.ids["job"] = started["job_id"]
    w.ids["key"] = w.ids["key:owner"]
    byok = {"provider": "openai", "key": "sk-" + "a" * 40}
    w.ids["byok"] = (await w.made(wide, "/v1/byok-keys", byok))["id"]
    hook = {"url": "https://example.com/hook", "events": ["receipt.created"]}
    w.ids["endpoint"] = (await w.made(wide, "/v1/webhook_endpoints", hook))["id"]
    events = (await api.client.get("/v1/events", headers=api.auth(wide))).json()["data"]
    w.ids["event"] = next(e["id"] for e in events if e["livemode"])
    image = {"tool": "media.image", "params": {"prompt": "a cat"}}
    w.ids["media_quote"] = (await w.made(owner, "/v1/quotes", image))["id"]
    await _capabilities(w, done["id"])
    return w


async def _capabilities(w: World, execution_id: str) -> None:
    """The owner's media generation, held domains, mail domain and mailbox (T, P2, live).
    Live mode has no provider credentials here, so the rows are written as the capabilities
    write them once their providers answered (media/, domains/, mail/store.py)."""
    db = w.api.app.state.services.db  # type: ignore[attr-defined]
    now = 1_800_000_000_000_000
    owner = {"t": w.ids["tenant"], "p": w.ids["project"], "e": execution_id, "now": now}
    gen, dom, spare, mdom, box = (f"{p}_iso{secrets.token_hex(6)}" for p in
                                  ("mg", "dom", "dom", "md", "mbx"))  # fmt: skip
    name, spare_name = f"iso{secrets.token_hex(4)}.com", f"iso{secrets.token_hex(4)}.net"
    async with db.transaction() as tx:
        params = '{"prompt": "a cat", "size": "1024x1024", "n": 1}'
        await tx.execute(
            "INSERT INTO media_generations (id, execution_id, tenant_id, livemode, project_id,"
            " kind, model, params, status, assets, created_at, updated_at, finished_at)"
            " VALUES (:id, :e, :t, 1, :p, 'image', 'image-fast', :params, 'succeeded', '[]', :now,"
            " :now, :now)", {**owner, "id": gen, "params": params})  # fmt: skip
        for domain_id, domain, execution in ((dom, name, execution_id),
                                             (spare, spare_name, "ex_iso_spare")):  # fmt: skip
            await tx.execute(
                "INSERT INTO domains (id, tenant_id, project_id, livemode, name, status,"
                " registrar, years, execution_id, attempts, nameservers, expires_at,"
                " dns_status, created_at, updated_at) VALUES (:id, :t, :p, 1, :n, 'registered',"
                " 'openprovider', 1, :e, '[]', '[]', '2027-12-07', 'verified', :now, :now)",
                {**owner, "id": domain_id, "n": domain, "e": execution})  # fmt: skip
        await tx.execute(
            "INSERT INTO mail_domains (id, tenant_id, project_id, livemode, name, state,"
            " execution_id, records, missing, created_at, updated_at) VALUES (:id, :t, :p, 1,"
            " :n, 'active', :e, '[]', '[]', :now, :now)",
            {**owner, "id": mdom, "n": name})  # fmt: skip
        await tx.execute(
            "INSERT INTO mailboxes (id, tenant_id, project_id, livemode, domain_id, address,"
            " display_name, quota_mb, state, stalwart_account_id, execution_id,"
            " password_set_at, created_at) VALUES (:id, :t, :p, 1, :d, :a, 'Iso', 100,"
            " 'active', 'acc1', :e, :now, :now)",
            {**owner, "id": box, "d": mdom, "a": f"box@{name}"})  # fmt: skip
    w.ids.update(generation=gen, domain=name, domain_id=dom, held_spare=spare_name,
                 mail_domain=name, mail_domain_id=mdom, mailbox=box)  # fmt: skip


ATTACKERS = {"tenant": "other_tenant", "project": "other_project", "mode": "other_mode"}


@pytest.fixture
async def sweep_api(settings: Settings) -> Any:
    master = "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()
    quiet = settings.with_(master_key=master, rate_limit_key_per_s=0.0,
                           rate_limit_tenant_per_s=0.0, workers=0)  # fmt: skip
    async with running_api(quiet) as api:
        yield api


async def test_no_route_reaches_another_tenants_projects_or_modes_objects(sweep_api: Api) -> None:
    w = await build_world(sweep_api)
    operations = {op.key: op for op in declared_operations()}
    failures: list[str] = []
    checked = 0
    for method, path in app_routes():
        rule = RULES[(method, path)]
        if isinstance(rule, Exempt):
            continue
        url = path
        if rule.obj is not None:
            url = re.sub(r"{[a-z_]+}", w.ids[rule.obj], path)
        if rule.query is not None:
            url += "?" + rule.query(w)
        body = rule.body(w) if rule.body is not None else (
            {} if method in ("POST", "PATCH") else None)  # fmt: skip
        op = operations[(method, path)]
        if (
            method == "GET"
            and (rule.obj or rule.listed)
            and not op.streams
            and rule.control is True
        ):
            checked += 1
            rightful = w.api.admin_key if op.scope == "admin" else w.secrets["tenant_wide"]
            failures += await _control(w, rightful, method, path, url, rule)
        for check, attacker in ATTACKERS.items():
            if getattr(rule, check) is True:
                checked += 1
                r = await w.call(w.secrets[attacker], method, url, body)
                failures += _isolated(w, method, path, check, rule, r)
        if op.scope is not None and op.scope != "public":
            checked += 1
            failures += await _scope_refused(w, method, path, url, body, op.scope)
    assert checked > 100
    assert not failures, "\n".join(failures)


async def _control(
    w: World, secret: str, method: str, path: str, url: str, rule: Rule
) -> list[str]:
    """The object is there for a rightful key (T, live, tenant-wide): the 404s mean something."""
    seen = await w.call(secret, method, url + ("?limit=100" * bool(rule.listed)))
    found = [o["id"] for o in seen.json().get("data", [])] if rule.listed else []
    if seen.status_code != 200 or (rule.listed and w.ids[rule.listed] not in found):
        return [f"{method} {path} [control] {seen.status_code}: {seen.text[:150]}"]
    return []


def _isolated(w: World, method: str, path: str, check: str, rule: Rule, r: Any) -> list[str]:
    if rule.listed is not None:
        listed = [o["id"] for o in r.json().get("data", [])] if r.is_success else []
        if r.status_code not in (200, 403, 404) or w.ids[rule.listed] in listed:
            return [f"{method} {path} [{check}] lists {rule.listed}: {r.text[:150]}"]
        return []
    expected = rule.project_refusal if check == "project" else rule.refusal
    if r.status_code != expected:
        return [f"{method} {path} [{check}] {r.status_code}: {r.text[:150]}"]
    return []


async def _scope_refused(
    w: World, method: str, path: str, url: str, body: dict[str, Any] | None, scope: str
) -> list[str]:
    """A key of the object's own tenant, project and mode, holding every scope but this one."""
    name = f"without:{scope}"
    if name not in w.secrets:
        await w.key(name, tenant=w.ids["tenant"], mode="live", project=w.ids["project"],
                    scopes=tuple(s for s in EVERY if s != scope))  # fmt: skip
    r = await w.call(w.secrets[name], method, url, body)
    error = r.json().get("error", {}) if r.status_code == 403 else {}
    if r.status_code != 403 or error.get("required_scope") != scope:
        return [f"{method} {path} [scope {scope}] {r.status_code}: {r.text[:150]}"]
    return []


async def test_a_dns_change_is_quoted_only_on_a_domain_the_key_sees(sweep_api: Api) -> None:
    """`dns.apply` is quoted against the live zone of a held domain: another tenant's, another
    mode's and (for a key bound to a project) another project's domain is not there (404),
    before any DNS host is asked. The rightful tenant-wide key gets as far as the DNS host
    (which live mode here has no credentials for)."""
    w = await build_world(sweep_api)
    body = {"tool": "dns.apply", "params": {"domain": w.ids["domain"], "records": [
        {"name": "www", "type": "A", "value": "192.0.2.7"}]}}  # fmt: skip
    for attacker in ATTACKERS.values():
        r = await w.call(w.secrets[attacker], "POST", "/v1/quotes", body)
        assert r.status_code == 404, (attacker, r.text)
        assert r.json()["error"]["param"] == "domain"
    rightful = await w.call(w.secrets["tenant_wide"], "POST", "/v1/quotes", body)
    assert rightful.status_code == 503, rightful.text
    assert rightful.json()["error"]["code"] == "provider_not_configured"
