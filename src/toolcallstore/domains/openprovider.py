"""OpenProvider REST v1beta (reference/providers.md B5): the primary registrar and DNS host.

Every answer is an envelope `{code, desc, data, maintenance}`; `code` is checked whatever the
HTTP status (bad credentials come back as code 196 under 401, 500 or even 200). The login token
is cached per (base URL, user) and renewed once on 401 or code 196. Writes use relative record
names ("" for the apex), reads return FQDNs and may quote TXT values.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from toolcallstore.domains.base import (
    Ambiguous,
    Availability,
    Contact,
    HeldDomain,
    NothingDone,
    Refused,
)
from toolcallstore.domains.records import Record, relative_name

NAME = "openprovider"
AUTH_FAILED = 196
TAKEN_CODES = frozenset({346, 314})  # "domain already exists" / "not available"
TOKEN_TTL_S = 12 * 3600  # Openprovider's own client caches tokens for 12 h
PAGE = 500


@dataclass
class TokenCache:
    """Login tokens per (base URL, user), shared by every adapter of a process."""

    tokens: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    logins: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def split_name(domain: str) -> dict[str, str]:
    label, _, extension = domain.partition(".")
    return {"name": label, "extension": extension}


def _usd(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


class OpenProvider:
    name = NAME

    def __init__(self, http: httpx.AsyncClient, base_url: str, username: str, password: str,
                 tokens: TokenCache, timeout_s: float) -> None:  # fmt: skip
        self.http = http
        self.base = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.tokens = tokens
        self.timeout = timeout_s

    # -- transport -------------------------------------------------------------------------

    async def _token(self, *, renew: bool = False) -> str:
        key = (self.base, self.username)
        async with self.tokens.lock:
            cached = self.tokens.tokens.get(key)
            if cached is not None and not renew and cached[1] > time.monotonic():
                return cached[0]
            body = {"username": self.username, "password": self.password, "ip": "0.0.0.0"}
            data = await self._send("POST", "/auth/login", body, None, write=False, token=None)
            token = str(data["token"])
            self.tokens.tokens[key] = (token, time.monotonic() + TOKEN_TTL_S)
            self.tokens.logins += 1
            return token

    async def _call(self, method: str, path: str, body: Any = None, params: Any = None, *,
                    write: bool = False, idempotency_key: str | None = None) -> Any:  # fmt: skip
        token = await self._token()
        try:
            return await self._send(method, path, body, params, write=write, token=token,
                                    idempotency_key=idempotency_key)  # fmt: skip
        except _AuthExpired:
            token = await self._token(renew=True)
            return await self._send(method, path, body, params, write=write, token=token,
                                    idempotency_key=idempotency_key)  # fmt: skip

    async def _send(self, method: str, path: str, body: Any, params: Any, *, write: bool,
                    token: str | None, idempotency_key: str | None = None) -> Any:  # fmt: skip
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if idempotency_key:
            headers["x-idempotency-key"] = idempotency_key
        try:
            response = await self.http.request(method, self.base + path, json=body, params=params,
                                               headers=headers, timeout=self.timeout)  # fmt: skip
        except httpx.ConnectError as exc:
            raise NothingDone(NAME, f"cannot connect ({type(exc).__name__})") from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            if write:
                raise Ambiguous(NAME, f"no answer to {method} {path} ({type(exc).__name__})"
                                ) from None  # fmt: skip
            raise NothingDone(NAME, f"no answer ({type(exc).__name__})") from None
        return self._judge(response, write=write, login=token is None)

    @staticmethod
    def _judge(response: httpx.Response, *, write: bool, login: bool) -> Any:
        """The envelope's data, or the error that says what the provider did."""
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            if write and response.status_code in (502, 504):
                raise Ambiguous(NAME, f"HTTP {response.status_code} from a gateway")
            raise NothingDone(NAME, f"HTTP {response.status_code} without an envelope")
        code = envelope.get("code")
        desc = str(envelope.get("desc") or "")[:300]
        if code == AUTH_FAILED or response.status_code == 401:
            if login:
                raise NothingDone(NAME, f"login refused (code {code}): {desc}")
            raise _AuthExpired()
        if response.status_code == 429:
            retry = response.headers.get("retry-after")
            raise NothingDone(NAME, f"rate limited: {desc}", retry_after=retry)
        if envelope.get("maintenance") or response.status_code >= 500:
            raise NothingDone(NAME, f"unavailable (HTTP {response.status_code}, code {code}):"
                              f" {desc}")  # fmt: skip
        if code != 0:
            raise Refused(NAME, f"code {code}: {desc}", taken=code in TAKEN_CODES, code=code,
                          http_status=response.status_code)  # fmt: skip
        return envelope.get("data") or {}

    # -- registrar ---------------------------------------------------------------------------

    async def check(self, names: list[str]) -> list[Availability]:
        body = {"domains": [split_name(n) for n in names], "with_price": True}
        data = await self._call("POST", "/domains/check", body)
        found = {str(r.get("domain", "")).lower(): r for r in data.get("results", [])}
        out = []
        for name in names:
            result = found.get(name)
            if result is None:
                out.append(Availability(name, False, False, "USD", None, None, "no answer"))
                continue
            price = (result.get("price") or {}).get("reseller") or {}
            regular = _usd(price.get("price"))
            premium = bool(result.get("is_premium"))
            create = regular
            if premium:
                create = _usd(((result.get("premium") or {}).get("price") or {}).get("create"))
            out.append(Availability(name, result.get("status") == "free", premium,
                                    str(price.get("currency") or "USD"), create, regular,
                                    str(result.get("reason") or "")))  # fmt: skip
        return out

    async def register(self, name: str, years: int, contact: Contact, nameservers: list[str],
                       idempotency_key: str, max_cost_usd: Decimal) -> HeldDomain:  # fmt: skip
        # `accept_premium_fee` is the premium price we quoted (0 for a regular name): a
        # premium price above it makes OpenProvider refuse rather than charge more.
        handle = await self._handle(contact, idempotency_key)
        body: dict[str, Any] = {
            "domain": split_name(name), "period": years, "unit": "y", "autorenew": "default",
            "owner_handle": handle, "admin_handle": handle, "tech_handle": handle,
            "billing_handle": handle, "accept_premium_fee": float(max_cost_usd),
        }  # fmt: skip
        if nameservers:
            body["name_servers"] = [{"name": ns, "seq_nr": i + 1}
                                    for i, ns in enumerate(nameservers)]  # fmt: skip
        data = await self._call("POST", "/domains", body, write=True,
                                idempotency_key=idempotency_key)  # fmt: skip
        await self._ensure_zone(name)
        return HeldDomain(name, NAME, str(data.get("id", "")), data.get("expiration_date"),
                          nameservers)  # fmt: skip

    async def _handle(self, contact: Contact, idempotency_key: str) -> str:
        country_code, _, number = contact.phone.replace(" ", "").partition(".")
        body = {
            "name": {"first_name": contact.first_name, "last_name": contact.last_name,
                     "full_name": f"{contact.first_name} {contact.last_name}"},
            "address": {"street": contact.street, "number": "", "zipcode": contact.zipcode,
                        "city": contact.city, "state": contact.state,
                        "country": contact.country},
            "phone": {"country_code": country_code, "area_code": "",
                      "subscriber_number": number},
            "email": contact.email, "company_name": contact.company,
        }  # fmt: skip
        data = await self._call("POST", "/customers", body, write=False,
                                idempotency_key=idempotency_key + ":handle")  # fmt: skip
        return str(data["handle"])

    async def _ensure_zone(self, name: str) -> None:
        try:
            await self._call("GET", f"/dns/zones/{name}")
        except Refused:
            body = {"domain": split_name(name), "type": "master", "records": []}
            try:
                await self._call("POST", "/dns/zones", body)
            except Refused:
                pass  # made meanwhile

    def _held(self, row: dict[str, Any]) -> HeldDomain:
        domain = row.get("domain") or {}
        name = f"{domain.get('name', '')}.{domain.get('extension', '')}".lower()
        ns = [str(n.get("name")) for n in row.get("name_servers") or []]
        return HeldDomain(name, NAME, str(row.get("id", "")), row.get("expiration_date"), ns)

    async def get_domain(self, name: str) -> HeldDomain | None:
        data = await self._call("GET", "/domains", params={"full_name": name, "limit": 10})
        for row in data.get("results", []):
            held = self._held(row)
            if held.name == name:
                return held
        return None

    async def list_domains(self) -> list[HeldDomain]:
        out: list[HeldDomain] = []
        while True:
            data = await self._call("GET", "/domains", params={"limit": PAGE, "offset": len(out)})
            rows = data.get("results", [])
            out.extend(self._held(row) for row in rows)
            if not rows or len(out) >= int(data.get("total", 0)):
                return out

    # -- DNS ---------------------------------------------------------------------------------

    async def read_zone(self, domain: str) -> list[Record]:
        records: list[Record] = []
        offset = 0
        while True:
            try:
                data = await self._call("GET", f"/dns/zones/{domain}/records",
                                        params={"limit": PAGE, "offset": offset})  # fmt: skip
            except Refused as refused:
                if refused.details.get("http_status") == 404:
                    return []
                raise
            rows = data.get("results", [])
            records.extend(r for r in (self._record(row, domain) for row in rows) if r)
            offset += len(rows)
            if not rows or offset >= int(data.get("total", 0)):
                return records

    def _record(self, row: dict[str, Any], domain: str) -> Record | None:
        rtype = str(row.get("type", "")).upper()
        if rtype in ("SOA", "NS"):
            return None  # the provider's own
        value = str(row.get("value", ""))
        if rtype == "TXT":
            value = unquote_txt(value)
        elif rtype in ("CNAME", "MX"):
            value = value.lower().rstrip(".")
        prio = row.get("prio")
        priority = int(prio) if rtype in ("MX", "SRV") and prio is not None else None
        name = relative_name(str(row.get("name", "")), domain)
        return Record(name, rtype, value, int(row.get("ttl") or 0), priority)

    @staticmethod
    def _write(record: Record) -> dict[str, Any]:
        return {"name": "" if record.name == "@" else record.name, "type": record.type,
                "value": record.value, "ttl": record.ttl,
                "prio": record.priority or 0}  # fmt: skip

    async def _update(self, domain: str, change: dict[str, Any]) -> None:
        await self._ensure_zone(domain)
        body = {"name": domain, "records": change}
        await self._call("PUT", f"/dns/zones/{domain}", body, write=True)

    async def add(self, domain: str, record: Record) -> None:
        await self._update(domain, {"add": [self._write(record)]})

    async def remove(self, domain: str, record: Record) -> None:
        await self._update(domain, {"remove": [self._write(record)]})

    async def replace(self, domain: str, old: Record, new: Record) -> None:
        change = {"original_record": self._write(old), "record": self._write(new)}
        await self._update(domain, {"update": [change]})

    async def delete_zone(self, domain: str) -> None:
        await self._call("DELETE", f"/dns/zones/{domain}", write=True)


class _AuthExpired(Exception):
    """401 / code 196 on a call with a cached token: log in again, once."""


def unquote_txt(value: str) -> str:
    """`"a" "b"` or `"ab"` -> `ab`; an unquoted value is kept as it is."""
    text = value.strip()
    if not (text.startswith('"') and text.endswith('"')):
        return value
    parts, current, inside, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and inside:
            escaped = True
        elif char == '"':
            if inside:
                parts.append("".join(current))
                current = []
            inside = not inside
        elif inside:
            current.append(char)
    return "".join(parts)
