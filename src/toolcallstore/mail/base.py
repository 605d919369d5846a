"""What the mail tools need from a mail server, and the errors it raises at our boundary.

Every call names the credential it acts as: the operator's provisioning credential only
creates a domain and that domain's own administrator; a tenant's mailboxes are managed as the
domain administrator, never as the server-wide admin (BLUEPRINT, email).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["user", "domain_admin"]


@dataclass(frozen=True)
class Credential:
    username: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class DkimKey:
    selector: str
    algorithm: str  # rsa | ed25519
    public_key: str  # base64, as published after `p=`


@dataclass(frozen=True)
class ZoneRecord:
    type: str
    name: str  # fully qualified, no trailing dot
    content: str


@dataclass(frozen=True)
class DomainKeys:
    """What the server wants published for a domain: its DKIM keys and its zone."""

    dkim: list[DkimKey]
    zone: list[ZoneRecord]


class MailProvider(Protocol):
    async def create_domain(self, admin: Credential, name: str) -> str:
        """The domain's id, creating it unless the server already has it."""
        ...

    async def domain_keys(self, admin: Credential, domain_id: str) -> DomainKeys:
        """The domain's DKIM keys and the records the server wants published."""
        ...

    async def create_account(
        self, actor: Credential, *, domain_id: str, local_part: str, display_name: str,
        password: str, quota_mb: int, role: Role = "user",
    ) -> str:  # fmt: skip
        """A new account's id; StateConflict if the address exists."""
        ...

    async def update_account(
        self, actor: Credential, account_id: str, *, password: str | None = None,
        quota_mb: int | None = None, enabled: bool | None = None,
    ) -> None:  # fmt: skip
        """Change an account's password, quota or enabled flag."""
        ...

    async def delete_account(self, actor: Credential, account_id: str) -> None:
        """Destroy an account (an account already gone counts as destroyed)."""
        ...


class DnsPublisher(Protocol):
    """The DNS capability as mail uses it: on a domain the tenant holds, publish records under
    the setup's own (already approved) execution and follow their verification."""

    async def held(self, *, tenant_id: str, livemode: bool, name: str,
                   project_id: str | None = None) -> bool:  # fmt: skip
        """Whether the tenant holds the registered domain `name` (in `project_id`, for a key
        bound to one: another project's domain is not held by it)."""
        ...

    async def publish(
        self, *, tenant_id: str, livemode: bool, project_id: str | None, domain: str,
        records: list[dict[str, Any]], execution_id: str,
    ) -> str:  # fmt: skip
        """Upsert `records` (idempotent per execution); the DNS change's id."""
        ...

    async def status(self, change_id: str) -> dict[str, Any]:
        """`{"status": applying|applied|partial|verified|failed, "missing": [...]}`."""
        ...
