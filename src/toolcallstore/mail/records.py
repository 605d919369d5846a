"""The records a mail domain publishes: parsed from Stalwart's zone file, the DKIM key taken
from its read-back, DMARC starting at `p=none` (reference/providers.md C7, "Records to
publish"). Pure functions, tested without a network."""

from __future__ import annotations

import shlex
from typing import Any

from toolcallstore.mail.base import DkimKey, DomainKeys, ZoneRecord

TTL = 3600
TXT_CHUNK = 255  # one TXT character-string holds at most 255 bytes


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


def split_txt(value: str) -> list[str]:
    """A TXT value as the ≤255-byte strings DNS carries (long RSA keys need several)."""
    data = value.encode()
    return [data[i : i + TXT_CHUNK].decode() for i in range(0, len(data), TXT_CHUNK)] or [""]


def _dkim_value(key: DkimKey) -> str:
    return f"v=DKIM1; k={key.algorithm}; h=sha256; p={key.public_key}"


def mail_records(domain: str, keys: DomainKeys) -> list[dict[str, Any]]:
    """MX, SPF, DKIM and DMARC (p=none) for `domain`; the MX host and SPF as Stalwart asks."""
    mx = [r for r in keys.zone if r.type == "MX" and r.name == domain]
    spf = [r for r in keys.zone if r.type == "TXT" and r.name == domain
           and r.content.startswith("v=spf1")]  # fmt: skip
    records: list[dict[str, Any]] = []
    for record in mx or [ZoneRecord("MX", domain, f"10 mail.{domain}.")]:
        records.append({"type": "MX", "name": "@", "content": record.content, "ttl": TTL})
    spf_value = spf[0].content if spf else "v=spf1 mx -all"
    records.append({"type": "TXT", "name": "@", "content": spf_value, "ttl": TTL})
    for key in keys.dkim:
        records.append({"type": "TXT", "name": f"{key.selector}._domainkey",
                        "content": _dkim_value(key), "ttl": TTL})  # fmt: skip
    dmarc = f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"
    records.append({"type": "TXT", "name": "_dmarc", "content": dmarc, "ttl": TTL})
    return records


def fqdn(record: dict[str, Any], domain: str) -> str:
    name = str(record["name"])
    return domain if name == "@" else f"{name}.{domain}"
