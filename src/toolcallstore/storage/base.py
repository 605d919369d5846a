"""The storage Protocol and the asset record.

Object keys are made by us from ids (never from user input). An asset is one stored object with
its owner (a media generation), tenant, mode and project, served through signed expiring URLs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    content_type: str


class Storage(Protocol):
    name: str  # "local" or "s3"

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], content_type: str
    ) -> StoredObject: ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end] (inclusive end, as in a Range header); raises KeyError if gone."""
        ...

    async def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine when there is one (lets the app send it with sendfile)."""
        ...


@dataclass(frozen=True)
class Asset:
    id: str
    tenant_id: str
    livemode: bool
    project_id: str | None
    owner_kind: str  # "media_generation"
    owner_id: str
    storage_key: str
    content_type: str
    size: int
    sha256: str
    created: int
    published_url: str | None = None
