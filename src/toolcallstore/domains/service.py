"""Domains and DNS for the tools, the API and other capabilities (mailboxes publish their
records through `apply_records_for`).

Stable entry points for other capabilities (keep these signatures):

- `find_held_domain(svc, *, tenant_id, livemode, name)`: the registered domain the tenant
  holds in that mode (a row with `name`, `status`, `registrar`, `project_id`, ...) or None.
- `apply_records_for(svc, *, tenant_id, livemode, project_id, domain, upsert, execution_id)`:
  a system-initiated DNS change under the caller's own, already approved execution: the
  `upsert` records replace the live records of the same name and type, the change is applied
  and a `dns.verify` job enqueued; returns the change id. Idempotent per `execution_id` (one
  change per execution: a second call with it returns the first change's id). Not charged:
  the caller's execution pays. Raises NotFound (no such held domain) or Unprocessable (a bad
  record, naming it).
- `dns_change_status(svc, change_id)`: `{"status": "applying"|"applied"|"partial"|"verified"|
  "failed", "missing": [records], "applied": [...], "not_applied": [...], "error": ...}`.

Registration (`register_domain`, the `domains.register` job) fails over from OpenProvider to
Porkbun only on errors that say nothing was done; after an ambiguous one it asks the registrar
whether the domain is ours before anything else, and every attempt is written down before it
is sent, so that a run after a crash asks first too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import orjson

from toolcallstore.controls.pricing import Estimate, Pricing, to_micros_up
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.domains.base import (
    Ambiguous,
    Availability,
    Contact,
    Dns,
    HeldDomain,
    NothingDone,
    Refused,
    Registrar,
    RegistrarError,
)
from toolcallstore.domains.openprovider import OpenProvider
from toolcallstore.domains.porkbun import Porkbun
from toolcallstore.domains.records import (
    Diff,
    Record,
    diff_records,
    merge_records,
    parse_records,
    zone_fingerprint,
)
from toolcallstore.errors import (
    APIError,
    NotFound,
    ProviderError,
    StateConflict,
    Unavailable,
)
from toolcallstore.events import record_event
from toolcallstore.ids import new_id, now_us
from toolcallstore.money import micros_to_usd
from toolcallstore.queue.store import NewJob
from toolcallstore.sandbox.dns_server import rdata_text
from toolcallstore.tools.registry import FinalFailure, Outcome, ToolCall

if TYPE_CHECKING:
    from toolcallstore.services import Services

REGISTER_TOOL = "domains.register"
DNS_TOOL = "dns.apply"
CHECK_TOOL = "domains.check"
VERIFY_JOB_TYPE = "dns.verify"
DONE_CHANGE = ("applied", "partial", "verified", "failed")


# -- providers -----------------------------------------------------------------------------


def registrars(svc: Services, livemode: bool) -> list[Registrar]:
    """OpenProvider then Porkbun: the sandbox's in test mode, those with credentials live."""
    s = svc.settings
    assert svc.http is not None and svc.domains is not None, "the lifespan opens them"
    timeout = s.domain_http_timeout_seconds
    if not livemode:
        base = s.sandbox_base()
        return [
            OpenProvider(svc.http, base + "/openprovider/v1beta", "sandbox", "sandbox",
                         svc.domains.tokens, timeout),
            Porkbun(svc.http, base + "/porkbun/api/json/v3", "pk1_sandbox", "sk1_sandbox",
                    timeout),
        ]  # fmt: skip
    found: list[Registrar] = []
    if s.openprovider_username and s.openprovider_password:
        found.append(OpenProvider(svc.http, s.openprovider_url, s.openprovider_username,
                                  s.openprovider_password, svc.domains.tokens,
                                  timeout))  # fmt: skip
    if s.porkbun_api_key and s.porkbun_secret_key:
        found.append(Porkbun(svc.http, s.porkbun_url, s.porkbun_api_key, s.porkbun_secret_key,
                             timeout))  # fmt: skip
    if not found:
        raise Unavailable("No registrar is configured for live mode (set"
                          " TOOLCALLSTORE_OPENPROVIDER_USERNAME/_PASSWORD or"
                          " TOOLCALLSTORE_PORKBUN_API_KEY/_SECRET_KEY).",
                          code="provider_not_configured")  # fmt: skip
    return found


def dns_host(svc: Services, livemode: bool, registrar: str) -> Dns:
    """The DNS host of a domain: the registrar that holds it."""
    for found in registrars(svc, livemode):
        if found.name == registrar:
            assert isinstance(found, OpenProvider | Porkbun)
            return found
    raise Unavailable(f"The registrar {registrar} of this domain is not configured.",
                      code="provider_not_configured")  # fmt: skip


