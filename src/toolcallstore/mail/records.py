"""The records a mail domain publishes: parsed from Stalwart's zone file, the DKIM key taken
from its read-back, DMARC starting at `p=none` (reference/providers.md C7, "Records to
publish"). Pure functions, tested without a network."""

from __future__ import annotations

import shlex
from typing import Any

from toolcallstore.mail.base import DkimKey, DomainKeys, ZoneRecord

TTL = 3600


def parse_zone(text: str) -> list[ZoneRecord]:
    """`name [ttl] [IN] TYPE rdata` lines (comments and blanks skipped); TXT rdata strings are
    joined, other rdata kept as written. Names lose their trailing dot."""
    records = []
    for line in text.splitlines():
        line = line.split(";", 1)[0] if '"' not in line else line
        if not line.strip() or line.lstrip().startswith(("$", ";")):
            continue
        try:
            parts = shlex.split(line, posix=True)
        except ValueError:
            continue
        if len(parts) < 3:
            continue
        name, rest = parts[0].rstrip("."), parts[1:]
        while rest and (rest[0].isdigit() or rest[0].upper() == "IN"):
            rest = rest[1:]
        if len(rest) < 2:
            continue
        kind = rest[0].upper()
        content = "".join(rest[1:]) if kind == "TXT" else " ".join(rest[1:])
        records.append(ZoneRecord(kind, name, content))
    return records


def _dkim_value(key: DkimKey) -> str:
    return f"v=DKIM1; k={key.algorithm}; h=sha256; p={key.public_key}"


def _mx(record: ZoneRecord) -> dict[str, Any]:
    priority, _, host = record.content.partition(" ")
    return {"name": "@", "type": "MX", "value": host.strip().rstrip("."),
            "priority": int(priority) if priority.isdigit() else 10, "ttl": TTL}  # fmt: skip


def mail_records(domain: str, keys: DomainKeys) -> list[dict[str, Any]]:
    """MX, SPF, DKIM and DMARC (p=none) for `domain`, as the DNS tool takes records
    (`{name, type, value, ttl, priority?}`, names relative); MX and SPF as Stalwart asks."""
    mx = [r for r in keys.zone if r.type == "MX" and r.name == domain]
    spf = [r for r in keys.zone if r.type == "TXT" and r.name == domain
           and r.content.startswith("v=spf1")]  # fmt: skip
    records = [_mx(r) for r in mx or [ZoneRecord("MX", domain, f"10 mail.{domain}.")]]
    spf_value = spf[0].content if spf else "v=spf1 mx -all"
    records.append({"name": "@", "type": "TXT", "value": spf_value, "ttl": TTL})
    for key in keys.dkim:
        records.append({"name": f"{key.selector}._domainkey", "type": "TXT",
                        "value": _dkim_value(key), "ttl": TTL})  # fmt: skip
    dmarc = f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"
    records.append({"name": "_dmarc", "type": "TXT", "value": dmarc, "ttl": TTL})
    return records


def fqdn(record: dict[str, Any], domain: str) -> str:
    name = str(record["name"])
    return domain if name == "@" else f"{name}.{domain}"
