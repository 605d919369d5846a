"""Identifiers, secrets and the clock: time-ordered ids, base62 secrets, epoch microseconds."""

from __future__ import annotations

import secrets
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def now_us() -> int:
    """Wall-clock time in integer epoch microseconds: how every *_at column is stored."""
    return time.time_ns() // 1000


def random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def new_id(prefix: str) -> str:
    """`prefix_` + 8 chars of millisecond time + 14 random chars: sorts by creation time."""
    # One randbits call, not 14 secrets.choice calls: ids are made on every billable write.
    return f"{prefix}_{_base62(time.time_ns() // 1_000_000, 8)}{_base62(secrets.randbits(84), 14)}"


def new_request_id() -> str:
    # On every request: one urandom call instead of 24 secrets.choice calls.
    return "req_" + secrets.token_urlsafe(18)
