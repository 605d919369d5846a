"""Assets through the app: stored by the service, downloaded through signed URLs with no API
key, on both backends; every way a URL can be wrong answers 403, 410 or 404."""

from __future__ import annotations

import hashlib
import io
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from tests.conftest import Api, running_api
from tests.storage.conftest import chunks_of, local_only, stored_objects
from toolcallstore.db.tenants import insert_tenant
from toolcallstore.settings import Settings
from toolcallstore.storage.assets import Assets
from toolcallstore.storage.base import Asset


def png_bytes(seed: int = 1) -> bytes:
    image = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def assets_of(api: Api) -> Assets:
    found: Assets = api.app.state.services.assets  # type: ignore[attr-defined]
    return found


async def tenant_id(api: Api) -> str:
    db = api.app.state.services.db  # type: ignore[attr-defined]
    value: str = await db.fetch_val("SELECT id FROM tenants ORDER BY created_at LIMIT 1")
    return value


async def store(api: Api, data: bytes, content_type: str = "image/png", *,
                tenant: str | None = None, owner_id: str = "mg_1") -> Asset:  # fmt: skip
    return await assets_of(api).store(
        tenant_id=tenant or await tenant_id(api), livemode=False, project_id=None,
        owner_kind="media_generation", owner_id=owner_id, chunks=chunks_of(data),
        content_type=content_type,
    )  # fmt: skip


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in query.items())


