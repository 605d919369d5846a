"""DNS records as the API takes them: validation (422 naming the record), the canonical form
the providers and the diff share, the diff of a desired set against a live zone, and the
fingerprint of a zone that binds an approval to what the human saw.

A record is `{"name", "type", "value", "ttl", "priority"?}`: `name` is relative to the domain
(`"@"` for the apex), `value` is the address, target host or text (TXT: the whole text; DNS
carries it as strings of at most 255 bytes, `strings` shows them), `priority` is MX's and SRV's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.errors import Unprocessable

TYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA")
MIN_TTL, MAX_TTL, DEFAULT_TTL = 600, 86_400, 3600
MAX_RECORDS = 200
MAX_TXT_BYTES = 4000
TXT_STRING_BYTES = 255
CAA_TAGS = ("issue", "issuewild", "iodef")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_DOMAIN = re.compile(r"^(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


@dataclass(frozen=True)
class Record:
    name: str  # relative, "@" for the apex
    type: str
    value: str
    ttl: int = DEFAULT_TTL
    priority: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What a record is: a TTL or priority of its own is a change of it, not another."""
        return self.name, self.type, self.value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "value": self.value,
                               "ttl": self.ttl}  # fmt: skip
        if self.priority is not None:
            out["priority"] = self.priority
        if self.type == "TXT":
            out["strings"] = txt_strings(self.value)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Record:
        return cls(raw["name"], raw["type"], raw["value"], int(raw["ttl"]), raw.get("priority"))

    def fqdn(self, domain: str) -> str:
        return domain if self.name == "@" else f"{self.name}.{domain}"


def txt_strings(text: str) -> list[str]:
    """A TXT value as DNS carries it: strings of at most 255 bytes (ASCII: characters)."""
    if not text:
        return [""]
    return [text[i : i + TXT_STRING_BYTES] for i in range(0, len(text), TXT_STRING_BYTES)]


def check_domain_name(name: Any, param: str = "name") -> str:
    if not isinstance(name, str):
        raise _bad(param, "A domain name must be a string.")
    clean = name.strip().lower().rstrip(".")
    if not _DOMAIN.match(clean):
        raise _bad(param, f"'{name[:100]}' is not a domain name (like example.com).",
                   code="invalid_domain")  # fmt: skip
    return clean


def _bad(param: str, message: str, code: str = "invalid_record", **details: Any) -> Unprocessable:
    return Unprocessable(message, code=code, param=param, **details)


def relative_name(name: str, domain: str) -> str:
    """A provider's FQDN (or relative name) -> ours: "@" for the apex."""
    clean = name.strip().lower().rstrip(".")
    if clean in ("", "@", domain):
        return "@"
    if clean.endswith("." + domain):
        return clean[: -len(domain) - 1]
    return clean


def _hostname(value: Any, where: str, record: dict[str, Any]) -> str:
    if not isinstance(value, str):
        raise _bad(where, "The target must be a host name.", record=record)
    clean = value.strip().lower().rstrip(".")
    labels = clean.split(".")
    if len(clean) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise _bad(where, f"'{value[:100]}' is not a host name.", record=record)
    return clean


def parse_records(raw: Any, domain: str, param: str = "records") -> list[Record]:
    """Check a desired record set; raises 422 naming the first offending record."""
    if not isinstance(raw, list):
        raise _bad(param, "'records' must be a list of records.")
    if len(raw) > MAX_RECORDS:
        raise _bad(param, f"At most {MAX_RECORDS} records per domain.")
    records = [parse_record(item, domain, f"{param}[{i}]") for i, item in enumerate(raw)]
    seen: dict[tuple[str, str, str], int] = {}
    names: dict[str, set[str]] = {}
    for i, record in enumerate(records):
        if record.key in seen:
            raise _bad(f"{param}[{i}]", f"Record {i} repeats record {seen[record.key]}.",
                       record=raw[i])  # fmt: skip
        seen[record.key] = i
        names.setdefault(record.name, set()).add(record.type)
    for i, record in enumerate(records):
        types = names[record.name]
        if record.type == "CNAME" and (len(types) > 1 or _count(records, record.name) > 1):
            raise _bad(f"{param}[{i}]", f"'{record.name}' has a CNAME: no other record may be at"
                       " that name (RFC 1034 3.6.2).", record=raw[i])  # fmt: skip
    return records


