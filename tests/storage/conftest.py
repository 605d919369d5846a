"""Both storage backends for every test that takes `backend`: local disk under tmp_path, and S3
through a real S3-compatible HTTP server (moto's server mode on a loopback port)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import free_port
from toolcallstore.settings import Settings

BUCKET = "toolcallstore-test"
CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing",
               "s3_region": "us-east-1"}  # fmt: skip


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1",
                 ).create_bucket(Bucket=BUCKET)  # fmt: skip
    try:
        yield endpoint
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings overrides for one backend; S3 objects of each test under their own prefix."""
    if request.param == "local":
        return {"storage": "local", "assets_dir": str(tmp_path / "assets")}
    endpoint = request.getfixturevalue("s3_endpoint")
    return {"storage": "s3", "s3_endpoint_url": endpoint, "s3_bucket": BUCKET,
            "s3_prefix": f"t{secrets.token_hex(4)}/", **CREDENTIALS}  # fmt: skip


@pytest.fixture
def settings(settings: Settings, backend: dict[str, Any]) -> Settings:
    return settings.with_(**backend)


def stored_objects(settings: Settings) -> list[str]:
    """Every object the backend holds for this test (files, or keys under the prefix),
    temporary files included."""
    if settings.storage == "local":
        root = Path(settings.assets_dir)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    listing = s3_client(settings.s3_endpoint_url).list_objects_v2(
        Bucket=settings.s3_bucket, Prefix=settings.s3_prefix
    )
    return sorted(o["Key"] for o in listing.get("Contents", []))


async def chunks_of(data: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
