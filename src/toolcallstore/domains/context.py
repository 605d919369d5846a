"""What the domains capability keeps per process: OpenProvider's login tokens, and this
process's sandbox (whose loopback DNS server answers for test-mode zones)."""

from __future__ import annotations

from dataclasses import dataclass, field

from toolcallstore.domains.openprovider import TokenCache
from toolcallstore.sandbox.domains import DomainSandbox


@dataclass
class DomainsContext:
    tokens: TokenCache = field(default_factory=TokenCache)
    sandbox: DomainSandbox | None = None