def _count(records: list[Record], name: str) -> int:
    return sum(1 for r in records if r.name == name)


def parse_record(item: Any, domain: str, where: str) -> Record:
    if not isinstance(item, dict):
        raise _bad(where, "A record is an object {name, type, value, ttl?, priority?}.")
    unknown = set(item) - {"name", "type", "value", "ttl", "priority", "strings"}
    if unknown:
        raise _bad(f"{where}.{sorted(unknown)[0]}", f"Unknown field '{sorted(unknown)[0]}'.",
                   record=item)  # fmt: skip
    rtype = item.get("type")
    if not isinstance(rtype, str) or rtype.upper() not in TYPES:
        raise _bad(f"{where}.type", f"'type' must be one of {', '.join(TYPES)}.", record=item)
    rtype = rtype.upper()
    name = _record_name(item.get("name", "@"), domain, where, item)
    ttl = item.get("ttl", DEFAULT_TTL)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL <= ttl <= MAX_TTL:
        raise _bad(f"{where}.ttl", f"'ttl' must be whole seconds from {MIN_TTL} to {MAX_TTL}"
                   " (the registrars' minimum is 600).", record=item)  # fmt: skip
    priority = item.get("priority")
    if rtype in ("MX", "SRV"):
        if (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or not (0 <= priority <= 65535)
        ):
            raise _bad(f"{where}.priority", f"A {rtype} record needs 'priority' 0-65535.",
                       record=item)  # fmt: skip
    elif priority is not None:
        raise _bad(f"{where}.priority", f"A {rtype} record has no priority.", record=item)
    value = _value(rtype, item.get("value"), name, f"{where}.value", item)
    return Record(name, rtype, value, ttl, priority)


def _record_name(raw: Any, domain: str, where: str, item: dict[str, Any]) -> str:
    if not isinstance(raw, str):
        raise _bad(f"{where}.name", "'name' must be a string ('@' for the domain itself).",
                   record=item)  # fmt: skip
    name = relative_name(raw, domain)
    if name == "@":
        return name
    labels = name.split(".")
    ok = all(_LABEL.match(label) or (i == 0 and label == "*") for i, label in enumerate(labels))
    if not ok or len(name) + len(domain) + 1 > 253:
        raise _bad(f"{where}.name", f"'{raw[:100]}' is not a name under {domain}.", record=item)
    return name


def _value(rtype: str, value: Any, name: str, where: str, item: dict[str, Any]) -> str:
    if rtype == "TXT" and isinstance(value, list):
        if not all(isinstance(s, str) and len(s.encode()) <= TXT_STRING_BYTES for s in value):
            raise _bad(where, "TXT strings are at most 255 bytes each.", record=item)
        value = "".join(value)
    if not isinstance(value, str) or (rtype != "TXT" and not value.strip()):
        raise _bad(where, "'value' must be a non-empty string.", record=item)
    checked: str = _VALUES[rtype](value, name, where, item)
    return checked


def _address(rtype: str) -> Any:
    def check(value: str, name: str, where: str, item: dict[str, Any]) -> str:
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            address = None
        if address is None or address.version != (4 if rtype == "A" else 6):
            kind = "IPv4" if rtype == "A" else "IPv6"
            raise _bad(where, f"'{value[:60]}' is not an {kind} address.", record=item)
        return str(address)

    return check


def _cname(value: str, name: str, where: str, item: dict[str, Any]) -> str:
    if name == "@":
        raise _bad(where, "A CNAME cannot be at the apex ('@'): the domain's SOA and NS are"
                   " there.", record=item)  # fmt: skip
    return _hostname(value, where, item)


