"""Porkbun API v3 (reference/providers.md B6): the failover registrar, and DNS for the domains
it holds. Every call is a POST with the keys in the body; `status` is checked on every answer
(`ERROR` comes under 400 and under 200 alike). Prices, TTLs and priorities are strings; record
ids may be ints or strings; reads return FQDNs."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
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
from toolcallstore.domains.openprovider import unquote_txt
from toolcallstore.domains.records import Record, relative_name

NAME = "porkbun"


def _usd(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


class Porkbun:
    name = NAME

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str, secret_key: str,
                 timeout_s: float) -> None:  # fmt: skip
        self.http = http
        self.base = base_url.rstrip("/")
        self.api_key = api_key
        self.secret_key = secret_key
        self.timeout = timeout_s

    async def _call(self, path: str, body: dict[str, Any] | None = None, *,
                    write: bool = False) -> dict[str, Any]:  # fmt: skip
        payload = {"apikey": self.api_key, "secretapikey": self.secret_key, **(body or {})}
        try:
            response = await self.http.post(self.base + path, json=payload, timeout=self.timeout)
        except httpx.ConnectError as exc:
            raise NothingDone(NAME, f"cannot connect ({type(exc).__name__})") from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            if write:
                raise Ambiguous(NAME, f"no answer to {path} ({type(exc).__name__})") from None
            raise NothingDone(NAME, f"no answer ({type(exc).__name__})") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if write and response.status_code in (502, 504):
                raise Ambiguous(NAME, f"HTTP {response.status_code} from a gateway")
            raise NothingDone(NAME, f"HTTP {response.status_code} without a JSON answer")
        if data.get("status") == "SUCCESS":
            return data
        message = str(data.get("message") or "unknown error")[:300]
        if response.status_code == 429 or response.status_code >= 500 or "limit" in message.lower():
            raise NothingDone(NAME, f"unavailable or rate limited: {message}",
                              retry_after=response.headers.get("retry-after"))  # fmt: skip
        taken = "not available" in message.lower() or "already" in message.lower()
        raise Refused(NAME, message, taken=taken, http_status=response.status_code)

    async def _check_one(self, name: str) -> Availability:
        data = await self._call(f"/domain/checkDomain/{name}")
        info = data.get("response") or {}
        renewal = ((info.get("additional") or {}).get("renewal") or {}).get("price")
        return Availability(name, info.get("avail") == "yes", info.get("premium") == "yes", "USD",
                            _usd(info.get("price")), _usd(renewal))  # fmt: skip

    async def check(self, names: list[str]) -> list[Availability]:
        return [await self._check_one(name) for name in names]

    async def register(self, name: str, years: int, contact: Contact, nameservers: list[str],
                       idempotency_key: str, max_cost_usd: Decimal) -> HeldDomain:  # fmt: skip
        # Porkbun registers under the account's own contact; `cost` (pennies) must be the
        # price it quotes now, which keeps a price change from buying silently.
        found = await self._check_one(name)
        if not found.available or found.create_price is None:
            raise Refused(NAME, f"{name} is not available", taken=True)
        if years != 1:  # its create takes one price for the minimum duration, one year
            raise NothingDone(NAME, "registers for one year only through its API")
        cost = found.create_price
        if cost > max_cost_usd:
            raise NothingDone(NAME, f"{name} costs {cost} USD here, above the {max_cost_usd}"
                              " USD quoted: not bought")  # fmt: skip
        cents = int((found.create_price * 100).to_integral_value(ROUND_CEILING))
        await self._call(f"/domain/create/{name}", {"cost": cents, "agreeToTerms": "yes"},
                         write=True)  # fmt: skip
        if nameservers:
            try:
                await self._call(f"/domain/updateNs/{name}", {"ns": nameservers}, write=True)
            except (NothingDone, Refused, Ambiguous):
                pass  # registered; the nameservers can be set again later
        held = await self.get_domain(name)
        expires = held.expires_at if held else None
        return HeldDomain(name, NAME, name, expires, nameservers, cost)

    async def get_domain(self, name: str) -> HeldDomain | None:
        for held in await self.list_domains():
            if held.name == name:
                return held
        return None

    async def list_domains(self) -> list[HeldDomain]:
        out: list[HeldDomain] = []
        while True:
            data = await self._call("/domain/listAll", {"start": str(len(out))})
            rows = data.get("domains") or []
            out.extend(HeldDomain(str(r.get("domain", "")).lower(), NAME,
                                  str(r.get("domain", "")).lower(), r.get("expireDate"), [])
                       for r in rows)  # fmt: skip
            if len(rows) < 1000:
                return out

    # -- DNS ---------------------------------------------------------------------------------

    async def _rows(self, domain: str) -> list[tuple[str, Record]]:
        data = await self._call(f"/dns/retrieve/{domain}")
        out = []
        for row in data.get("records") or []:
            rtype = str(row.get("type", "")).upper()
            if rtype in ("SOA", "NS"):
                continue
            value = str(row.get("content", ""))
            if rtype == "TXT":
                value = unquote_txt(value)
            elif rtype in ("CNAME", "MX"):
                value = value.lower().rstrip(".")
            prio = row.get("prio")
            priority = int(prio) if rtype in ("MX", "SRV") and prio not in (None, "") else None
            record = Record(relative_name(str(row.get("name", "")), domain), rtype, value,
                            int(row.get("ttl") or 0), priority)  # fmt: skip
            out.append((str(row.get("id")), record))
        return out

    async def read_zone(self, domain: str) -> list[Record]:
        return [record for _, record in await self._rows(domain)]

    @staticmethod
    def _write(record: Record) -> dict[str, Any]:
        return {"name": "" if record.name == "@" else record.name, "type": record.type,
                "content": record.value, "ttl": str(record.ttl),
                "prio": str(record.priority or 0)}  # fmt: skip

    async def _id_of(self, domain: str, record: Record) -> str:
        for record_id, found in await self._rows(domain):
            if found.key == record.key:
                return record_id
        raise Refused(NAME, f"no record {record.type} {record.name} {record.value[:40]}")

    async def add(self, domain: str, record: Record) -> None:
        await self._call(f"/dns/create/{domain}", self._write(record), write=True)

    async def remove(self, domain: str, record: Record) -> None:
        record_id = await self._id_of(domain, record)
        await self._call(f"/dns/delete/{domain}/{record_id}", write=True)

    async def replace(self, domain: str, old: Record, new: Record) -> None:
        record_id = await self._id_of(domain, old)
        await self._call(f"/dns/edit/{domain}/{record_id}", self._write(new), write=True)

    async def delete_zone(self, domain: str) -> None:
        for record_id, _ in await self._rows(domain):
            await self._call(f"/dns/delete/{domain}/{record_id}", write=True)