def provider_error(error: RegistrarError) -> ProviderError:
    return ProviderError(f"The registrar failed: {error}"[:400], code="provider_error",
                         registrar=error.registrar)  # fmt: skip


async def check_availability(svc: Services, livemode: bool,
                             names: list[str]) -> tuple[str, list[Availability]]:  # fmt: skip
    """Availability and registrar prices, from the first registrar that answers."""
    failures: list[dict[str, str]] = []
    for registrar in registrars(svc, livemode):
        try:
            return registrar.name, await registrar.check(names)
        except NothingDone as error:
            failures.append({"registrar": registrar.name, "error": error.message})
        except (Refused, Ambiguous) as error:
            raise provider_error(error) from None
    raise ProviderError("No registrar answered the availability check.",
                        code="all_providers_failed", attempts=failures)  # fmt: skip


# -- prices --------------------------------------------------------------------------------


def registration_cost(found: Availability, years: int) -> Decimal:
    """What `years` of the name cost us: the first year (premium or not), then renewals."""
    if found.create_price is None:
        raise ProviderError(f"The registrar gave no price for {found.name}.")
    renewal = found.renewal_price if found.renewal_price is not None else found.create_price
    return found.create_price + renewal * (years - 1)


def customer_price(pricing: Pricing, tool: str, cost: Decimal) -> int:
    """Our price for a provider cost: the same rule as every target (cost x (1 + markup) +
    fee, rounded up to the micro-USD)."""
    entry = pricing.for_tool(tool)
    return to_micros_up(cost * (1 + entry.markup) + entry.fee)


def availability_object(found: Availability, pricing: Pricing) -> dict[str, Any]:
    out: dict[str, Any] = {"name": found.name, "available": found.available,
                           "premium": found.premium}  # fmt: skip
    if found.create_price is not None:
        out["registration_usd"] = micros_to_usd(
            customer_price(pricing, REGISTER_TOOL, found.create_price)
        )
        renewal = found.renewal_price if found.renewal_price is not None else found.create_price
        out["renewal_usd"] = micros_to_usd(customer_price(pricing, REGISTER_TOOL, renewal))
    return out


async def registration_estimate(svc: Services, livemode: bool, params: dict[str, Any],
                                pricing: Pricing) -> Estimate:  # fmt: skip
    """The quote of a registration: the registrar's live price for the name and years."""
    name, years = params["name"], params["years"]
    registrar, (found,) = await check_availability(svc, livemode, [name])
    if not found.available:
        raise StateConflict(f"{name} is not available for registration.",
                            code="domain_unavailable", param="name")  # fmt: skip
    cost = registration_cost(found, years)
    price = customer_price(pricing, REGISTER_TOOL, cost)
    line = {
        "description": f"{name}: registration, {years} year{'s' if years > 1 else ''}"
        + (" (premium name)" if found.premium else ""),
        "quantity": years,
        "premium": found.premium,
        "amount_usd": micros_to_usd(price),
    }
    return Estimate(price, price, to_micros_up(cost), registrar, [line])


# -- domains -------------------------------------------------------------------------------


async def find_held_domain(svc: Services, *, tenant_id: str, livemode: bool,
                           name: str) -> Row | None:  # fmt: skip
    """The registered domain `name` the tenant holds in that mode: a row with `id`, `name`,
    `status` ('registered'), `registrar`, `project_id`, `nameservers` (JSON), `expires_at`,
    `dns_status`; None if it holds no such domain (or it is still registering)."""
    row: Row | None = await svc.db.fetch_one(
        "SELECT * FROM domains WHERE tenant_id = :t AND livemode = :m AND name = :n"
        " AND status = 'registered'",
        {"t": tenant_id, "m": int(livemode), "n": name.lower().rstrip(".")},
    )
    return row


