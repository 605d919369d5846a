"""Stateful fakes of OpenProvider (REST v1beta) and Porkbun (API v3) on their wire formats
(reference/providers.md B5, B6), sharing one world: a name registered at one is taken at the
other. Their zones are published on the sandbox's loopback DNS server (`dns_server.py`).

    /openprovider/v1beta/...   auth/login, domains/check, customers, domains, dns/zones/...
    /porkbun/api/json/v3/...   ping, pricing/get, domain/checkDomain|create|listAll|updateNs,
                               dns/create|edit|delete|retrieve

Fake-only controls, for tests and demos (each fake under its own prefix):

    POST /_faults {"fault", "path"?, "method"?, "times"?, "after"?, "delay_ms"?}   add a rule
    DELETE /_faults                                    clear the rules
    GET /_log                                          every request received: [method, path]
    POST /_taken {"name"}                              someone else registers `name`
    POST /_expire_tokens                               (OpenProvider) cached tokens go stale

Faults: `down` (503; OpenProvider `maintenance: true`), `timeout_after_acting` (act, then
answer only after `delay_ms`, 5000 by default), `code_196` (OpenProvider's auth failure under
HTTP 200), `error_under_200` (OpenProvider `code` != 0 / Porkbun `status: ERROR`, both under
200), `rate_limit` (429 with Retry-After), `taken` (the create answers that the name is
someone else's). A rule hits requests at `path` (every path when
empty; a path ending in "/" is a prefix) and of `method` (any when empty), skipping the first
`after` of them, `times` times (0: always).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.domains.records import Record, relative_name, txt_strings
from toolcallstore.sandbox.dns_server import NAMESERVERS, DnsServer

OP_PRICES = {"com": Decimal("8.06"), "net": Decimal("10.50"), "org": Decimal("9.20"),
             "dev": Decimal("12.00"), "io": Decimal("35.00"), "test": Decimal("5.00")}  # fmt: skip
PB_PRICES = {"com": Decimal("9.68"), "net": Decimal("11.48"), "org": Decimal("10.74"),
             "dev": Decimal("12.87"), "io": Decimal("39.50"), "test": Decimal("5.50")}  # fmt: skip
PREMIUM_PRICE = Decimal("120.00")
FAULTS = ("down", "timeout_after_acting", "code_196", "error_under_200", "rate_limit", "taken")
DEFAULT_DELAY_MS = 5000
LIMIT_TEXT = "1 out of 1 checks within 10 seconds used."


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


@dataclass
class Rule:
    fault: str
    path: str = ""
    method: str = ""
    times: int = 0
    after: int = 0
    delay_ms: int = DEFAULT_DELAY_MS
    seen: int = 0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        hit = (
            path == self.path
            or not self.path
            or (self.path.endswith("/") and path.startswith(self.path))
        )
        if not hit or (self.method and self.method != method):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times and self.hits >= self.times):
            return False
        self.hits += 1
        return True


@dataclass
class FakeDomain:
    name: str
    owner: str  # "openprovider", "porkbun" or "elsewhere"
    id: int
    created: float
    years: int
    nameservers: list[str]

    @property
    def expires(self) -> str:
        end = time.gmtime(self.created + self.years * 365 * 86400)
        return time.strftime("%Y-%m-%d %H:%M:%S", end)


@dataclass
class FakeRecord:
    id: int
    record: Record


@dataclass
class World:
    """What both fakes share: registrations, zones, and the DNS server publishing them."""

    domains: dict[str, FakeDomain] = field(default_factory=dict)
    zones: dict[str, list[FakeRecord]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100_000_001))
    creates: dict[str, list[str]] = field(default_factory=dict)  # registrar -> names created

    def __post_init__(self) -> None:
        self.dns = DnsServer(self.lookup)

    def lookup(self, domain: str) -> tuple[str, list[Record]] | None:
        zone = self.zones.get(domain)
        if zone is None:
            return None
        return domain, [item.record for item in zone]

    def register(self, name: str, owner: str, years: int, nameservers: list[str]) -> FakeDomain:
        domain = FakeDomain(name, owner, next(self.ids), time.time(), years, nameservers)
        self.domains[name] = domain
        self.creates.setdefault(owner, []).append(name)
        return domain


class Fake:
    """The request log and fault rules of one fake."""

    provider = ""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rules: list[Rule] = []
        self.log: list[list[str]] = []

    def controls(self) -> list[Route]:
        return [
            Route("/_faults", self.add_fault, methods=["POST"]),
            Route("/_faults", self.clear_faults, methods=["DELETE"]),
            Route("/_log", self.get_log, methods=["GET"]),
            Route("/_taken", self.taken, methods=["POST"]),
        ]

    async def add_fault(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body.get("fault") not in FAULTS:
            return _json({"error": f"fault must be one of {', '.join(FAULTS)}"}, 400)
        known = {"fault", "path", "method", "times", "after", "delay_ms"}
        self.rules.append(Rule(**{k: v for k, v in body.items() if k in known}))
        return _json({"rules": len(self.rules)})

    async def clear_faults(self, request: Request) -> Response:
        self.rules.clear()
        return _json({"rules": 0})

    async def get_log(self, request: Request) -> Response:
        return _json({"requests": self.log, "creates": self.world.creates.get(self.provider, [])})

    async def taken(self, request: Request) -> Response:
        name = str(orjson.loads(await request.body())["name"]).lower()
        self.world.register(name, "elsewhere", 1, [])
        return _json({"name": name, "owner": "elsewhere"})

    def fault_for(self, method: str, path: str) -> Rule | None:
        self.log.append([method, path])
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return None


def _split(name: str) -> tuple[str, str]:
    label, _, extension = name.partition(".")
    return label, extension


def _price(table: dict[str, Decimal], name: str) -> tuple[Decimal, bool]:
    premium = _split(name)[0].startswith("premium")
    regular = table.get(_split(name)[1], Decimal("15.00"))
    return (PREMIUM_PRICE if premium else regular), premium


class OpenProviderFake(Fake):
    provider = "openprovider"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.tokens: set[str] = set()
        self.handles: dict[str, dict[str, Any]] = {}

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE"]
        routes = [*self.controls(), Route("/_expire_tokens", self.expire, methods=["POST"]),
                  Route("/{path:path}", self.handle, methods=methods)]  # fmt: skip
        return Starlette(routes=routes)

    async def expire(self, request: Request) -> Response:
        self.tokens.clear()
        return _json({"expired": True})

    @staticmethod
    def ok(data: Any) -> Response:
        return _json({"code": 0, "desc": "", "data": data, "warnings": [], "maintenance": False})

    @staticmethod
    def error(code: int, desc: str, status: int = 400, **extra: Any) -> Response:
        return _json({"code": code, "desc": desc, "data": "", **extra}, status)

    async def handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        rule = self.fault_for(request.method, path)
        if rule is not None and rule.fault != "timeout_after_acting":
            return self.faulted(rule)
        if path != "/auth/login":
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return self.error(196, "Authentication/Authorization Failed", 401)
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return self.error(10, "Invalid JSON body")
        answer = self.route(request.method, path, body, dict(request.query_params))
        if rule is not None:  # acted; the answer comes too late for the client
            await asyncio.sleep(rule.delay_ms / 1000)
        return answer

    def faulted(self, rule: Rule) -> Response:
        if rule.fault == "down":
            return self.error(4005, "Service is under maintenance", 503, maintenance=True)
        if rule.fault == "code_196":
            return self.error(196, "Authentication/Authorization Failed", 200)
        if rule.fault == "taken":
            return self.error(346, "Domain already exists")
        if rule.fault == "rate_limit":
            return _json({"code": 429, "desc": "Too many requests", "data": ""}, 429,
                         {"Retry-After": "1"})  # fmt: skip
        return self.error(399, "Internal error, please try again later", 200)

    def route(self, method: str, path: str, body: dict[str, Any], query: dict[str, str]
              ) -> Response:  # fmt: skip
        parts = path.strip("/").split("/")
        if (method, path) == ("POST", "/auth/login"):
            if not body.get("username") or body.get("password") in (None, "", "wrong"):
                return self.error(196, "Authentication/Authorization Failed", 401)
            token = secrets.token_hex(16)
            self.tokens.add(token)
            return self.ok({"token": token, "reseller_id": 123456})
        if (method, path) == ("POST", "/domains/check"):
            return self.check(body)
        if (method, path) == ("POST", "/customers"):
            handle = f"XX{len(self.handles) + 100000}-XX"
            self.handles[handle] = body
            return self.ok({"handle": handle})
        if (method, path) == ("POST", "/domains"):
            return self.create(body)
        if (method, path) == ("GET", "/domains"):
            return self.list_domains(query)
        if parts[:2] == ["dns", "zones"]:
            return self.dns(method, parts[2:], body, query)
        return self.error(404, f"No route {method} {path}", 404)

    def check(self, body: dict[str, Any]) -> Response:
        results = []
        for item in body.get("domains", []):
            name = f"{item.get('name', '')}.{item.get('extension', '')}".lower()
            price, premium = _price(OP_PRICES, name)
            regular = OP_PRICES.get(item.get("extension", ""), Decimal("15.00"))
            taken = name in self.world.domains
            results.append({
                "domain": name, "status": "active" if taken else "free",
                "reason": "Domain exists" if taken else "", "is_premium": premium,
                "premium": {"currency": "USD", "price": {"create": float(price) if premium else 0}},
                "price": {"product": {"currency": "USD", "price": float(regular)},
                          "reseller": {"currency": "USD", "price": float(regular)}},
                "claim_key": "", "whois": "",
            })  # fmt: skip
        return self.ok({"results": results})

    def create(self, body: dict[str, Any]) -> Response:
        domain = body.get("domain") or {}
        name = f"{domain.get('name', '')}.{domain.get('extension', '')}".lower()
        if name in self.world.domains:
            return self.error(346, "Domain already exists")
        if body.get("owner_handle") not in self.handles:
            return self.error(807, "Invalid owner handle")
        ns = [str(n.get("name")) for n in body.get("name_servers") or []] or list(NAMESERVERS)
        fake = self.world.register(name, self.provider, int(body.get("period") or 1), ns)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(fake.created))
        return self.ok({"id": fake.id, "status": "ACT", "auth_code": "12345678",
                        "activation_date": created, "expiration_date": fake.expires,
                        "renewal_date": fake.expires})  # fmt: skip

    def list_domains(self, query: dict[str, str]) -> Response:
        mine = [d for d in self.world.domains.values() if d.owner == self.provider]
        if "full_name" in query:
            mine = [d for d in mine if d.name == query["full_name"].lower()]
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
        rows = [{"id": d.id, "domain": dict(zip(("name", "extension"), _split(d.name),
                                                strict=True)),
                 "status": "ACT", "expiration_date": d.expires,
                 "name_servers": [{"name": n, "seq_nr": i + 1}
                                  for i, n in enumerate(d.nameservers)]}
                for d in mine[offset: offset + limit]]  # fmt: skip
        return self.ok({"results": rows, "total": len(mine)})

    def dns(self, method: str, rest: list[str], body: dict[str, Any], query: dict[str, str]
            ) -> Response:  # fmt: skip
        if not rest and method == "POST":
            domain = body.get("domain") or {}
            name = f"{domain.get('name', '')}.{domain.get('extension', '')}".lower()
            owned = self.world.domains.get(name)
            if owned is None or owned.owner != self.provider:
                return self.error(871, "Domain is not in your account", 400)
            if name in self.world.zones:
                return self.error(817, "Zone already exists", 400)
            self.world.zones[name] = []
            for raw in body.get("records") or []:
                self.world.zones[name].append(FakeRecord(next(self.world.ids),
                                                         self.read_in(raw, name)))  # fmt: skip
            return self.ok({"success": True})
        if not rest:
            return self.error(404, "No route", 404)
        name = rest[0].lower()
        zone = self.world.zones.get(name)
        owned = self.world.domains.get(name)
        if zone is None or owned is None or owned.owner != self.provider:
            return self.error(872, "Zone not found", 404)
        if len(rest) == 2 and rest[1] == "records" and method == "GET":
            offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
            rows = [self.read_out(item, name) for item in zone]
            return self.ok({"results": rows[offset : offset + limit], "total": len(rows)})
        if len(rest) != 1:
            return self.error(404, "No route", 404)
        if method == "GET":
            rows = [self.read_out(item, name) for item in zone]
            return self.ok({"name": name, "type": "master", "records": rows})
        if method == "DELETE":
            del self.world.zones[name]
            return self.ok({"success": True})
        return self.update(name, zone, body.get("records") or {})

    def update(self, name: str, zone: list[FakeRecord], change: dict[str, Any]) -> Response:
        for raw in change.get("remove") or []:
            found = self.find(zone, self.read_in(raw, name))
            if found is None:
                return self.error(820, "Record to remove does not exist")
            zone.remove(found)
        for item in change.get("update") or []:
            found = self.find(zone, self.read_in(item.get("original_record") or {}, name))
            if found is None:
                return self.error(820, "Record to update does not exist")
            found.record = self.read_in(item.get("record") or {}, name)
        for raw in change.get("add") or []:
            record = self.read_in(raw, name)
            if self.find(zone, record) is not None:
                return self.error(819, "Record already exists")
            if int(raw.get("ttl") or 0) < 600:
                return self.error(818, "TTL must be at least 600")
            zone.append(FakeRecord(next(self.world.ids), record))
        return self.ok({"success": True})

    @staticmethod
    def find(zone: list[FakeRecord], record: Record) -> FakeRecord | None:
        for item in zone:
            if item.record.key == record.key:
                return item
        return None

    @staticmethod
    def read_in(raw: dict[str, Any], domain: str) -> Record:
        rtype = str(raw.get("type", "")).upper()
        prio = int(raw.get("prio") or 0) if rtype in ("MX", "SRV") else None
        return Record(relative_name(str(raw.get("name", "")), domain), rtype,
                      str(raw.get("value", "")), int(raw.get("ttl") or 0), prio)  # fmt: skip

    @staticmethod
    def read_out(item: FakeRecord, domain: str) -> dict[str, Any]:
        record = item.record
        value = record.value
        if record.type == "TXT":  # the trap: TXT values come back quoted
            value = " ".join(f'"{s}"' for s in txt_strings(value))
        return {"name": record.fqdn(domain), "type": record.type, "value": value,
                "ttl": record.ttl, "prio": record.priority or 0, "creation_date": "",
                "modification_date": ""}  # fmt: skip


class PorkbunFake(Fake):
    provider = "porkbun"

    def app(self) -> Starlette:
        routes = [*self.controls(), Route("/{path:path}", self.handle, methods=["POST"])]
        return Starlette(routes=routes)

    @staticmethod
    def error(message: str, status: int = 400, headers: dict[str, str] | None = None
              ) -> Response:  # fmt: skip
        return _json({"status": "ERROR", "message": message}, status, headers)

    async def handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        rule = self.fault_for("POST", path)
        if rule is not None and rule.fault != "timeout_after_acting":
            if rule.fault == "down":
                return self.error("Service temporarily unavailable", 503)
            if rule.fault == "rate_limit":
                return self.error("Rate limit exceeded: 1 out of 1 checks within 10 seconds"
                                  " used.", 429, {"Retry-After": "10"})  # fmt: skip
            if rule.fault == "taken":
                return self.error("Domain is not available.")
            return self.error("An unexpected error occurred.", 200)
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return self.error("Invalid JSON.")
        if path != "/pricing/get" and (
            not str(body.get("apikey", "")).startswith("pk1_")
            or body.get("secretapikey") in (None, "", "sk1_bad")
        ):
            return self.error("Invalid API key. (002)")  # fmt: skip
        answer = self.route(path.strip("/").split("/"), body)
        if rule is not None:
            await asyncio.sleep(rule.delay_ms / 1000)
        return answer

    def route(self, parts: list[str], body: dict[str, Any]) -> Response:
        ok = {"status": "SUCCESS"}
        if parts == ["ping"]:
            return _json({**ok, "yourIp": "127.0.0.1"})
        if parts == ["pricing", "get"]:
            pricing = {tld: {"registration": str(p), "renewal": str(p), "transfer": str(p)}
                       for tld, p in PB_PRICES.items()}  # fmt: skip
            return _json({**ok, "pricing": pricing})
        if parts[:2] == ["domain", "checkDomain"] and len(parts) == 3:
            return self.check(parts[2].lower())
        if parts[:2] == ["domain", "create"] and len(parts) == 3:
            return self.create(parts[2].lower(), body)
        if parts == ["domain", "listAll"]:
            mine = [d for d in self.world.domains.values() if d.owner == self.provider]
            start = int(body.get("start") or 0)
            rows = [{"domain": d.name, "status": "ACTIVE", "tld": _split(d.name)[1],
                     "createDate": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.created)),
                     "expireDate": d.expires, "autoRenew": 0, "notLocal": 0}
                    for d in mine[start: start + 1000]]  # fmt: skip
            return _json({**ok, "domains": rows})
        if parts[:2] == ["domain", "updateNs"] and len(parts) == 3:
            owned = self.world.domains.get(parts[2].lower())
            if owned is None or owned.owner != self.provider:
                return self.error("Domain is not opted in to API access.")
            owned.nameservers = [str(n) for n in body.get("ns") or []]
            return _json(ok)
        if parts[0] == "dns" and len(parts) >= 3:
            return self.dns(parts[1], parts[2].lower(), parts[3:], body)
        return self.error("Invalid endpoint.", 404)

    def check(self, name: str) -> Response:
        price, premium = _price(PB_PRICES, name)
        regular = PB_PRICES.get(_split(name)[1], Decimal("15.00"))
        avail = name not in self.world.domains
        return _json({"status": "SUCCESS", "response": {
            "avail": "yes" if avail else "no", "type": "registration", "price": str(price),
            "firstYearPromo": "no", "regularPrice": str(price),
            "premium": "yes" if premium else "no", "minDuration": 1,
            "additional": {"renewal": {"type": "renewal", "price": str(regular),
                                       "regularPrice": str(regular)},
                           "transfer": {"type": "transfer", "price": str(regular),
                                        "regularPrice": str(regular)}}},
            "limits": {"TTL": 10, "limit": 1, "used": 1,
                       "naturalLanguage": LIMIT_TEXT}})  # fmt: skip

    def create(self, name: str, body: dict[str, Any]) -> Response:
        if name in self.world.domains:
            return self.error("Domain is not available.")
        if body.get("agreeToTerms") != "yes":
            return self.error("You must agree to the terms.")
        price, _ = _price(PB_PRICES, name)
        if body.get("cost") != int(price * 100):
            return self.error(f"Cost mismatch: the price is {int(price * 100)} pennies.")
        fake = self.world.register(name, self.provider, 1, list(NAMESERVERS))
        self.world.zones[name] = []
        return _json({"status": "SUCCESS", "domain": name, "cost": int(price * 100),
                      "orderId": fake.id})  # fmt: skip

    def dns(self, action: str, name: str, rest: list[str], body: dict[str, Any]) -> Response:
        owned = self.world.domains.get(name)
        zone = self.world.zones.get(name)
        if owned is None or owned.owner != self.provider or zone is None:
            return self.error("Invalid domain.")
        if action == "retrieve":
            rows = [self.read_out(item, name) for item in zone]
            if rest:
                rows = [row for row in rows if row["id"] == rest[0]]
            return _json({"status": "SUCCESS", "cloudflare": "enabled", "records": rows})
        if action == "create":
            record = self.read_in(body, name)
            if record.ttl < 600:
                return self.error("TTL must be at least 600.")
            item = FakeRecord(next(self.world.ids), record)
            zone.append(item)
            return _json({"status": "SUCCESS", "id": item.id})
        found = [item for item in zone if rest and str(item.id) == rest[0]]
        if not found:
            return self.error("Invalid record id.")
        if action == "delete":
            zone.remove(found[0])
            return _json({"status": "SUCCESS"})
        if action == "edit":
            found[0].record = self.read_in(body, name)
            return _json({"status": "SUCCESS"})
        return self.error("Invalid endpoint.", 404)

    @staticmethod
    def read_in(body: dict[str, Any], domain: str) -> Record:
        rtype = str(body.get("type", "")).upper()
        prio = int(body.get("prio") or 0) if rtype in ("MX", "SRV") else None
        return Record(relative_name(str(body.get("name", "")), domain), rtype,
                      str(body.get("content", "")), int(body.get("ttl") or 600), prio)  # fmt: skip

    @staticmethod
    def read_out(item: FakeRecord, domain: str) -> dict[str, Any]:
        record = item.record
        return {"id": str(item.id), "name": record.fqdn(domain), "type": record.type,
                "content": record.value, "ttl": str(record.ttl),
                "prio": None if record.priority is None else str(record.priority),
                "notes": ""}  # fmt: skip


@dataclass
class DomainSandbox:
    world: World = field(default_factory=World)

    def __post_init__(self) -> None:
        self.openprovider = OpenProviderFake(self.world)
        self.porkbun = PorkbunFake(self.world)

    @property
    def dns(self) -> DnsServer:
        return self.world.dns
