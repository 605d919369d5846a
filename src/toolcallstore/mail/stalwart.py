"""Stalwart v0.16+ over its JMAP management API (reference/providers.md C7).

Session discovery is `GET /.well-known/jmap`, redirects followed; every call is then a JMAP
request to the session's `apiUrl` on the account `primaryAccounts["urn:stalwart:jmap"]`.
JMAP answers failure three ways and each becomes our envelope at this boundary: a
`notCreated`/`notUpdated`/`notDestroyed` entry (per object), a method-level `["error", ...]`,
and a problem document (`{"type", "status", "detail"}`, the HTTP status its own).

[U] in providers.md: the create shape of a password credential, the account's enabled flag and
the domain administrator's role. Each is one constant below, so a real server that differs is a
one-line change.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from toolcallstore.errors import APIError, ProviderError, StateConflict
from toolcallstore.mail.base import Credential, DkimKey, DomainKeys, Role, ZoneRecord
from toolcallstore.mail.records import parse_zone

USING = ["urn:ietf:params:jmap:core", "urn:stalwart:jmap"]
CAPABILITY = "urn:stalwart:jmap"
ROLES: dict[str, dict[str, Any]] = {
    "user": {"@type": "User"},
    "domain_admin": {"@type": "DomainAdmin"},  # [U] a domain-scoped administrator
}
ENABLED_FIELD = "isEnabled"  # [U] as on x:Domain
_CONFLICTS = frozenset({"alreadyExists", "primaryKeyViolation"})


class AccountExists(StateConflict):
    code = "mailbox_exists"

    def __init__(self, message: str, account_id: str | None) -> None:
        super().__init__(message)
        self.account_id = account_id


def _basic(credential: Credential) -> str:
    raw = f"{credential.username}:{credential.secret}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _problem(response: httpx.Response) -> ProviderError:
    """A non-2xx answer: a problem document when Stalwart sent one, else the bare status."""
    detail, jmap_type = f"HTTP {response.status_code}", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        jmap_type = body.get("type")
        detail = str(body.get("detail") or body.get("title") or detail)[:300]
    code = "provider_auth_failed" if response.status_code in (401, 403) else "provider_error"
    return ProviderError(f"Stalwart refused the request: {detail}", code=code,
                         provider_status=response.status_code, provider_type=jmap_type)  # fmt: skip


def _set_failure(kind: str, failure: dict[str, Any]) -> APIError:
    jmap_type = str(failure.get("type", "unknown"))
    description = str(failure.get("description") or jmap_type)[:300]
    if jmap_type in _CONFLICTS:
        return StateConflict(f"Stalwart: {description}", code="provider_conflict")
    return ProviderError(f"Stalwart did not {kind} it: {description}", code="provider_rejected",
                         provider_type=jmap_type,
                         properties=failure.get("properties") or [])  # fmt: skip


class StalwartJmap:
    """The MailProvider for one Stalwart server at `base_url` (its origin, or a path prefix)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, timeout_s: float = 20.0) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout_s

    async def session(self, credential: Credential) -> dict[str, Any]:
        """The JMAP session of `credential`, following the discovery redirects."""
        try:
            response = await self._http.get(
                self.base_url + "/.well-known/jmap",
                headers={"Authorization": _basic(credential), "Accept": "application/json"},
                follow_redirects=True, timeout=self._timeout,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None
        if response.status_code != 200:
            raise _problem(response)
        session: dict[str, Any] = response.json()
        return session

    async def call(
        self, credential: Credential, method: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        """One method call on the management account; its response arguments."""
        session = await self.session(credential)
        account = session.get("primaryAccounts", {}).get(CAPABILITY)
        if not account or "apiUrl" not in session:
            raise ProviderError("Stalwart's session has no management account for this"
                                " credential.", code="provider_auth_failed")  # fmt: skip
        request = {"using": USING, "methodCalls": [[method, {"accountId": account, **args}, "0"]]}
        try:
            response = await self._http.post(
                session["apiUrl"], json=request, timeout=self._timeout,
                headers={"Authorization": _basic(credential)},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None
        if response.status_code != 200:
            raise _problem(response)
        try:
            name, result, _ = response.json()["methodResponses"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError("Stalwart answered a JMAP request with something else.") from None
        if name == "error":
            kind = str(result.get("type", "unknown"))
            raise ProviderError(f"Stalwart refused {method}: {result.get('description') or kind}",
                                code="provider_error", provider_type=kind)  # fmt: skip
        found: dict[str, Any] = result
        return found

    async def _create(self, credential: Credential, kind: str, obj: dict[str, Any]) -> str:
        result = await self.call(credential, f"{kind}/set", {"create": {"n": obj}})
        failure = (result.get("notCreated") or {}).get("n")
        if failure is not None:
            raise _set_failure("create", failure)
        return str(result["created"]["n"]["id"])

    async def _update(self, credential: Credential, kind: str, id_: str, patch: dict[str, Any]
                      ) -> None:  # fmt: skip
        result = await self.call(credential, f"{kind}/set", {"update": {id_: patch}})
        failure = (result.get("notUpdated") or {}).get(id_)
        if failure is not None:
            raise _set_failure("update", failure)

    async def _query(self, credential: Credential, kind: str, filter_: dict[str, Any]) -> list[str]:
        result = await self.call(credential, f"{kind}/query", {"filter": filter_})
        return [str(i) for i in result.get("ids", [])]

    async def create_domain(self, admin: Credential, name: str) -> str:
        # Looked up first: a setup resumed after a crash finds the domain it created.
        existing = await self._query(admin, "x:Domain", {"name": name})
        if existing:
            return existing[0]
        return await self._create(admin, "x:Domain", {
            "name": name, "isEnabled": True, "description": "", "aliases": {},
            "certificateManagement": {"@type": "Manual"},
            "dkimManagement": {"@type": "Automatic"}, "dnsManagement": {"@type": "Manual"},
            "subAddressing": {"@type": "Enabled"},
        })  # fmt: skip

    async def domain_keys(self, admin: Credential, domain_id: str) -> DomainKeys:
        ids = await self._query(admin, "x:DkimSignature", {"domainId": domain_id})
        keys = []
        if ids:
            got = await self.call(admin, "x:DkimSignature/get", {"ids": ids})
            for item in got.get("list", []):
                if item.get("stage", "active") != "active":
                    continue
                algorithm = "ed25519" if "Ed25519" in str(item.get("@type")) else "rsa"
                keys.append(DkimKey(str(item["selector"]), algorithm, str(item["publicKey"])))
        domain = await self.call(
            admin, "x:Domain/get", {"ids": [domain_id], "properties": ["name", "dnsZoneFile"]}
        )
        listed = domain.get("list") or []
        if not listed:
            raise ProviderError(f"Stalwart has no domain {domain_id}.", code="provider_rejected")
        zone: list[ZoneRecord] = parse_zone(str(listed[0].get("dnsZoneFile") or ""))
        return DomainKeys(keys, zone)

    async def create_account(
        self, actor: Credential, *, domain_id: str, local_part: str, display_name: str,
        password: str, quota_mb: int, role: Role = "user",
    ) -> str:  # fmt: skip
        account = {
            "@type": "User", "name": local_part, "domainId": domain_id,
            "description": display_name, "roles": ROLES[role],
            "permissions": {"@type": "Inherit"}, "encryptionAtRest": {"@type": "Disabled"},
            "credentials": {"0": {"@type": "Password", "secret": password}},
            "quotas": {"maxDiskQuota": quota_mb * 1024 * 1024}, "aliases": {},
        }  # fmt: skip
        try:
            return await self._create(actor, "x:Account", account)
        except StateConflict:
            found = await self._query(
                actor, "x:Account", {"name": local_part, "domainId": domain_id}
            )
            raise AccountExists(
                f"{local_part} already exists on this domain.", found[0] if found else None
            ) from None

    async def update_account(
        self, actor: Credential, account_id: str, *, password: str | None = None,
        quota_mb: int | None = None, enabled: bool | None = None,
    ) -> None:  # fmt: skip
        patch: dict[str, Any] = {}
        if password is not None:
            patch["credentials/0"] = {"@type": "Password", "secret": password}
        if quota_mb is not None:
            patch["quotas/maxDiskQuota"] = quota_mb * 1024 * 1024
        if enabled is not None:
            patch[ENABLED_FIELD] = enabled
        if patch:
            await self._update(actor, "x:Account", account_id, patch)

    async def delete_account(self, actor: Credential, account_id: str) -> None:
        result = await self.call(actor, "x:Account/set", {"destroy": [account_id]})
        failure = (result.get("notDestroyed") or {}).get(account_id)
        if failure is not None and failure.get("type") != "notFound":
            raise _set_failure("destroy", failure)


def _unreachable(exc: httpx.HTTPError) -> ProviderError:
    return ProviderError(f"Stalwart could not be reached: {type(exc).__name__}.",
                         code="provider_unreachable")  # fmt: skip