def insert_domain_row(
    tx: SyncTransaction, *, tenant_id: str, project_id: str | None, livemode: bool, name: str,
    years: int, execution_id: str,
) -> Row | None:  # fmt: skip
    """The 'registering' row of an execution (once); None if another execution holds the name."""
    now = now_us()
    tx.execute(
        "UPDATE domains SET status = 'failed', updated_at = :now WHERE livemode = :m"
        " AND name = :n AND status = 'registering' AND execution_id IN"
        " (SELECT id FROM executions WHERE state = 'failed')",
        {"now": now, "m": int(livemode), "n": name},
    )
    tx.execute(
        "INSERT INTO domains (id, tenant_id, project_id, livemode, name, status, years,"
        " execution_id, attempts, nameservers, created_at, updated_at) VALUES (:id, :t, :p, :m,"
        " :n, 'registering', :y, :e, '[]', '[]', :now, :now) ON CONFLICT DO NOTHING",
        {"id": new_id("dom"), "t": tenant_id, "p": project_id, "m": int(livemode), "n": name,
         "y": years, "e": execution_id, "now": now},
    )  # fmt: skip
    return tx.fetch_one("SELECT * FROM domains WHERE execution_id = :e", {"e": execution_id})


def name_is_held(tx: SyncTransaction, livemode: bool, name: str) -> bool:
    found = tx.fetch_one(
        "SELECT d.id FROM domains d LEFT JOIN executions e ON e.id = d.execution_id"
        " WHERE d.livemode = :m AND d.name = :n AND d.status <> 'failed'"
        " AND (e.state IS NULL OR e.state <> 'failed')",
        {"m": int(livemode), "n": name},
    )
    return found is not None


def contact_of(params: dict[str, Any]) -> Contact:
    c = params["contact"]
    return Contact(c["first_name"], c["last_name"], c["email"], c["phone"], c["street"],
                   c["city"], c["zipcode"], c["country"], c.get("company", ""),
                   c.get("state", ""))  # fmt: skip


async def _note_attempts(svc: Services, domain_id: str, attempts: list[dict[str, Any]]) -> None:
    await svc.db.run_sync(lambda tx: tx.execute(
        "UPDATE domains SET attempts = :a, updated_at = :now WHERE id = :id",
        {"a": orjson.dumps(attempts).decode(), "now": now_us(), "id": domain_id}))  # fmt: skip


async def register_domain(svc: Services, call: ToolCall) -> Outcome:
    """The `domains.register` job: register once, with failover only where it is safe."""
    params = call.params
    name, years = params["name"], params["years"]

    def start(tx: SyncTransaction) -> Row | None:
        return insert_domain_row(tx, tenant_id=call.tenant_id, project_id=call.project_id,
                                 livemode=call.livemode, name=name, years=years,
                                 execution_id=call.execution_id)  # fmt: skip

    row = await svc.db.run_sync(start)
    if row is None:
        raise FinalFailure(f"{name} is already registered here.", code="domain_unavailable",
                           status=409)  # fmt: skip
    attempts: list[dict[str, Any]] = orjson.loads(row["attempts"])
    if row["status"] == "registered":  # a re-run after a crash: done already
        held = HeldDomain(name, row["registrar"], row["registrar_ref"] or "", row["expires_at"],
                          orjson.loads(row["nameservers"]))  # fmt: skip
        return _registered_outcome(call, held, attempts)
    contact = contact_of(params)
    nameservers = params.get("nameservers") or [
        ns for ns in svc.settings.domain_nameservers.split(",") if ns.strip()
    ]
    price = Decimal(call.estimate.price_micros) / 1_000_000
    candidates = registrars(svc, call.livemode)
    # An earlier run sent a create and never heard back (a crash, a timeout): every registrar
    # it may have bought at is asked first, before any create is sent anywhere.
    for registrar in candidates:
        tried = [a for a in attempts if a["registrar"] == registrar.name]
        if tried and tried[-1]["state"] in ("sent", "ambiguous"):
            earlier = await _ask_registrar(svc, registrar, name, wait=False)
            if earlier is not None:
                return await _finish(svc, call, row["id"], earlier, attempts, registrar.name)
            tried[-1]["state"] = "not_held"
    for registrar in candidates:
        # No registrar may cost us more than the customer pays (the failover's price was not
        # quoted).
        cap = price
        attempts.append({"registrar": registrar.name, "state": "sent", "at": now_us()})
        await _note_attempts(svc, row["id"], attempts)
        try:
            held = await registrar.register(name, years, contact, nameservers,
                                            call.execution_id, cap)  # fmt: skip
        except NothingDone as error:
            attempts[-1].update(state="nothing_done", error=error.message)
            await _note_attempts(svc, row["id"], attempts)
            continue
        except Refused as error:
            attempts[-1].update(state="refused", error=error.message)
            await _fail(svc, row["id"], attempts, error.message)
            code = "domain_unavailable" if error.taken else "registrar_refused"
            raise FinalFailure(f"{registrar.name} refused the registration: {error.message}",
                               code=code, status=409 if error.taken else 422,
                               registrar=registrar.name) from None  # fmt: skip
        except Ambiguous as error:
            attempts[-1].update(state="ambiguous", error=error.message)
            await _note_attempts(svc, row["id"], attempts)
            asked = await _ask_registrar(svc, registrar, name, wait=True)
            if asked is None:
                # Not ours (yet): it may still be in flight. The job tries again later and
                # asks first; it fails over only once the registrar says it did nothing.
                raise ProviderError(f"{registrar.name} did not answer the registration of"
                                    f" {name} and does not hold it yet; asking again later.",
                                    code="registration_unconfirmed") from None  # fmt: skip
            held = asked
        return await _finish(svc, call, row["id"], held, attempts, registrar.name)
    # Nothing was done anywhere: the job tries again later (a maintenance ends); the domain
    # shows `failed` once its execution does.
    raise ProviderError(f"No registrar could register {name}; nothing was bought.",
                        code="all_providers_failed", attempts=attempts)  # fmt: skip


