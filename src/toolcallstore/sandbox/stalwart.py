"""A Stalwart v0.16 fake on its JMAP wire format (reference/providers.md C7): session
discovery (`/.well-known/jmap` redirects to `/jmap/session`), `POST /jmap/` method calls on
`x:Domain`, `x:DkimSignature` and `x:Account`, stateful, with JMAP's three failure shapes
(`notCreated`/`notUpdated`/`notDestroyed`, a method-level `error`, problem documents).

Accounts log in with HTTP Basic: the server admin `admin`, everyone else by address. A
domain administrator manages only its domain's accounts; a user reaches no `x:` method, but
its credentials open its own JMAP session (the login check of a new mailbox).

Fake-only, for tests and demos: `POST /_faults {"method", "kind", "times"}` makes the next
`times` calls of `method` fail (`kind`: `http_503`, `method_error` or `not_created`);
`GET /_state` shows domains, accounts and how often each domain was created.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

CAPABILITY = "urn:stalwart:jmap"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "sandbox-stalwart-admin"  # the sandbox's provisioning credential
FAULT_KINDS = ("http_503", "method_error", "not_created")
_ADMIN_ROLES = {"Admin": "admin", "DomainAdmin": "domain_admin"}


def _json(data: Any, status: int = 200, media: str = "application/json") -> Response:
    return Response(orjson.dumps(data), status, media_type=media)


def _problem(status: int, title: str, detail: str, type_: str = "about:blank") -> Response:
    body = {"type": type_, "status": status, "title": title, "detail": detail}
    return _json(body, status, "application/problem+json")


def _hash(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(8)
    return salt.hex() + ":" + hashlib.sha256(salt + password.encode()).hexdigest()


def _matches(password: str, stored: str) -> bool:
    salt, _, _ = stored.partition(":")
    return secrets.compare_digest(_hash(password, bytes.fromhex(salt)), stored)


class StalwartFake:
    def __init__(self) -> None:
        self.domains: dict[str, dict[str, Any]] = {}
        self.dkim: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {
            "a0": {"id": "a0", "name": ADMIN_USER, "domainId": None, "roles": {"@type": "Admin"},
                   "secret": _hash(ADMIN_PASSWORD), "isEnabled": True, "description": "admin",
                   "quotas": {}, "login": ADMIN_USER},
        }  # fmt: skip
        self.domain_creates: dict[str, int] = {}
        self.faults: dict[str, list[str]] = {}
        self._next = 1

    def _id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._next}"

    # -- HTTP ---------------------------------------------------------------------------------

    def _origin(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"

    def _login(self, request: Request) -> dict[str, Any] | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        for account in self.accounts.values():
            if account["login"] == user.lower() and account["isEnabled"]:
                return account if _matches(password, account["secret"]) else None
        return None

    async def discover(self, request: Request) -> Response:
        return RedirectResponse(self._origin(request) + "/jmap/session", status_code=307)

    async def session(self, request: Request) -> Response:
        account = self._login(request)
        if account is None:
            return _problem(401, "Unauthorized", "You have to authenticate first.")
        origin = self._origin(request)
        primary = {"urn:ietf:params:jmap:mail": account["id"]}
        if account["roles"]["@type"] in _ADMIN_ROLES:
            primary[CAPABILITY] = account["id"]
        caps: dict[str, Any] = {
            "urn:ietf:params:jmap:core": {
                "maxSizeUpload": 50_000_000,
                "maxCallsInRequest": 16,
                "maxObjectsInGet": 500,
            }
        }
        caps.update({name: {} for name in primary})
        return _json({
            "capabilities": caps,
            "accounts": {account["id"]: {"name": account["login"], "isPersonal": True,
                                         "isReadOnly": False, "accountCapabilities": {}}},
            "primaryAccounts": primary, "username": account["login"],
            "apiUrl": origin + "/jmap/",
            "downloadUrl": origin + "/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
            "uploadUrl": origin + "/jmap/upload/{accountId}/",
            "eventSourceUrl": origin + "/jmap/eventsource/", "state": "s1",
        })  # fmt: skip

    async def api(self, request: Request) -> Response:
        account = self._login(request)
        if account is None:
            return _problem(401, "Unauthorized", "You have to authenticate first.")
        try:
            body = orjson.loads(await request.body())
            calls = body["methodCalls"]
            using = body["using"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _problem(400, "Bad Request", "The request is not a JMAP request.",
                            "urn:ietf:params:jmap:error:notRequest")  # fmt: skip
        if CAPABILITY not in using:
            return _problem(400, "Bad Request", f"Missing capability {CAPABILITY}.",
                            "urn:ietf:params:jmap:error:unknownCapability")  # fmt: skip
        responses = []
        for name, args, call_id in calls:
            fault = self._fault(name)
            if fault == "http_503":
                return _problem(503, "Service Unavailable", "Temporary failure (fault injected).")
            if fault == "method_error":
                responses.append(
                    ["error", {"type": "serverFail", "description": "fault injected"}, call_id]
                )
                continue
            responses.append(self._method(account, name, args, call_id, fault))
        return _json({"methodResponses": responses, "sessionState": "s1"})

    def _fault(self, method: str) -> str | None:
        pending = self.faults.get(method)
        return pending.pop(0) if pending else None

    async def set_faults(self, request: Request) -> Response:
        spec = orjson.loads(await request.body())
        if spec.get("kind") not in FAULT_KINDS or not isinstance(spec.get("method"), str):
            return _json({"error": f"kind must be one of {FAULT_KINDS}, method a string"}, 400)
        times = int(spec.get("times", 1))
        self.faults.setdefault(spec["method"], []).extend([spec["kind"]] * times)
        return _json({"armed": self.faults})

    async def state(self, request: Request) -> Response:
        return _json({
            "domains": sorted(d["name"] for d in self.domains.values()),
            "domain_creates": self.domain_creates,
            "accounts": sorted(a["login"] for a in self.accounts.values()),
        })  # fmt: skip

    # -- methods ------------------------------------------------------------------------------

    def _method(
        self, actor: dict[str, Any], name: str, args: dict[str, Any], call_id: str,
        fault: str | None,
    ) -> list[Any]:  # fmt: skip
        kind, _, verb = name.partition("/")
        handler = getattr(self, f"_{kind.removeprefix('x:').lower()}_{verb}", None)
        if handler is None or not kind.startswith("x:"):
            return ["error", {"type": "unknownMethod"}, call_id]
        role = _ADMIN_ROLES.get(actor["roles"]["@type"])
        if role is None or (role == "domain_admin" and kind != "x:Account"):
            return [
                "error",
                {"type": "forbidden", "description": "Not allowed for this account."},
                call_id,
            ]
        if args.get("accountId") != actor["id"]:
            return ["error", {"type": "accountNotFound"}, call_id]
        result = handler(actor, args, fault)
        return [name, {"accountId": actor["id"], **result}, call_id]

    def _scope(self, actor: dict[str, Any]) -> str | None:
        """The domain a domain administrator is confined to; None for the server admin."""
        return actor["domainId"] if actor["roles"]["@type"] == "DomainAdmin" else None

    def _domain_query(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        name = (args.get("filter") or {}).get("name")
        ids = [d["id"] for d in self.domains.values() if name in (None, d["name"])]
        return {"ids": ids, "total": len(ids)}

    def _domain_get(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        ids = args.get("ids") or list(self.domains)
        found = [self._domain_view(self.domains[i]) for i in ids if i in self.domains]
        return {"list": found, "notFound": [i for i in ids if i not in self.domains], "state": "s1"}

    def _domain_set(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        created, not_created = {}, {}
        for ref, obj in (args.get("create") or {}).items():
            failure = self._domain_refusal(obj, fault)
            if failure is not None:
                not_created[ref] = failure
                continue
            domain_id = self._id("d")
            self.domains[domain_id] = {"id": domain_id, **obj}
            self.domain_creates[obj["name"]] = self.domain_creates.get(obj["name"], 0) + 1
            self._make_dkim(domain_id, obj["name"])
            created[ref] = {"id": domain_id}
        return {"created": created or None, "notCreated": not_created or None}

    def _domain_refusal(self, obj: dict[str, Any], fault: str | None) -> dict[str, Any] | None:
        if fault == "not_created":
            return {"type": "serverFail", "description": "fault injected"}
        name = obj.get("name")
        if not isinstance(name, str) or "." not in name:
            return {
                "type": "invalidProperties",
                "description": "Invalid domain name.",
                "properties": ["name"],
            }
        if any(d["name"] == name for d in self.domains.values()):
            return {"type": "alreadyExists", "description": f"Domain {name} already exists."}
        return None

    def _make_dkim(self, domain_id: str, name: str) -> None:
        key = base64.b64encode(os.urandom(294)).decode()  # the size of an RSA-2048 SPKI
        dkim_id = self._id("k")
        self.dkim[dkim_id] = {
            "id": dkim_id,
            "@type": "Dkim1RsaSha256",
            "domainId": domain_id,
            "selector": time.strftime("%Y%m", time.gmtime()) + "r",
            "publicKey": key,
            "privateKey": "****",
            "stage": "active",
        }

    def _domain_view(self, domain: dict[str, Any]) -> dict[str, Any]:
        name = domain["name"]
        lines = [
            f"{name}. 3600 IN MX 10 mail.{name}.",
            f'{name}. 3600 IN TXT "v=spf1 mx ra=postmaster -all"',
        ]
        for key in self.dkim.values():
            if key["domainId"] == domain["id"]:
                value = f"v=DKIM1; k=rsa; h=sha256; p={key['publicKey']}"
                chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
                lines.append(f"{key['selector']}._domainkey.{name}. 3600 IN TXT {chunks}")
        lines.append(
            f'_dmarc.{name}. 3600 IN TXT "v=DMARC1; p=reject; '
            f'rua=mailto:postmaster@{name}; ruf=mailto:postmaster@{name}"'
        )
        lines.append(f'_smtp._tls.{name}. 3600 IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{name}"')
        return {**domain, "dnsZoneFile": "\n".join(lines) + "\n"}

    def _dkimsignature_query(self, actor: Any, args: dict[str, Any], fault: Any
                             ) -> dict[str, Any]:  # fmt: skip
        domain_id = (args.get("filter") or {}).get("domainId")
        ids = [k["id"] for k in self.dkim.values() if domain_id in (None, k["domainId"])]
        return {"ids": ids, "total": len(ids)}

    def _dkimsignature_get(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        ids = args.get("ids") or list(self.dkim)
        return {
            "list": [self.dkim[i] for i in ids if i in self.dkim],
            "notFound": [i for i in ids if i not in self.dkim],
            "state": "s1",
        }

    def _account_query(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        filter_ = args.get("filter") or {}
        scope = self._scope(actor)
        ids = [a["id"] for a in self.accounts.values()
               if filter_.get("name") in (None, a["name"])
               and filter_.get("domainId") in (None, a["domainId"])
               and scope in (None, a["domainId"])]  # fmt: skip
        return {"ids": ids, "total": len(ids)}

    def _account_get(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        scope = self._scope(actor)
        ids = args.get("ids") or list(self.accounts)
        seen = [i for i in ids if i in self.accounts and scope in (None,
                self.accounts[i]["domainId"])]  # fmt: skip
        views = [
            {k: v for k, v in self.accounts[i].items() if k not in ("secret", "login")}
            | {
                "credentials": {"0": {"@type": "Password", "secret": "****"}},
                "emailAddress": self.accounts[i]["login"],
            }
            for i in seen
        ]
        return {"list": views, "notFound": [i for i in ids if i not in seen], "state": "s1"}

    def _account_set(self, actor: Any, args: dict[str, Any], fault: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "created": {},
            "notCreated": {},
            "updated": {},
            "notUpdated": {},
            "destroyed": [],
            "notDestroyed": {},
        }
        scope = self._scope(actor)
        for ref, obj in (args.get("create") or {}).items():
            failure = self._account_refusal(obj, scope, fault)
            if failure is not None:
                result["notCreated"][ref] = failure
                continue
            result["created"][ref] = {"id": self._add_account(obj)}
        for account_id, patch in (args.get("update") or {}).items():
            failure = self._update_account(account_id, patch, scope)
            if failure is None:
                result["updated"][account_id] = None
            else:
                result["notUpdated"][account_id] = failure
        for account_id in args.get("destroy") or []:
            account = self.accounts.get(account_id)
            if account is None or scope not in (None, account["domainId"]):
                result["notDestroyed"][account_id] = {"type": "notFound"}
            else:
                del self.accounts[account_id]
                result["destroyed"].append(account_id)
        return {k: (v or None) for k, v in result.items()}

    def _account_refusal(self, obj: dict[str, Any], scope: str | None, fault: str | None
                         ) -> dict[str, Any] | None:  # fmt: skip
        if fault == "not_created":
            return {"type": "serverFail", "description": "fault injected"}
        domain = self.domains.get(obj.get("domainId", ""))
        if domain is None:
            return {
                "type": "invalidProperties",
                "description": "Unknown domain.",
                "properties": ["domainId"],
            }
        if scope not in (None, domain["id"]):
            return {"type": "forbidden", "description": "Outside your domain."}
        secret = ((obj.get("credentials") or {}).get("0") or {}).get("secret")
        if not isinstance(obj.get("name"), str) or not isinstance(secret, str) or not secret:
            return {
                "type": "invalidProperties",
                "description": "name and a password are required.",
                "properties": ["name", "credentials"],
            }
        if obj.get("roles", {}).get("@type") == "Admin":
            return {"type": "forbidden", "description": "Cannot create server admins."}
        login = f"{obj['name']}@{domain['name']}".lower()
        if any(a["login"] == login for a in self.accounts.values()):
            return {"type": "alreadyExists", "description": f"{login} already exists."}
        return None

    def _add_account(self, obj: dict[str, Any]) -> str:
        domain = self.domains[obj["domainId"]]
        account_id = self._id("a")
        self.accounts[account_id] = {
            "id": account_id, "name": obj["name"], "domainId": domain["id"],
            "description": obj.get("description", ""), "roles": obj.get("roles", {}),
            "quotas": obj.get("quotas", {}), "isEnabled": True,
            "secret": _hash(obj["credentials"]["0"]["secret"]),
            "login": f"{obj['name']}@{domain['name']}".lower(),
        }  # fmt: skip
        return account_id

    def _update_account(self, account_id: str, patch: dict[str, Any], scope: str | None
                        ) -> dict[str, Any] | None:  # fmt: skip
        account = self.accounts.get(account_id)
        if account is None or scope not in (None, account["domainId"]):
            return {"type": "notFound"}
        for key, value in patch.items():
            if key == "credentials/0" and isinstance(value, dict) and value.get("secret"):
                account["secret"] = _hash(value["secret"])
            elif key == "quotas/maxDiskQuota" and isinstance(value, int):
                account["quotas"]["maxDiskQuota"] = value
            elif key in ("isEnabled", "description"):
                account[key] = value
            else:
                return {"type": "invalidProperties", "properties": [key]}
        return None


def create_stalwart_app() -> Starlette:
    fake = StalwartFake()
    app = Starlette(routes=[
        Route("/.well-known/jmap", fake.discover, methods=["GET"]),
        Route("/jmap/session", fake.session, methods=["GET"]),
        Route("/jmap/", fake.api, methods=["POST"]),
        Route("/_faults", fake.set_faults, methods=["POST"]),
        Route("/_state", fake.state, methods=["GET"]),
    ])  # fmt: skip
    app.state.fake = fake
    return app