async def test_a_signed_url_downloads_the_bytes_without_a_key(api: Api) -> None:
    data = png_bytes()
    asset = await store(api, data)
    url = assets_of(api).signed_url(asset)
    assert url.startswith(f"/v1/assets/{asset.id}?exp=")
    answer = await api.client.get(url)  # no Authorization header
    assert answer.status_code == 200, answer.text
    assert answer.content == data
    assert Image.open(io.BytesIO(answer.content)).size == (256, 256)
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["content-length"] == str(len(data))
    assert answer.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["x-content-type-options"] == "nosniff"
    head = await api.client.head(url)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(data))
    again = await api.client.get(url, headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304
    shown = assets_of(api).to_object(asset, ttl_s=60)
    assert shown["object"] == "asset" and shown["size"] == len(data)
    assert abs(shown["url_expires_at"] - (time.time() + 60)) < 5
    assert (await api.client.get(shown["url"])).content == data


@local_only
async def test_tampered_urls_are_refused(api: Api) -> None:
    asset = await store(api, png_bytes())
    other = await store(api, png_bytes(2))
    url = assets_of(api).signed_url(asset)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    swapped_path = url.replace(asset.id, other.id)
    later = with_query(url, exp=str(int(query["exp"]) + 3600))
    padded = with_query(url, exp="0" + query["exp"])
    wrong_kid = with_query(url, kid="k-unknown")
    bad_sig = with_query(url, sig=query["sig"][:-2] + ("AA" if query["sig"][-2:] != "AA" else "BB"))
    for bad in (
        swapped_path,
        later,
        padded,
        wrong_kid,
        bad_sig,
        f"/v1/assets/{asset.id}",
        with_query(url, sig="é"),
        with_query(url, exp="1e9"),
    ):
        answer = await api.client.get(bad)
        assert answer.status_code == 403, bad
        assert answer.json()["error"]["code"] == "invalid_signature"
        assert answer.content.find(b"\x89PNG") == -1


@local_only
async def test_an_expired_url_is_gone(api: Api) -> None:
    asset = await store(api, png_bytes())
    url = assets_of(api).signed_url(asset, ttl_s=-1)
    answer = await api.client.get(url)
    assert answer.status_code == 410
    assert answer.json()["error"]["code"] == "expired"
    # An expired URL whose expiry was moved forward by hand is a bad signature, not a download.
    forged = with_query(url, exp=str(int(parse_qs(urlsplit(url).query)["exp"][0]) + 7200))
    assert (await api.client.get(forged)).status_code == 403


@local_only
async def test_another_tenants_asset_with_a_signature_for_mine(api: Api) -> None:
    db = api.app.state.services.db  # type: ignore[attr-defined]
    async with db.transaction() as tx:
        other_tenant = (await insert_tenant(tx, "Other"))["id"]
    mine = await store(api, png_bytes())
    theirs = await store(api, png_bytes(3), tenant=other_tenant, owner_id="mg_2")
    my_url = assets_of(api).signed_url(mine)
    answer = await api.client.get(my_url.replace(mine.id, theirs.id))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "invalid_signature"
    assert await assets_of(api).get(theirs.id, tenant_id=await tenant_id(api)) is None


async def test_ranges(api: Api) -> None:
    data = png_bytes()
    asset = await store(api, data)
    url = assets_of(api).signed_url(asset)
    part = await api.client.get(url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206
    assert part.content == data[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(data)}"
    assert part.headers["content-length"] == "1024"
    suffix = await api.client.get(url, headers={"Range": "bytes=-500"})
    assert (suffix.status_code, suffix.content) == (206, data[-500:])
    assert suffix.headers["content-range"] == f"bytes {len(data) - 500}-{len(data) - 1}/{len(data)}"
    tail = await api.client.get(url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert (tail.status_code, tail.content) == (206, data[-10:])
    past = await api.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    assert past.json()["error"]["code"] == "range_not_satisfiable"
    # A range we do not read (several, or malformed) gets the whole asset, as RFC 9110 allows.
    for header in ("bytes=0-1,5-9", "bytes=abc", "items=0-5", "bytes=9-3"):
        whole = await api.client.get(url, headers={"Range": header})
        assert (whole.status_code, whole.content) == (200, data), header
    # If-Range naming another version: the whole asset.
    stale = await api.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert (stale.status_code, len(stale.content)) == (200, len(data))


async def test_a_failing_store_leaves_no_row_and_no_object(api: Api, settings: Settings) -> None:
    async def broken() -> Any:
        yield b"\x89PNG\r\n\x1a\n" + os.urandom(100_000)
        raise ConnectionResetError("provider download cut")

    with pytest.raises(ConnectionResetError):
        await assets_of(api).store(
            tenant_id=await tenant_id(api), livemode=False, project_id=None,
            owner_kind="media_generation", owner_id="mg_9", chunks=broken(),
            content_type="image/png",
        )  # fmt: skip
    assert await assets_of(api).list_for_owner("media_generation", "mg_9") == []
    db = api.app.state.services.db  # type: ignore[attr-defined]
    assert await db.fetch_val("SELECT COUNT(*) FROM assets") == 0
    assert stored_objects(settings) == []


@local_only
async def test_a_row_that_cannot_be_written_takes_its_object_with_it(
    api: Api, settings: Settings
) -> None:
    with pytest.raises(Exception, match="(?i)foreign|constraint"):
        await store(api, png_bytes(), tenant="ten_doesnotexist")  # the row's tenant FK fails
    assert stored_objects(settings) == []


async def test_deleting_an_owners_assets_removes_objects_and_rows(
    api: Api, settings: Settings
) -> None:
    first = await store(api, png_bytes(), owner_id="mg_5")
    await store(api, png_bytes(2), owner_id="mg_5")
    kept = await store(api, png_bytes(3), owner_id="mg_6")
    url = assets_of(api).signed_url(first)
    assert [a.id for a in await assets_of(api).list_for_owner("media_generation", "mg_5")] == [
        first.id,
        (await assets_of(api).list_for_owner("media_generation", "mg_5"))[1].id,
    ]
    assert await assets_of(api).delete_for_owner("media_generation", "mg_5") == 2
    assert await assets_of(api).list_for_owner("media_generation", "mg_5") == []
    answer = await api.client.get(url)  # a valid signature for an asset that is gone
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
    assert len(stored_objects(settings)) == 1
    assert (await api.client.get(assets_of(api).signed_url(kept))).status_code == 200


@local_only
async def test_html_is_never_served_as_html(api: Api) -> None:
    asset = await store(api, b"<html><script>alert(1)</script>", "text/html")
    answer = await api.client.get(assets_of(api).signed_url(asset))
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"] == "attachment"


async def test_publish_gives_a_permanent_url_until_unpublished(api: Api) -> None:
    data = png_bytes()
    asset = await store(api, data)
    url = await assets_of(api).publish(asset.id)
    assert url.startswith(f"/p/{asset.id}/") and url.endswith(".png")
    assert await assets_of(api).publish(asset.id) == url  # publishing again: the same URL
    answer = await api.client.get(url)
    assert (answer.status_code, answer.content) == (200, data)
    assert answer.headers["cache-control"].startswith("public")
    guessed = url[: -len(".png") - 1] + ("A" if url[-5] != "A" else "B") + ".png"
    assert (await api.client.get(guessed)).status_code == 404
    assert (await api.client.get(f"/p/{asset.id}/x.png")).status_code == 404
    assert await assets_of(api).unpublish(asset.id) is True
    assert (await api.client.get(url)).status_code == 404
    assert (await assets_of(api).get(asset.id)) is not None  # unpublishing keeps the asset


@local_only
async def test_verify_route_for_caddy_forward_auth(api: Api, settings: Settings) -> None:
    asset = await store(api, png_bytes())
    url = assets_of(api).signed_url(asset)
    ok = await api.client.get("/v1/assets/verify", headers={"X-Forwarded-Method": "GET",
                                                             "X-Forwarded-Uri": url})  # fmt: skip
    assert ok.status_code == 200
    assert ok.headers["x-asset-key"] == asset.storage_key
    assert ok.headers["x-asset-content-type"] == "image/png"
    tampered = await api.client.get(
        "/v1/assets/verify", headers={"X-Forwarded-Uri": with_query(url, kid="zz")}
    )
    assert tampered.status_code == 403
    expired = assets_of(api).signed_url(asset, ttl_s=-1)
    gone = await api.client.get("/v1/assets/verify", headers={"X-Forwarded-Uri": expired})
    assert gone.status_code == 410
    other = await api.client.get("/v1/assets/verify", headers={"X-Forwarded-Uri": "/v1/keys"})
    assert other.status_code == 404


@local_only
async def test_public_url_setting_makes_absolute_urls(settings: Settings) -> None:
    async with running_api(settings.with_(public_url="https://store.example/")) as api:
        asset = await store(api, png_bytes())
        url = assets_of(api).signed_url(asset)
        assert url.startswith(f"https://store.example/v1/assets/{asset.id}?exp=")
        answer = await api.client.get(url.removeprefix("https://store.example"))
        assert answer.status_code == 200
        published = await assets_of(api).publish(asset.id)
        assert published.startswith(f"https://store.example/p/{asset.id}/")
