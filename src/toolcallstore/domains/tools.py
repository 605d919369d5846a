"""The domain tools: `domains.check` (free, low risk), `domains.register` (high risk, a job)
and `dns.apply` (high risk: the quote is the diff against the live zone, the approval binds to
it), plus the `dns.verify` job that follows every apply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolcallstore.controls.pricing import Estimate, Pricing
from toolcallstore.domains import service
from toolcallstore.domains.records import (
    MAX_RECORDS,
    MAX_TTL,
    MIN_TTL,
    TYPES,
    check_domain_name,
    parse_records,
)
from toolcallstore.queue.worker import JobContext, Registry
from toolcallstore.site.fields import body_schema
from toolcallstore.tools.registry import Outcome, QuoteContext, Tool, ToolCall, ToolRegistry
from toolcallstore.validation import Field, invalid, validate

if TYPE_CHECKING:
    from toolcallstore.services import Services

MAX_CHECK_NAMES = 50
DOMAINS_QUEUE = "domains"
MAX_YEARS = 10

CHECK_PARAMS = {"names": Field(list, required=True, max_items=MAX_CHECK_NAMES)}
CONTACT_FIELDS = {
    "first_name": Field(str, required=True, max_length=100),
    "last_name": Field(str, required=True, max_length=100),
    "email": Field(str, required=True, max_length=254),
    "phone": Field(str, required=True, max_length=40),
    "street": Field(str, required=True, max_length=200),
    "city": Field(str, required=True, max_length=100),
    "zipcode": Field(str, required=True, max_length=20),
    "country": Field(str, required=True, max_length=2),
    "company": Field(str, max_length=200),
    "state": Field(str, max_length=100),
}
REGISTER_PARAMS = {
    "name": Field(str, required=True, max_length=253),
    "years": Field(int),
    "contact": Field(dict, required=True),
    "nameservers": Field(list, max_items=13),
}
DNS_DOMAIN = {"domain": Field(str, required=True, max_length=253)}
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "value"],
    "properties": {
        "name": {"type": "string", "description": "relative to the domain; '@' for the apex"},
        "type": {"enum": list(TYPES)},
        "value": {"description": "address, target host or text (TXT: a string, or a list of"
                  " strings of at most 255 bytes)"},
        "ttl": {"type": "integer", "minimum": MIN_TTL, "maximum": MAX_TTL},
        "priority": {"type": "integer", "minimum": 0, "maximum": 65535},
    },
}  # fmt: skip
RECORDS_SCHEMA: dict[str, Any] = {"type": "array", "items": RECORD_SCHEMA, "maxItems": MAX_RECORDS}
DNS_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["domain", "records"],
    "properties": {"domain": {"type": "string", "maxLength": 253}, "records": RECORDS_SCHEMA},
}  # fmt: skip


def parse_check(params: dict[str, Any]) -> dict[str, Any]:
    clean = validate(params, CHECK_PARAMS)
    names = [check_domain_name(n, f"names[{i}]") for i, n in enumerate(clean["names"])]
    if not names:
        raise invalid("names", "Send at least one name.")
    return {"names": list(dict.fromkeys(names))}


def parse_register(params: dict[str, Any]) -> dict[str, Any]:
    clean = validate(params, REGISTER_PARAMS)
    clean["name"] = check_domain_name(clean["name"])
    years = clean.setdefault("years", 1)
    if not 1 <= years <= MAX_YEARS:
        raise invalid("years", f"'years' must be 1-{MAX_YEARS}.")
    contact = validate(clean["contact"], CONTACT_FIELDS)
    if "@" not in contact["email"]:
        raise invalid("contact.email", "'contact.email' must be an email address.")
    if len(contact["country"]) != 2 or not contact["country"].isalpha():
        raise invalid("contact.country", "'contact.country' is a two-letter ISO code (NL, US).")
    contact["country"] = contact["country"].upper()
    clean["contact"] = contact
    if "nameservers" in clean:
        hosts = []
        for i, ns in enumerate(clean["nameservers"]):
            hosts.append(check_domain_name(ns, f"nameservers[{i}]"))
        clean["nameservers"] = hosts
    return clean


def parse_dns(params: dict[str, Any]) -> dict[str, Any]:
    clean = validate({k: v for k, v in params.items() if k != "records"}, DNS_DOMAIN)
    domain = check_domain_name(clean["domain"], "domain")
    if "records" not in params:
        raise invalid("records", "Missing required parameter 'records'.", "missing_parameter")
    records = parse_records(params["records"], domain)
    return {"domain": domain, "records": [r.to_dict() for r in records]}


def _zero(params: dict[str, Any], pricing: Pricing) -> Estimate:
    return Estimate(0, 0, 0, "openprovider", [])


def register_domain_tools(tools: ToolRegistry, registry: Registry, svc: Services) -> None:
    pricing = tools.pricing

    async def check(call: ToolCall) -> Outcome:
        registrar, found = await service.check_availability(svc, call.livemode,
                                                            call.params["names"])  # fmt: skip
        data = [service.availability_object(f, pricing) for f in found]
        return Outcome({"object": "list", "data": data}, 0, 0, registrar)

    async def register_estimate(ctx: QuoteContext, params: dict[str, Any],
                                prices: Pricing) -> Estimate:  # fmt: skip
        return await service.registration_estimate(svc, ctx.livemode, params, prices)

    async def dns_estimate(ctx: QuoteContext, params: dict[str, Any],
                           prices: Pricing) -> Estimate:  # fmt: skip
        return await service.dns_estimate(
            svc, ctx.livemode, ctx.tenant_id, params, prices, key_project_id=ctx.key_project_id
        )

    def register_price(params: dict[str, Any], prices: Pricing) -> Estimate:
        return prices.for_tool(service.REGISTER_TOOL).quote()  # the fee alone; quotes are live

    def dns_price(params: dict[str, Any], prices: Pricing) -> Estimate:
        return prices.for_tool(service.DNS_TOOL).quote(max(1, len(params["records"])))

    async def register(call: ToolCall) -> Outcome:
        return await service.register_domain(svc, call)

    async def apply(call: ToolCall) -> Outcome:
        return await service.apply_dns(svc, call)

    def describe(tool: str, text: str) -> Any:
        def inner() -> dict[str, Any]:
            entry = pricing.for_tool(tool)
            return {"basis": entry.basis, "description": text.format(
                markup=entry.markup, fee=entry.fee)}  # fmt: skip

        return inner

    tools.register(Tool(
        name=service.CHECK_TOOL,
        description="Availability and our prices (first year, renewal, premium flagged) of up"
        f" to {MAX_CHECK_NAMES} domain names. POST /v1/domains/check.",
        scope="domains:check", risk="low", billable=False, irreversible=False, mode="sync",
        parse_params=parse_check, price=_zero, execute=check,
        params_doc={"names": f"list of domain names, at most {MAX_CHECK_NAMES}"},
        params_schema=body_schema(CHECK_PARAMS), timeout_s=60.0,
    ))  # fmt: skip
    tools.register(Tool(
        name=service.REGISTER_TOOL,
        description="Register a domain (OpenProvider, Porkbun as failover). High risk: a human"
        " approves the quote; runs as a job. POST /v1/domains.",
        scope="domains:register", risk="high", billable=True, irreversible=True, mode="job",
        parse_params=parse_register, price=register_price, execute=register,
        params_doc={"name": "the domain", "years": "1-10 (default 1)",
                    "contact": "registrant: first_name, last_name, email, phone, street, city,"
                    " zipcode, country (ISO 2), company?, state?",
                    "nameservers": "optional host names"},
        params_schema=body_schema(REGISTER_PARAMS), timeout_s=300.0,
        estimate_live=register_estimate,
        describe_price=describe(service.REGISTER_TOOL, "the registrar's price for the name and"
                                " years x (1 + {markup}) + {fee} USD; quoted live"),
    ))  # fmt: skip
    tools.register(Tool(
        name=service.DNS_TOOL,
        description="Set a domain's DNS records to the given set. The quote shows the diff"
        " against the live zone; the approval is bound to it. PUT /v1/domains/{name}/dns.",
        scope="dns:write", risk="high", billable=True, irreversible=False, mode="sync",
        parse_params=parse_dns, price=dns_price, execute=apply,
        params_doc={"domain": "a domain held here", "records": "the desired record set:"
                    " {name, type (A AAAA CNAME MX TXT SRV CAA), value, ttl 600-86400,"
                    " priority (MX, SRV)}"},
        params_schema=DNS_SCHEMA, timeout_s=120.0,
        estimate_live=dns_estimate,
        describe_price=describe(service.DNS_TOOL, "{fee} USD per record added, removed or"
                                " changed (what the provider applied)"),
    ))  # fmt: skip

    async def verify(ctx: JobContext) -> dict[str, Any]:
        return await service.verify_change(svc, ctx.job.payload["change_id"])

    registry.register(service.VERIFY_JOB_TYPE, verify, queue=DOMAINS_QUEUE, max_attempts=3)