async def _ask_registrar(svc: Services, registrar: Registrar, name: str, *,
                         wait: bool) -> HeldDomain | None:  # fmt: skip
    """Whether the registrar now holds `name` for us; raises (the job retries) if it cannot
    say, since only its answer makes a retry or a failover safe."""
    checks = max(1, svc.settings.domain_recheck_count) if wait else 1
    last: RegistrarError | None = None
    for i in range(checks):
        if wait and i:
            await asyncio.sleep(svc.settings.domain_recheck_ms / 1000)
        try:
            held = await registrar.get_domain(name)
        except RegistrarError as error:
            last = error
            continue
        if held is not None:
            return held
        last = None
    if last is not None:
        raise ProviderError(f"Could not ask {registrar.name} whether it registered {name}:"
                            f" {last.message}", code="registration_unconfirmed")  # fmt: skip
    return None


async def _fail(svc: Services, domain_id: str, attempts: list[dict[str, Any]], why: str) -> None:
    await svc.db.run_sync(lambda tx: tx.execute(
        "UPDATE domains SET status = 'failed', attempts = :a, error = :e, updated_at = :now"
        " WHERE id = :id AND status = 'registering'",
        {"a": orjson.dumps(attempts).decode(), "e": why[:500], "now": now_us(),
         "id": domain_id}))  # fmt: skip


async def _finish(svc: Services, call: ToolCall, domain_id: str, held: HeldDomain,
                  attempts: list[dict[str, Any]], registrar: str) -> Outcome:  # fmt: skip
    attempts = [*attempts]
    if attempts and attempts[-1]["registrar"] == registrar:
        attempts[-1]["state"] = "registered"
    else:
        attempts.append({"registrar": registrar, "state": "registered", "at": now_us()})

    def finish(tx: SyncTransaction) -> None:
        updated = tx.fetch_one(
            "UPDATE domains SET status = 'registered', registrar = :r, registrar_ref = :ref,"
            " expires_at = :exp, nameservers = :ns, attempts = :a, error = NULL,"
            " updated_at = :now WHERE id = :id AND status = 'registering' RETURNING name",
            {"r": registrar, "ref": held.ref, "exp": held.expires_at,
             "ns": orjson.dumps(held.nameservers).decode(),
             "a": orjson.dumps(attempts).decode(), "now": now_us(), "id": domain_id},
        )  # fmt: skip
        if updated is not None:
            record_event(tx, call.tenant_id, "domain.registered",
                         {"domain": held.name, "registrar": registrar,
                          "execution_id": call.execution_id}, livemode=call.livemode)  # fmt: skip

    await svc.db.run_sync(finish)
    return _registered_outcome(call, held, attempts, registrar)


def _registered_outcome(call: ToolCall, held: HeldDomain, attempts: list[dict[str, Any]],
                        registrar: str | None = None) -> Outcome:  # fmt: skip
    registrar = registrar or held.registrar
    cost = call.estimate.provider_cost_micros
    if held.cost_usd is not None:
        cost = to_micros_up(held.cost_usd)
    result = {"domain": held.name, "status": "registered", "registrar": registrar,
              "expires_at": held.expires_at, "nameservers": held.nameservers}  # fmt: skip
    tries = [{"provider": a["registrar"], "outcome": a["state"]} for a in attempts]
    return Outcome(result, call.estimate.price_micros, cost, registrar,
                   {"years": call.params["years"]}, tries)  # fmt: skip


