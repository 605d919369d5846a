"""Object keys, and what a stored object's bytes say about it (sha256, size, content type).

A key is `<tenant_id>/<asset_id><ext>`: our ids only, checked against one pattern before any
backend sees it, so no user text ever becomes a path or an S3 key.
"""

from __future__ import annotations

import hashlib
import re

from toolcallstore.storage.base import StoredObject

KEY = re.compile(r"^[A-Za-z0-9_]{1,64}/[A-Za-z0-9_]{1,64}(\.[a-z0-9]{1,8})?$")

# The types an asset is served as (anything else is application/octet-stream, as a download):
# serving text/html or SVG from the API's origin would let a provider's output run script there.
SERVABLE = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "application/octet-stream": ".bin",
}
OCTET_STREAM = "application/octet-stream"


class InvalidKey(ValueError):
    pass


def check_key(key: str) -> str:
    if not KEY.match(key):
        raise InvalidKey(f"not an object key made by the store: {key[:80]!r}")
    return key


def object_key(tenant_id: str, asset_id: str, content_type: str) -> str:
    return check_key(f"{tenant_id}/{asset_id}{extension_of(content_type)}")


def extension_of(content_type: str) -> str:
    return SERVABLE.get(content_type, ".bin")


def sniff(head: bytes) -> str | None:
    """The media type the first bytes announce, for the types we serve."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return None


def served_type(declared: str, head: bytes) -> str:
    """What the bytes are when they say so; else the declared type if we serve it; else a
    download."""
    found = sniff(head)
    if found is not None:
        return found
    base = declared.split(";", 1)[0].strip().lower()
    return base if base in SERVABLE else OCTET_STREAM


class ObjectDigest:
    """sha256, size and content type of an object, computed as its chunks stream past."""

    SNIFF_BYTES = 16

    def __init__(self, declared_type: str) -> None:
        self.declared_type = declared_type
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.head = b""

    def update(self, chunk: bytes) -> None:
        if len(self.head) < self.SNIFF_BYTES:
            self.head += chunk[: self.SNIFF_BYTES - len(self.head)]
        self.sha256.update(chunk)
        self.size += len(chunk)

    @property
    def content_type(self) -> str:
        return served_type(self.declared_type, self.head)

    def stored(self, key: str) -> StoredObject:
        return StoredObject(key, self.size, self.sha256.hexdigest(), self.content_type)
