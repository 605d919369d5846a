"""The two Storage backends on their own: the same round trip on both, atomic writes, keys."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
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


async def test_round_trip_with_digest_and_ranges(storage_settings: Settings) -> None:
    storage = open_storage(storage_settings)
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
    assert stored_objects(storage_settings) == []


async def test_content_type_comes_from_the_bytes(storage_settings: Settings) -> None:
    storage = open_storage(storage_settings)
    said_png = await storage.put("ten_A/asset_2.png", chunks_of(b"<html><script>"), "image/png")
    html = await storage.put("ten_A/asset_3.bin", chunks_of(b"<html><script>"), "text/html")
    jpeg = await storage.put("ten_A/asset_4.jpg", chunks_of(b"\xff\xd8\xff\xe0" + PNG[8:]), "")
    assert said_png.content_type == "image/png"  # a type we serve, and nothing contradicts it
    assert html.content_type == "application/octet-stream"  # never served as HTML
    assert jpeg.content_type == "image/jpeg"


async def test_a_failing_stream_leaves_no_object(storage_settings: Settings) -> None:
    storage = open_storage(storage_settings)
    # Past one multipart part on S3, so that an upload was started and must be aborted.
    with pytest.raises(StreamBroke):
        await storage.put("ten_A/asset_5.png", failing_after(os.urandom(PART_SIZE + 1)), "")
    assert stored_objects(storage_settings) == []
    with pytest.raises(KeyError):
        await read_all(storage.open("ten_A/asset_5.png"))
    if storage_settings.storage == "s3":
        uploads = s3_client(storage_settings.s3_endpoint_url).list_multipart_uploads(
            Bucket=storage_settings.s3_bucket, Prefix=storage_settings.s3_prefix)  # fmt: skip
        assert uploads.get("Uploads", []) == []


async def test_a_large_object_goes_up_in_parts(storage_settings: Settings) -> None:
    storage = open_storage(storage_settings)
    data = os.urandom(PART_SIZE * 2 + 12_345)
    stored = await storage.put("ten_A/asset_6.mp4", chunks_of(data, 1 << 20), "video/mp4")
    assert stored.size == len(data)
    assert (
        await read_all(storage.open("ten_A/asset_6.mp4", PART_SIZE - 3, PART_SIZE + 2))
        == (data[PART_SIZE - 3 : PART_SIZE + 3])
    )
    assert await read_all(storage.open("ten_A/asset_6.mp4")) == data


BAD_KEYS = ["../etc/passwd", "/abs/x", "ten_A/../../x", "a/b/c", "ten A/x", "ten_A/x.PNG",
            "ten_A/", "ten_A/.hidden", "ten_A/x\x00", "ten_A/x/../../../y.png"]  # fmt: skip


async def test_keys_other_than_ours_never_reach_a_backend(storage_settings: Settings) -> None:
    storage = open_storage(storage_settings)
    for key in BAD_KEYS:
        with pytest.raises(InvalidKey):
            await storage.put(key, chunks_of(b"x"), "image/png")
        with pytest.raises(InvalidKey):
            await storage.delete(key)
        with pytest.raises(InvalidKey):
            await read_all(storage.open(key))
    assert stored_objects(storage_settings) == []


async def test_local_files_are_owner_only_and_written_in_place(tmp_path: Path) -> None:
    storage = LocalDiskStorage(tmp_path / "assets")
    await storage.put("ten_A/asset_7.png", chunks_of(PNG), "image/png")
    path = tmp_path / "assets" / "ten_A" / "asset_7.png"
    assert storage.local_path("ten_A/asset_7.png") == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "assets").stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["asset_7.png"]  # no temp file left


WRITER = """
import asyncio, sys
from pathlib import Path
from toolcallstore.storage.local import LocalDiskStorage

async def endless():
    while True:
        yield b"\\x89PNG\\r\\n\\x1a\\n" + bytes(2_000_000)
        await asyncio.sleep(0.01)

asyncio.run(LocalDiskStorage(Path(sys.argv[1])).put("ten_A/asset_9.png", endless(), "image/png"))
"""


def test_a_writer_killed_mid_write_leaves_no_object(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)])
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 4_000_000 for p in root.rglob(".tmp-*")):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        writer.kill()  # SIGKILL: no cleanup runs
        writer.wait()
    assert not (root / "ten_A" / "asset_9.png").exists()
    assert [p.name.startswith(".tmp-asset_9.png.") for p in (root / "ten_A").iterdir()] == [True]
