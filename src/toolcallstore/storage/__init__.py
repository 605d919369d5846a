"""Where generated assets live: a Storage Protocol with local-disk and S3-compatible backends.

`open_storage(settings)` picks the backend (TOOLCALLSTORE_STORAGE=local|s3);
`load_signing_keys` finds the keys of signed asset URLs once the database is open.
"""

from __future__ import annotations

from toolcallstore.byok import Keyring
from toolcallstore.db import Database
from toolcallstore.errors import ConfigError
from toolcallstore.ids import now_us, random_base62
from toolcallstore.settings import Settings
from toolcallstore.storage.base import Asset, Storage, StoredObject
from toolcallstore.storage.signing import SigningKeys

__all__ = ["Asset", "Storage", "StoredObject", "load_signing_keys", "open_storage"]

SIGNING_PURPOSE = b"toolcallstore asset signing v1"
INSTANCE_SECRET = "asset_signing_key"


def open_storage(settings: Settings) -> Storage:
    if settings.storage == "local":
        from toolcallstore.storage.local import LocalDiskStorage

        return LocalDiskStorage(settings.resolved_assets_dir())
    if settings.storage == "s3":
        from toolcallstore.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    raise ConfigError(f"TOOLCALLSTORE_STORAGE={settings.storage!r} is not 'local' or 's3'")


async def load_signing_keys(
    db: Database, settings: Settings, keyring: Keyring | None
) -> SigningKeys:
    """TOOLCALLSTORE_ASSET_SIGNING_KEYS; else derived from TOOLCALLSTORE_MASTER_KEY; else one
    random key the first process stores in the database for every process to share."""
    if settings.asset_signing_keys:
        return SigningKeys.parse(settings.asset_signing_keys)
    if keyring is not None:
        return SigningKeys.derived(keyring.derive(SIGNING_PURPOSE))
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO instance_secrets (name, value, created_at) VALUES (:n, :v, :t)"
            " ON CONFLICT (name) DO NOTHING",
            {"n": INSTANCE_SECRET, "v": random_base62(43), "t": now_us()},
        )
    secret = await db.fetch_val(
        "SELECT value FROM instance_secrets WHERE name = :n", {"n": INSTANCE_SECRET}
    )
    return SigningKeys({"db1": str(secret).encode()}, "db1")