def _mx(value: str, name: str, where: str, item: dict[str, Any]) -> str:
    return _hostname(value, where, item)


def _txt(value: str, name: str, where: str, item: dict[str, Any]) -> str:
    if not value.isascii() or any(not 32 <= ord(c) < 127 for c in value):
        raise _bad(where, "TXT text must be printable ASCII.", record=item)
    if len(value) > MAX_TXT_BYTES:
        raise _bad(where, f"TXT text is at most {MAX_TXT_BYTES} bytes.", record=item)
    return value


def _srv(value: str, name: str, where: str, item: dict[str, Any]) -> str:
    if not re.match(r"^_[a-z0-9-]+\._(tcp|udp|tls)(\.|$)", name):
        raise _bad(f"{where[: -len('.value')]}.name", "An SRV record's name is"
                   " _service._proto (like _imaps._tcp).", record=item)  # fmt: skip
    parts = value.split()
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 65535 for p in parts[:2]):
        raise _bad(where, "An SRV value is 'weight port target'.", record=item)
    return f"{int(parts[0])} {int(parts[1])} {_hostname(parts[2], where, item)}"


def _caa(value: str, name: str, where: str, item: dict[str, Any]) -> str:
    match = re.match(r'^\s*(\d{1,3})\s+([a-z]+)\s+"([^"]*)"\s*$', value)
    if match is None or int(match[1]) > 255 or match[2] not in CAA_TAGS:
        raise _bad(where, 'A CAA value is \'flags tag "value"\' with tag issue, issuewild or'
                   ' iodef (like 0 issue "letsencrypt.org").', record=item)  # fmt: skip
    return f'{int(match[1])} {match[2]} "{match[3]}"'


_VALUES: dict[str, Any] = {"A": _address("A"), "AAAA": _address("AAAA"), "CNAME": _cname,
                           "MX": _mx, "TXT": _txt, "SRV": _srv, "CAA": _caa}  # fmt: skip


@dataclass(frozen=True)
class Diff:
    add: list[Record]
    remove: list[Record]
    change: list[tuple[Record, Record]]  # (live, desired)

    @property
    def size(self) -> int:
        return len(self.add) + len(self.remove) + len(self.change)

    def to_dict(self) -> dict[str, Any]:
        return {
            "add": [r.to_dict() for r in self.add],
            "remove": [r.to_dict() for r in self.remove],
            "change": [{"from": a.to_dict(), "to": b.to_dict()} for a, b in self.change],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Diff:
        return cls(
            [Record.from_dict(r) for r in raw["add"]],
            [Record.from_dict(r) for r in raw["remove"]],
            [(Record.from_dict(c["from"]), Record.from_dict(c["to"])) for c in raw["change"]],
        )


def diff_records(live: list[Record], desired: list[Record]) -> Diff:
    have = {r.key: r for r in live}
    want = {r.key: r for r in desired}
    add = [r for k, r in want.items() if k not in have]
    remove = [r for k, r in have.items() if k not in want]
    change = [(have[k], r) for k, r in want.items() if k in have and have[k] != r]
    return Diff(sorted(add, key=_order), sorted(remove, key=_order), change)


def merge_records(live: list[Record], upsert: list[Record]) -> list[Record]:
    """`upsert` replaces every live record of the same name and type."""
    replaced = {(r.name, r.type) for r in upsert}
    return [r for r in live if (r.name, r.type) not in replaced] + list(upsert)


def _order(record: Record) -> tuple[str, str, str]:
    return record.key


def zone_fingerprint(records: list[Record]) -> str:
    """The live zone as a quote saw it: sha256 of its records in a canonical order."""
    canonical = sorted([r.name, r.type, r.value, r.ttl, r.priority] for r in records)
    return hashlib.sha256(orjson.dumps(canonical)).hexdigest()
