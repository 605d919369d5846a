"""Signed expiring asset URLs (reference/controls.md §6).

`sig = b64url(HMAC-SHA256(key[kid], "GET\\n<path>\\n<exp>\\n<kid>"))` without padding, sent as
`?exp=<unix seconds>&kid=<kid>&sig=<sig>`. The first key signs; every listed key verifies, so a
key is rotated by putting the new one first and dropping the old one once its URLs expired.
A bad or tampered signature or an unknown kid is 403 `invalid_signature`; a valid one past its
expiry is 410 `expired`: the expiry is only believed once the signature holds.
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from toolcallstore.errors import ConfigError, Gone, PermissionDenied

KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
ENV_NAME = "TOOLCALLSTORE_ASSET_SIGNING_KEYS"
MIN_SECRET_BYTES = 16
MAX_EXP_DIGITS = 12


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed_message(path: str, exp: str, kid: str) -> bytes:
    return f"GET\n{path}\n{exp}\n{kid}".encode()


def invalid_signature() -> PermissionDenied:
    return PermissionDenied(
        "This asset URL's signature is not valid: ask for a new URL.", code="invalid_signature"
    )


@dataclass(frozen=True)
class SigningKeys:
    keys: Mapping[str, bytes] = field(repr=False)
    current: str

    def __repr__(self) -> str:  # never the secrets
        return f"SigningKeys(kids={list(self.keys)}, current={self.current!r})"

    @classmethod
    def parse(cls, raw: str) -> SigningKeys:
        """`kid:secret[,kid:secret...]`; errors name the entry's position, never the secret."""
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(filter(None, (e.strip() for e in raw.split(","))), 1):
            kid, sep, secret = entry.partition(":")
            where = f"{ENV_NAME} entry {position}"
            if not sep or not KID.match(kid):
                raise ConfigError(f"{where} is not kid:secret with a kid of 1-32 [A-Za-z0-9_.-]")
            if kid in keys:
                raise ConfigError(f"{where}: key id '{kid}' appears twice")
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"{where}: the secret must be at least 16 bytes")
            keys[kid] = secret.encode()
        if not keys:
            raise ConfigError(f"{ENV_NAME} lists no key")
        return cls(keys, next(iter(keys)))

    @classmethod
    def derived(cls, subkeys: Mapping[str, bytes]) -> SigningKeys:
        """From the master keys' subkeys (Keyring.derive, current first): kid `m-<kid>`, so
        rotating the master key rotates these."""
        keys = {f"m-{kid}"[:32]: key for kid, key in subkeys.items()}
        return cls(keys, next(iter(keys)))

    def sign(self, path: str, exp: int) -> str:
        """The query string (`exp=..&kid=..&sig=..`) that lets anyone GET `path` until `exp`."""
        kid = self.current
        digest = hmac.digest(self.keys[kid], signed_message(path, str(exp), kid), "sha256")
        return f"exp={exp}&kid={kid}&sig={_b64url(digest)}"

    def verify(self, path: str, query: Mapping[str, str], now: float | None = None) -> None:
        """Returns when `query` signs `path` and has not expired; raises the 403 or the 410."""
        exp_raw, kid, sig = query.get("exp", ""), query.get("kid", ""), query.get("sig", "")
        key = self.keys.get(kid)
        if key is None or not (exp_raw.isascii() and exp_raw.isdigit()):
            raise invalid_signature()
        if len(exp_raw) > MAX_EXP_DIGITS:
            raise invalid_signature()
        expected = _b64url(hmac.digest(key, signed_message(path, exp_raw, kid), "sha256"))
        # Both sides as bytes: compare_digest refuses non-ASCII str instead of answering False.
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise invalid_signature()
        if int(exp_raw) <= (time.time() if now is None else now):
            raise Gone("This asset URL has expired: ask for a new one.", code="expired")