def domain_object(row: Row, receipt_id: str | None, execution_state: str | None,
                  change: Row | None) -> dict[str, Any]:  # fmt: skip
    status = row["status"]
    if status == "registering" and execution_state == "failed":
        status = "failed"
    dns_part = None if change is None else change_object(change)
    return {
        "id": row["id"], "object": "domain", "name": row["name"], "status": status,
        "registrar": row["registrar"], "years": row["years"], "expires_at": row["expires_at"],
        "nameservers": orjson.loads(row["nameservers"]), "execution_id": row["execution_id"],
        "receipt_id": receipt_id, "project_id": row["project_id"], "error": row["error"],
        "dns": dns_part, "livemode": bool(row["livemode"]),
        "created": int(row["created_at"]) // 1_000_000,
    }  # fmt: skip


# -- DNS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsPlan:
    domain: Row
    live: list[Record]
    desired: list[Record]
    diff: Diff
    fingerprint: str


async def held_or_404(svc: Services, tenant_id: str, livemode: bool, name: str,
                      key_project_id: str | None = None) -> Row:  # fmt: skip
    """The held domain; to a key bound to a project (`key_project_id`), another project's
    domain is not there."""
    row = await find_held_domain(svc, tenant_id=tenant_id, livemode=livemode, name=name)
    if row is None or key_project_id not in (None, row["project_id"]):
        raise NotFound(f"No registered domain {name[:100]} here.", param="domain")
    return row


async def read_zone(svc: Services, domain: Row) -> list[Record]:
    host = dns_host(svc, bool(domain["livemode"]), domain["registrar"])
    try:
        return await host.read_zone(domain["name"])
    except RegistrarError as error:
        raise provider_error(error) from None


async def plan_dns(
    svc: Services, *, tenant_id: str, livemode: bool, name: str, desired: list[Record],
    key_project_id: str | None = None,
) -> DnsPlan:  # fmt: skip
    domain = await held_or_404(svc, tenant_id, livemode, name, key_project_id)
    live = await read_zone(svc, domain)
    return DnsPlan(domain, live, desired, diff_records(live, desired), zone_fingerprint(live))


async def dns_estimate(
    svc: Services, livemode: bool, tenant_id: str, params: dict[str, Any], pricing: Pricing,
    *, key_project_id: str | None = None,
) -> Estimate:  # fmt: skip
    """The quote of a DNS change: the diff against the live zone, priced per record changed;
    the line carries the diff (what the approver sees) and the zone's fingerprint (what the
    apply checks is still live)."""
    desired = [Record.from_dict(r) for r in params["records"]]
    plan = await plan_dns(svc, tenant_id=tenant_id, livemode=livemode, name=params["domain"],
                          desired=desired, key_project_id=key_project_id)  # fmt: skip
    base = pricing.for_tool(DNS_TOOL).quote(plan.diff.size)
    line = {**base.breakdown[0], "description": f"{params['domain']}: DNS change,"
            f" {plan.diff.size} record change(s)", "diff": plan.diff.to_dict(),
            "zone_fingerprint": plan.fingerprint}  # fmt: skip
    return Estimate(base.price_micros, base.max_cost_micros, base.provider_cost_micros,
                    plan.domain["registrar"], [line])  # fmt: skip


def quoted_change(estimate: Estimate) -> tuple[Diff, str]:
    line = estimate.breakdown[0]
    return Diff.from_dict(line["diff"]), str(line["zone_fingerprint"])


def stale(what: str) -> StateConflict:
    return StateConflict(f"The zone changed since this change was quoted ({what}): the approved"
                         " diff is no longer what would be applied. Quote it again.",
                         code="quote_stale", param="quote_id")  # fmt: skip


async def apply_dns(svc: Services, call: ToolCall) -> Outcome:
    """The `dns.apply` tool: apply the quoted diff if the zone is still as quoted, one record
    at a time; charged per record change the provider made."""
    diff, fingerprint = quoted_change(call.estimate)
    domain = await held_or_404(svc, call.tenant_id, call.livemode, call.params["domain"])
    change, fresh = await _change_row(svc, call.tenant_id, call.livemode, domain,
                                      call.execution_id, diff)  # fmt: skip
    if fresh:
        live = await read_zone(svc, domain)
        if zone_fingerprint(live) != fingerprint:
            await _set_change(svc, change["id"], status="failed", error="quote_stale")
            raise stale("checked before applying")
    change = await _run_change(svc, domain, change, resumed=not fresh)
    unit = svc.tools.pricing.for_tool(DNS_TOOL).quote(1)
    done = len(orjson.loads(change["applied"]))
    price = min(unit.price_micros * done, call.estimate.max_cost_micros)
    result = change_object(change)
    return Outcome(result, price, unit.provider_cost_micros * done, domain["registrar"],
                   {"record_changes": done}, [{"provider": domain["registrar"],
                                              "outcome": change["status"]}])  # fmt: skip


