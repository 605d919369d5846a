"""The SSRF guard: where a webhook may be sent.

Live endpoints must be https and every address their host resolves to must be public; test
endpoints may also use http and loopback (a developer receiving events locally), never private
or link-local networks. URLs are checked when an endpoint is saved and again at every delivery,
where the resolver refuses a host with any address outside the policy and the connection goes
to an address it returned (no second lookup to rebind). Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedDestination(OSError):
    """A host that resolves to an address the mode's policy refuses."""


def address_allowed(address: IPAddress, *, livemode: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return not livemode
    return address.is_global and not address.is_multicast


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def url_problem(url: str, *, livemode: bool) -> str | None:
    """Why `url` may not receive this mode's webhooks, or None. Host names are resolved only
    at delivery time (see `GuardedResolver`)."""
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"the URL is malformed ({exc})"
    allowed_schemes = ("https",) if livemode else ("https", "http")
    if parts.scheme not in allowed_schemes:
        mode = "live" if livemode else "test"
        return f"{mode}-mode endpoints must use {' or '.join(allowed_schemes)}"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry credentials (they would show wherever the URL does)"
    if port == 0:
        return "the URL's port must be 1-65535"
    literal = _literal_address(host)
    if literal is not None and not address_allowed(literal, livemode=livemode):
        where = "a public address" if livemode else "a public or loopback address"
        return f"{host} is not {where}"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves like the system, then refuses the host if any address breaks the policy."""

    def __init__(self, *, livemode: bool) -> None:
        self._livemode = livemode
        self._system = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._system.resolve(host, port, family)
        for result in found:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            if not address_allowed(address, livemode=self._livemode):
                raise BlockedDestination(
                    f"{host} resolves to {address}, which is not a permitted address for"
                    f" {'live' if self._livemode else 'test'}-mode webhooks"
                )
        if not found:
            raise BlockedDestination(f"{host} resolves to no address")
        return found

    async def close(self) -> None:
        await self._system.close()
