"""The `Assets` service: stored objects with their rows, signed URLs, publishing, retention.

An asset is written object first, row second; a failure at either step removes the object, so
no row ever names a missing object and no object outlives a failed store. Deleting goes the
other way round per asset (object, then row), so a retried delete finds what is left to do.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio

from toolcallstore.db import Database, Row
from toolcallstore.errors import NotFound
from toolcallstore.ids import new_id, now_us, random_base62
from toolcallstore.queue.worker import JobContext, Registry
from toolcallstore.storage.base import Asset, Storage
from toolcallstore.storage.keys import extension_of, object_key
from toolcallstore.storage.signing import SigningKeys

log = logging.getLogger("toolcallstore.storage")

ASSET_PATH = "/v1/assets/"
PUBLIC_PATH = "/p/"
PUBLIC_TOKEN_LENGTH = 32
PRUNE_BATCH = 500
US = 1_000_000


PRUNE_JOB_TYPE = "assets.prune"


class AssetTooLarge(ValueError):
    pass


def register_asset_jobs(registry: Registry, assets: Assets) -> None:
    async def prune(ctx: JobContext) -> dict[str, int]:
        return {"assets_pruned": await assets.prune()}

    registry.register(PRUNE_JOB_TYPE, prune, max_attempts=1)


class Assets:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        *,
        public_url: str = "",
        url_ttl_s: int = 3600,
        retention_days: int = 0,
        max_bytes: int = 0,
    ) -> None:
        self.db = db
        self.storage = storage
        self.base = public_url.rstrip("/")
        self.url_ttl_s = url_ttl_s
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._keys: SigningKeys | None = None

    @property
    def keys(self) -> SigningKeys:
        if self._keys is None:
            raise RuntimeError("Assets.start() loads the signing keys in the app's lifespan")
        return self._keys

    def use_keys(self, keys: SigningKeys) -> None:
        self._keys = keys

    async def store(
        self,
        *,
        tenant_id: str,
        livemode: bool,
        project_id: str | None,
        owner_kind: str,
        owner_id: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
    ) -> Asset:
        """Write the object, then its row; a failure at any point leaves neither."""
        asset_id = new_id("asset")
        key = object_key(tenant_id, asset_id, content_type)
        try:
            stored = await self.storage.put(key, self._limited(chunks), content_type)
            row = {
                "id": asset_id, "tenant_id": tenant_id, "livemode": int(livemode),
                "project_id": project_id, "owner_kind": owner_kind, "owner_id": owner_id,
                "storage": self.storage.name, "storage_key": key,
                "content_type": stored.content_type, "size": stored.size,
                "sha256": stored.sha256, "created_at": now_us(),
            }  # fmt: skip
            async with self.db.transaction() as tx:
                await tx.execute(
                    f"INSERT INTO assets ({', '.join(row)}) VALUES"
                    f" ({', '.join(':' + name for name in row)})",
                    row,
                )
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.storage.delete(key)
            raise
        return self._asset({**row, "public_token": None})

    async def _limited(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if self.max_bytes and size > self.max_bytes:
                raise AssetTooLarge(f"the asset exceeds {self.max_bytes} bytes")
            yield chunk

    async def get(self, asset_id: str, *, tenant_id: str | None = None) -> Asset | None:
        row = await self.db.fetch_one("SELECT * FROM assets WHERE id = :id", {"id": asset_id})
        if row is None or (tenant_id is not None and row["tenant_id"] != tenant_id):
            return None
        return self._asset(row)

    async def list_for_owner(self, owner_kind: str, owner_id: str) -> list[Asset]:
        rows = await self.db.fetch_all(
            "SELECT * FROM assets WHERE owner_kind = :k AND owner_id = :o ORDER BY id",
            {"k": owner_kind, "o": owner_id},
        )
        return [self._asset(r) for r in rows]

    async def delete_for_owner(self, owner_kind: str, owner_id: str) -> int:
        """Delete the owner's assets (objects and rows); returns how many rows went."""
        deleted = 0
        for asset in await self.list_for_owner(owner_kind, owner_id):
            deleted += await self._delete(asset.id, asset.storage_key)
        return deleted

    async def _delete(self, asset_id: str, key: str) -> int:
        await self.storage.delete(key)
        async with self.db.transaction() as tx:
            rows = await tx.fetch_all(
                "DELETE FROM assets WHERE id = :id RETURNING id", {"id": asset_id}
            )
        return len(rows)

    def signed(self, asset: Asset | str, *, ttl_s: int | None = None) -> tuple[str, int]:
        """(URL, its expiry in unix seconds): GET it without an API key until then."""
        asset_id = asset if isinstance(asset, str) else asset.id
        path = ASSET_PATH + asset_id
        exp = int(time.time()) + (self.url_ttl_s if ttl_s is None else ttl_s)
        return f"{self.base}{path}?{self.keys.sign(path, exp)}", exp

    def signed_url(self, asset: Asset | str, *, ttl_s: int | None = None) -> str:
        return self.signed(asset, ttl_s=ttl_s)[0]

    def to_object(self, asset: Asset, *, ttl_s: int | None = None) -> dict[str, Any]:
        """The asset as the API shows it, with a fresh signed URL."""
        url, expires_at = self.signed(asset, ttl_s=ttl_s)
        return {"id": asset.id, "object": "asset", "content_type": asset.content_type,
                "size": asset.size, "sha256": asset.sha256, "url": url,
                "url_expires_at": expires_at, "published_url": asset.published_url,
                "created": asset.created}  # fmt: skip

    def verify(self, path: str, query: Mapping[str, str]) -> None:
        """Raises 403 `invalid_signature` or 410 `expired` unless `query` signs `path`."""
        self.keys.verify(path, query)

    async def publish(self, asset_id: str) -> str:
        """The asset's permanent public URL (the same one again if already published)."""
        async with self.db.transaction() as tx:
            row = await tx.fetch_one(
                "UPDATE assets SET public_token = COALESCE(public_token, :token),"
                " published_at = COALESCE(published_at, :now) WHERE id = :id RETURNING *",
                {"token": random_base62(PUBLIC_TOKEN_LENGTH), "now": now_us(), "id": asset_id},
            )
        if row is None:
            raise NotFound("No such asset.", param="asset_id")
        url = self._asset(row).published_url
        assert url is not None
        return url

    async def unpublish(self, asset_id: str) -> bool:
        """Retire the public URL (a later publish makes a new one); False if not published."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch_all(
                "UPDATE assets SET public_token = NULL, published_at = NULL"
                " WHERE id = :id AND public_token IS NOT NULL RETURNING id",
                {"id": asset_id},
            )
        return bool(rows)

    async def published(self, asset_id: str, name: str) -> Asset | None:
        """The asset whose public URL ends `/p/<asset_id>/<name>`, if it is published."""
        asset = await self.get(asset_id)
        if asset is None or asset.published_url is None:
            return None
        expected = asset.published_url.rsplit("/", 1)[1]
        return asset if hmac.compare_digest(expected.encode(), name.encode()) else None

    async def prune(self, now: int | None = None) -> int:
        """Delete unpublished assets older than the retention; published ones stay until
        unpublished (their URL was promised to be permanent)."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now_us() if now is None else now) - self.retention_days * 86_400 * US
        pruned = 0
        while True:
            rows = await self.db.fetch_all(
                "SELECT id, storage_key FROM assets WHERE public_token IS NULL"
                " AND created_at < :cutoff ORDER BY created_at LIMIT :n",
                {"cutoff": cutoff, "n": PRUNE_BATCH},
            )
            for row in rows:
                pruned += await self._delete(row["id"], row["storage_key"])
            if len(rows) < PRUNE_BATCH:
                return pruned

    def _asset(self, row: Row | dict[str, Any]) -> Asset:
        token = row["public_token"]
        published = None
        if token is not None:
            name = token + extension_of(row["content_type"])
            published = f"{self.base}{PUBLIC_PATH}{row['id']}/{name}"
        return Asset(
            id=row["id"], tenant_id=row["tenant_id"], livemode=bool(row["livemode"]),
            project_id=row["project_id"], owner_kind=row["owner_kind"],
            owner_id=row["owner_id"], storage_key=row["storage_key"],
            content_type=row["content_type"], size=int(row["size"]), sha256=row["sha256"],
            created=int(row["created_at"]) // US, published_url=published,
        )  # fmt: skip