async def _change_row(svc: Services, tenant_id: str, livemode: bool, domain: Row,
                      execution_id: str, diff: Diff) -> tuple[Row, bool]:  # fmt: skip
    """The change of an execution, and whether it is new (False: a run after a crash)."""

    def insert(tx: SyncTransaction) -> tuple[Row, bool]:
        now = now_us()
        inserted = tx.fetch_one(
            "INSERT INTO dns_changes (id, tenant_id, domain_id, livemode, execution_id, status,"
            " diff, applied, not_applied, missing, created_at, updated_at) VALUES (:id, :t, :d,"
            " :m, :e, 'applying', :diff, '[]', '[]', '[]', :now, :now)"
            " ON CONFLICT (execution_id) DO NOTHING RETURNING id",
            {"id": new_id("dnsch"), "t": tenant_id, "d": domain["id"], "m": int(livemode),
             "e": execution_id, "diff": orjson.dumps(diff.to_dict()).decode(), "now": now},
        )  # fmt: skip
        row = tx.fetch_one("SELECT * FROM dns_changes WHERE execution_id = :e",
                           {"e": execution_id})  # fmt: skip
        assert row is not None
        return row, inserted is not None

    return await svc.db.run_sync(insert)


async def _set_change(svc: Services, change_id: str, **values: Any) -> Row:
    def update(tx: SyncTransaction) -> Row:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        row = tx.fetch_one(f"UPDATE dns_changes SET {sets}, updated_at = :now WHERE id = :id"
                           " RETURNING *",
                           {**values, "now": now_us(), "id": change_id})  # fmt: skip
        assert row is not None
        tx.execute("UPDATE domains SET dns_status = :s, dns_change_id = :c WHERE id = :d",
                   {"s": row["status"], "c": change_id, "d": row["domain_id"]})  # fmt: skip
        return row

    return await svc.db.run_sync(update)


def _ops(diff: Diff) -> list[dict[str, Any]]:
    """The diff as single provider operations, removals first (a CNAME replacing an A)."""
    ops: list[dict[str, Any]] = [{"op": "remove", "record": r.to_dict()} for r in diff.remove]
    ops += [{"op": "change", "from": a.to_dict(), "record": b.to_dict()} for a, b in diff.change]
    ops += [{"op": "add", "record": r.to_dict()} for r in diff.add]
    return ops


def _already_done(op: dict[str, Any], live: list[Record]) -> bool:
    keys = {r: r for r in live}
    record = Record.from_dict(op["record"])
    if op["op"] == "remove":
        return not any(r.key == record.key for r in keys)
    return record in keys


async def _run_change(svc: Services, domain: Row, change: Row, *, resumed: bool) -> Row:
    """Apply a change's operations not applied yet; a provider refusal stops it there and
    leaves it `partial` (what was applied, what was not). Idempotent after a crash: an
    operation the live zone already shows is counted as applied, not sent again."""
    if change["status"] in DONE_CHANGE:
        return change
    diff = Diff.from_dict(orjson.loads(change["diff"]))
    applied: list[dict[str, Any]] = orjson.loads(change["applied"])
    host = dns_host(svc, bool(domain["livemode"]), domain["registrar"])
    ops = _ops(diff)[len(applied) :]
    # A resumed change may have sent its next operation before the crash: the live zone says.
    live = await read_zone(svc, domain) if applied or resumed else None
    error: str | None = None
    for i, op in enumerate(ops):
        if live is not None and _already_done(op, live):
            applied.append(op)
            continue
        record = Record.from_dict(op["record"])
        try:
            if op["op"] == "remove":
                await host.remove(domain["name"], record)
            elif op["op"] == "change":
                await host.replace(domain["name"], Record.from_dict(op["from"]), record)
            else:
                await host.add(domain["name"], record)
        except Ambiguous as exc:
            live = await read_zone(svc, domain)
            if _already_done(op, live):
                applied.append(op)
                continue
            error = exc.message
        except RegistrarError as exc:
            error = exc.message
        if error is not None:
            not_applied = ops[i:]
            return await _closed_change(svc, domain, change["id"], applied, not_applied, error)
        applied.append(op)
        await _set_change(svc, change["id"], applied=orjson.dumps(applied).decode())
    return await _closed_change(svc, domain, change["id"], applied, [], None)


