"""Signing keys (rotation, derivation from the master key, the shared database key) and the
retention that prunes old unpublished assets (objects and rows) through the assets.prune job."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time

import pytest

from tests.conftest import running_api
from tests.storage.conftest import local_only, stored_objects
from tests.storage.test_signed_urls import assets_of, png_bytes, store, with_query
from toolcallstore.errors import ConfigError
from toolcallstore.queue.store import NewJob
from toolcallstore.settings import Settings
from toolcallstore.storage import open_storage
from toolcallstore.storage.assets import PRUNE_JOB_TYPE
from toolcallstore.storage.signing import SigningKeys

OLD = "old:" + "o" * 32
NEW = "new:" + "n" * 32
MASTER = "mk1:" + base64.b64encode(os.urandom(32)).decode()
MASTER2 = "mk2:" + base64.b64encode(os.urandom(32)).decode()


def signed_by_hand(asset_id: str, secret: bytes, kid: str, exp: int) -> str:
    """A URL signed from the documented formula alone, not with the server's code."""
    path = f"/v1/assets/{asset_id}"
    mac = hmac.new(secret, f"GET\n{path}\n{exp}\n{kid}".encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return f"{path}?exp={exp}&kid={kid}&sig={sig}"


@local_only
async def test_an_old_key_verifies_while_it_is_listed(settings: Settings) -> None:
    data = png_bytes()
    async with running_api(settings.with_(asset_signing_keys=OLD)) as api:
        asset = await store(api, data)
        old_url = assets_of(api).signed_url(asset)
        assert "kid=old" in old_url
        by_hand = signed_by_hand(asset.id, b"o" * 32, "old", int(time.time()) + 60)
        assert (await api.client.get(by_hand)).content == data
    async with running_api(settings.with_(asset_signing_keys=f"{NEW},{OLD}")) as api:
        new_url = assets_of(api).signed_url(asset)
        assert "kid=new" in new_url  # the first key signs
        assert (await api.client.get(new_url)).content == data
        assert (await api.client.get(old_url)).content == data  # still listed: still valid
        # A signature of the old key presented under the new key's id is no signature.
        assert (await api.client.get(with_query(old_url, kid="new"))).status_code == 403
    async with running_api(settings.with_(asset_signing_keys=NEW)) as api:
        answer = await api.client.get(old_url)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "invalid_signature"
        assert (await api.client.get(new_url)).status_code == 200


@local_only
async def test_keys_derived_from_the_master_key_rotate_with_it(settings: Settings) -> None:
    async with running_api(settings.with_(master_key=MASTER)) as api:
        asset = await store(api, png_bytes())
        url = assets_of(api).signed_url(asset)
        assert "kid=m-mk1" in url
        assert MASTER.split(":", 1)[1] not in url
        assert (await api.client.get(url)).status_code == 200
    async with running_api(settings.with_(master_key=f"{MASTER2},{MASTER}")) as api:
        assert "kid=m-mk2" in assets_of(api).signed_url(asset)
        assert (await api.client.get(url)).status_code == 200


@local_only
async def test_without_keys_every_process_shares_one_stored_key(settings: Settings) -> None:
    async with running_api(settings) as first, running_api(settings) as second:
        asset = await store(first, png_bytes())
        url = assets_of(first).signed_url(asset)
        assert "kid=db1" in url
        assert (await second.client.get(url)).status_code == 200  # another process verifies it
    async with running_api(settings) as restarted:
        assert (await restarted.client.get(url)).status_code == 200  # and after a restart


async def test_retention_prunes_old_unpublished_assets(settings: Settings) -> None:
    async with running_api(settings.with_(asset_retention_days=7, job_poll_ms=50)) as api:
        old = await store(api, png_bytes(), owner_id="mg_old")
        old_published = await store(api, png_bytes(2), owner_id="mg_pub")
        recent = await store(api, png_bytes(3), owner_id="mg_new")
        public_url = await assets_of(api).publish(old_published.id)
        old_signed = assets_of(api).signed_url(old)
        db = api.app.state.services.db  # type: ignore[attr-defined]
        eight_days_ago = (int(time.time()) - 8 * 86_400) * 1_000_000
        async with db.transaction() as tx:
            await tx.execute(
                "UPDATE assets SET created_at = :t WHERE id IN (:a, :b)",
                {"t": eight_days_ago, "a": old.id, "b": old_published.id},
            )
        assert len(stored_objects(settings)) == 3
        jobs = api.app.state.services.jobs  # type: ignore[attr-defined]
        job, _ = await jobs.enqueue(NewJob(PRUNE_JOB_TYPE, {}, max_attempts=1))
        for _ in range(200):
            done = await db.fetch_one("SELECT state, result FROM jobs WHERE id = :id",
                                      {"id": job.id})  # fmt: skip
            if done is not None and done["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        assert done is not None and done["state"] == "succeeded", done
        assert '"assets_pruned":1' in done["result"].replace(" ", "")
        assert await assets_of(api).get(old.id) is None
        assert (await api.client.get(old_signed)).status_code == 404
        assert await assets_of(api).get(old_published.id) is not None  # published: kept
        assert (await api.client.get(public_url)).status_code == 200
        assert await assets_of(api).get(recent.id) is not None
        assert len(stored_objects(settings)) == 2
        assert old.storage_key.split("/")[-1] not in " ".join(stored_objects(settings))


def test_bad_storage_and_key_settings_stop_start_up_without_showing_a_secret() -> None:
    with pytest.raises(ConfigError, match="'local' or 's3'"):
        open_storage(Settings(storage="ftp"))
    with pytest.raises(ConfigError, match="TOOLCALLSTORE_S3_BUCKET"):
        open_storage(Settings(storage="s3"))
    for raw, needle in (("k1:short", "16 bytes"), ("no-colon-" + "x" * 20, "kid:secret"),
                        (f"{OLD},{OLD}", "appears twice"), (" , ", "no key")):  # fmt: skip
        with pytest.raises(ConfigError, match=needle) as refused:
            SigningKeys.parse(raw)
        assert "o" * 16 not in str(refused.value) and "short" not in str(refused.value)
    assert "o" * 16 not in repr(SigningKeys.parse(OLD))
    assert "o" * 16 not in repr(Settings(asset_signing_keys=OLD))
