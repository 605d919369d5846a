"""The two Storage backends on their own: the same round trip on both, atomic writes, keys."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.storage.conftest import chunks_of, s3_client, stored_objects
from toolcallstore.settings import Settings
from toolcallstore.storage import open_storage
from toolcallstore.storage.keys import InvalidKey
from toolcallstore.storage.local import LocalDiskStorage
from toolcallstore.storage.s3 import PART_SIZE

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)


class StreamBroke(Exception):
    pass


async def failing_after(data: bytes) -> AsyncIterator[bytes]:
    async for chunk in chunks_of(data):
        yield chunk
    raise StreamBroke("the provider's download was cut")


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_round_trip_with_digest_and_ranges(settings: Settings) -> None:
    storage = open_storage(settings)
    stored = await storage.put("ten_A/asset_1.png", chunks_of(PNG), "image/png")
    assert (stored.size, stored.content_type) == (len(PNG), "image/png")
    assert stored.sha256 == hashlib.sha256(PNG).hexdigest()
    assert await read_all(storage.open("ten_A/asset_1.png")) == PNG
    assert await read_all(storage.open("ten_A/asset_1.png", 100, 199)) == PNG[100:200]
    assert await read_all(storage.open("ten_A/asset_1.png", len(PNG) - 5)) == PNG[-5:]
    await storage.delete("ten_A/asset_1.png")
    with pytest.raises(KeyError):
        await read_all(storage.open("ten_A/asset_1.png"))
    await storage.delete("ten_A/asset_1.png")  # deleting twice is fine (a retried delete)
    assert stored_objects(settings) == []


async def test_content_type_comes_from_the_bytes(settings: Settings) -> None:
    storage = open_storage(settings)
    said_png = await storage.put("ten_A/asset_2.png", chunks_of(b"<html><script>"), "image/png")
    html = await storage.put("ten_A/asset_3.bin", chunks_of(b"<html><script>"), "text/html")
    jpeg = await storage.put("ten_A/asset_4.jpg", chunks_of(b"\xff\xd8\xff\xe0" + PNG[8:]), "")
    assert said_png.content_type == "image/png"  # a type we serve, and nothing contradicts it
    assert html.content_type == "application/octet-stream"  # never served as HTML
    assert jpeg.content_type == "image/jpeg"


async def test_a_failing_stream_leaves_no_object(settings: Settings) -> None:
    storage = open_storage(settings)
    # Past one multipart part on S3, so that an upload was started and must be aborted.
    with pytest.raises(StreamBroke):
        await storage.put("ten_A/asset_5.png", failing_after(os.urandom(PART_SIZE + 1)), "")
    assert stored_objects(settings) == []
    with pytest.raises(KeyError):
        await read_all(storage.open("ten_A/asset_5.png"))
    if settings.storage == "s3":
        uploads = s3_client(settings.s3_endpoint_url).list_multipart_uploads(
            Bucket=settings.s3_bucket, Prefix=settings.s3_prefix)  # fmt: skip
        assert uploads.get("Uploads", []) == []


async def test_a_large_object_goes_up_in_parts(settings: Settings) -> None:
    storage = open_storage(settings)
    data = os.urandom(PART_SIZE * 2 + 12_345)
    stored = await storage.put("ten_A/asset_6.mp4", chunks_of(data, 1 << 20), "video/mp4")
    assert stored.size == len(data)
    assert (
        await read_all(storage.open("ten_A/asset_6.mp4", PART_SIZE - 3, PART_SIZE + 2))
        == (data[PART_SIZE - 3 : PART_SIZE + 3])
    )
    assert await read_all(storage.open("ten_A/asset_6.mp4")) == data


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "/abs/x",
        "ten_A/../../x",
        "a/b/c",
        "ten A/x",
        "ten_A/x.PNG",
        "ten_A/",
        "ten_A/.hidden",
        "ten_A/x\x00",
    ],
)
async def test_keys_other_than_ours_never_reach_a_backend(settings: Settings, key: str) -> None:
    storage = open_storage(settings)
    with pytest.raises(InvalidKey):
        await storage.put(key, chunks_of(b"x"), "image/png")
    with pytest.raises(InvalidKey):
        await storage.delete(key)
    assert stored_objects(settings) == []


async def test_local_files_are_owner_only_and_written_in_place(tmp_path: Path) -> None:
    storage = LocalDiskStorage(tmp_path / "assets")
    await storage.put("ten_A/asset_7.png", chunks_of(PNG), "image/png")
    path = tmp_path / "assets" / "ten_A" / "asset_7.png"
    assert storage.local_path("ten_A/asset_7.png") == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "assets").stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["asset_7.png"]  # no temp file left