async def _closed_change(svc: Services, domain: Row, change_id: str,
                         applied: list[dict[str, Any]], not_applied: list[dict[str, Any]],
                         error: str | None) -> Row:  # fmt: skip
    status = "applied" if error is None else "partial"

    def close(tx: SyncTransaction) -> Row:
        row = tx.fetch_one(
            "UPDATE dns_changes SET status = :s, applied = :a, not_applied = :n, error = :e,"
            " updated_at = :now WHERE id = :id AND status = 'applying' RETURNING *",
            {"s": status, "a": orjson.dumps(applied).decode(),
             "n": orjson.dumps(not_applied).decode(), "e": error, "now": now_us(),
             "id": change_id},
        )  # fmt: skip
        if row is None:  # closed by an earlier run
            found = tx.fetch_one("SELECT * FROM dns_changes WHERE id = :id", {"id": change_id})
            assert found is not None
            return found
        tx.execute("UPDATE domains SET dns_status = :s, dns_change_id = :c WHERE id = :d",
                   {"s": status, "c": change_id, "d": domain["id"]})  # fmt: skip
        record_event(tx, domain["tenant_id"], "dns.applied",
                     {"domain": domain["name"], "change_id": change_id, "status": status,
                      "applied": len(applied), "not_applied": len(not_applied)},
                     livemode=bool(domain["livemode"]))  # fmt: skip
        return row

    row = await svc.db.run_sync(close)
    if applied:
        await svc.jobs.enqueue(NewJob(VERIFY_JOB_TYPE, {"change_id": change_id}, "domains",
                                      domain["tenant_id"], unique_key=f"dns.verify:{change_id}",
                                      max_attempts=3))  # fmt: skip
    return row


def change_object(row: Row) -> dict[str, Any]:
    def ops(raw: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = orjson.loads(raw)
        return found

    return {
        "id": row["id"], "object": "dns_change", "status": row["status"],
        "diff": orjson.loads(row["diff"]), "applied": ops(row["applied"]),
        "not_applied": ops(row["not_applied"]), "missing": ops(row["missing"]),
        "error": row["error"], "execution_id": row["execution_id"],
        "created": int(row["created_at"]) // 1_000_000,
    }  # fmt: skip


async def apply_records_for(svc: Services, *, tenant_id: str, livemode: bool,
                            project_id: str | None, domain: str, upsert: list[dict[str, Any]],
                            execution_id: str) -> str:  # fmt: skip
    """Publish `upsert` on a domain the tenant holds, under the caller's approved execution
    (see the module docstring); returns the DNS change id."""
    existing = await svc.db.fetch_one(
        "SELECT * FROM dns_changes WHERE execution_id = :e", {"e": execution_id}
    )
    held = await held_or_404(svc, tenant_id, livemode, domain)
    if existing is not None:
        if existing["status"] == "applying":
            await _run_change(svc, held, existing, resumed=True)
        return str(existing["id"])
    records = parse_records(upsert, held["name"], "upsert")
    live = await read_zone(svc, held)
    diff = diff_records(live, merge_records(live, records))
    change, fresh = await _change_row(svc, tenant_id, livemode, held, execution_id, diff)
    await _run_change(svc, held, change, resumed=not fresh)
    return str(change["id"])


async def dns_change_status(svc: Services, change_id: str) -> dict[str, Any]:
    """`{"status", "missing", "applied", "not_applied", "error"}` of a DNS change; NotFound if
    there is no such change."""
    row = await svc.db.fetch_one("SELECT * FROM dns_changes WHERE id = :id", {"id": change_id})
    if row is None:
        raise NotFound("No such DNS change.", param="change_id")
    full = change_object(row)
    return {k: full[k] for k in ("status", "missing", "applied", "not_applied", "error")}


# -- verification --------------------------------------------------------------------------


def _nameserver(svc: Services) -> tuple[str, int]:
    configured = svc.settings.dns_verify_nameserver
    if configured:
        host, _, port = configured.rpartition(":")
        return host.strip("[]"), int(port)
    sandbox = None if svc.domains is None else svc.domains.sandbox
    if sandbox is None or not sandbox.dns.running:
        raise RuntimeError("no DNS server to verify test-mode zones against (set"
                           " TOOLCALLSTORE_DNS_VERIFY_NAMESERVER)")  # fmt: skip
    return sandbox.dns.host, sandbox.dns.port


async def _authoritative(domain: str) -> list[tuple[str, int]]:
    """A live domain's authoritative nameservers' addresses (the system resolver finds them)."""
    answer = await dns.asyncresolver.resolve(domain, "NS")
    hosts = [str(rdata.target).rstrip(".") for rdata in answer]
    out: list[tuple[str, int]] = []
    for host in hosts:
        try:
            found = await dns.asyncresolver.resolve(host, "A")
        except dns.exception.DNSException:
            continue
        out.extend((str(rdata.address), 53) for rdata in found)
    return out


def _matches(record: Record, rrset: Any) -> bool:
    if rrset is None or rrset.ttl != record.ttl:
        return False
    if record.type == "TXT":
        want = record.value.encode()
        return any(b"".join(rdata.strings) == want for rdata in rrset)
    expected = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(record.type),
                                   rdata_text(record))  # fmt: skip
    return any(rdata == expected for rdata in rrset)


async def missing_records(servers: list[tuple[str, int]], domain: str,
                          records: list[Record]) -> list[Record]:  # fmt: skip
    """The records that do not (yet) answer as written at every one of `servers`."""
    missing = []
    answers: dict[tuple[str, str, tuple[str, int]], Any] = {}
    for record in records:
        qname = record.fqdn(domain)
        ok = True
        for server in servers:
            key = (qname, record.type, server)
            if key not in answers:
                query = dns.message.make_query(qname, record.type, use_edns=0, payload=4096)
                try:
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        query, server[0], timeout=2.0, port=server[1]
                    )
                    rtype = dns.rdatatype.from_text(record.type)
                    answers[key] = next((rr for rr in response.answer if rr.rdtype == rtype),
                                        None)  # fmt: skip
                except (dns.exception.DNSException, OSError):
                    answers[key] = None
            if not _matches(record, answers[key]):
                ok = False
        if not ok:
            missing.append(record)
    return missing


async def verify_change(svc: Services, change_id: str) -> dict[str, Any]:
    """The `dns.verify` job: query the authoritative nameservers until every record the change
    applied answers as written, or the timeout passes (from the change's creation, so a rerun
    after a crash does not start the clock again)."""
    row = await svc.db.fetch_one("SELECT * FROM dns_changes WHERE id = :id", {"id": change_id})
    if row is None or row["status"] in ("verified", "failed"):
        return {"change_id": change_id, "skipped": True}
    domain = await svc.db.fetch_one("SELECT * FROM domains WHERE id = :id",
                                    {"id": row["domain_id"]})  # fmt: skip
    assert domain is not None
    wanted = [Record.from_dict(op["record"]) for op in orjson.loads(row["applied"])
              if op["op"] != "remove"]  # fmt: skip
    if bool(row["livemode"]):
        servers = await _authoritative(domain["name"])
    else:
        servers = [_nameserver(svc)]
    deadline = int(row["created_at"]) / 1_000_000 + svc.settings.dns_verify_timeout_seconds
    interval = svc.settings.dns_verify_interval_ms / 1000
    while True:
        missing = await missing_records(servers, domain["name"], wanted) if servers else wanted
        if not missing or time.time() >= deadline or svc.stopping.is_set():
            break
        await _set_change(svc, change_id, missing=_dump(missing))
        await asyncio.sleep(min(interval, max(0.0, deadline - time.time())))
    if missing and not time.time() >= deadline:
        raise RuntimeError("stopping before the records were verified")  # a rerun continues
    status = "failed" if missing else "verified"
    final_status = status if row["status"] == "applied" else row["status"]

    def close(tx: SyncTransaction) -> None:
        tx.execute(
            "UPDATE dns_changes SET status = :s, missing = :m, updated_at = :now WHERE id = :id",
            {"s": status if row["status"] == "applied" else row["status"], "m": _dump(missing),
             "now": now_us(), "id": change_id},
        )  # fmt: skip
        tx.execute("UPDATE domains SET dns_status = :s WHERE id = :d AND dns_change_id = :c",
                   {"s": final_status, "d": domain["id"], "c": change_id})  # fmt: skip
        event = "dns.verify_failed" if missing else "dns.verified"
        record_event(tx, domain["tenant_id"], event,
                     {"domain": domain["name"], "change_id": change_id,
                      "missing": [r.to_dict() for r in missing]},
                     livemode=bool(domain["livemode"]))  # fmt: skip

    await svc.db.run_sync(close)
    return {"change_id": change_id, "status": status, "missing": len(missing)}


def _dump(records: list[Record]) -> str:
    return orjson.dumps([r.to_dict() for r in records]).decode()


__all__ = [
    "APIError",
    "apply_records_for",
    "dns_change_status",
    "find_held_domain",
]
