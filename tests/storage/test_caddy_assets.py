"""The Caddyfile's commented asset block, uncommented, in a real Caddy in front of a real
`toolcallstore serve`: Caddy asks the verify route (forward_auth) and sends the file itself
(file_server); refusals are the API's own 403/410 envelopes."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port, start_server, stop_server
from tests.site.edge import CADDYFILE, PUBLIC, caddy_env, require_binary
from tests.storage.conftest import chunks_of
from tests.storage.test_signed_urls import png_bytes, with_query
from toolcallstore.db import Database
from toolcallstore.storage.assets import Assets
from toolcallstore.storage.local import LocalDiskStorage
from toolcallstore.storage.signing import SigningKeys

KEYS = "k1:" + "s" * 40


def with_asset_block(text: str) -> str:
    """config/Caddyfile with its commented asset block made live."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("\t# handle /v1/assets/"))
    out = lines[:start]
    i = start
    while lines[i].startswith("\t# "):
        out.append("\t" + lines[i].removeprefix("\t# "))
        i += 1
    assert out[-1] == "\t}", "the block ends with its closing brace"
    return "\n".join(out + lines[i:]) + "\n"


@pytest.fixture
def api_server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    server = start_server(database_url, tmp_path, TOOLCALLSTORE_ASSETS_DIR=str(tmp_path / "assets"),
                          TOOLCALLSTORE_ASSET_SIGNING_KEYS=KEYS)  # fmt: skip
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def caddy(api_server: Server, tmp_path: Path) -> Iterator[str]:
    binary = require_binary("caddy")
    config = tmp_path / "Caddyfile"
    config.write_text(with_asset_block(CADDYFILE.read_text()))
    port = free_port()
    env = caddy_env(tmp_path / "caddy-home", TOOLCALLSTORE_SITE=f"http://127.0.0.1:{port}",
                    TOOLCALLSTORE_API=api_server.base_url.removeprefix("http://"),
                    TOOLCALLSTORE_PUBLIC_DIR=str(PUBLIC), TOOLCALLSTORE_CADDY_ADMIN="off",
                    TOOLCALLSTORE_ASSETS_DIR=str(tmp_path / "assets"))  # fmt: skip
    log = (tmp_path / "caddy.log").open("w")
    process = subprocess.Popen([binary, "run", "--config", str(config), "--adapter", "caddyfile"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "caddy.log").read_text()
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
async def assets(database_url: str, tmp_path: Path, api_server: Server) -> AsyncIterator[Assets]:
    """The service in the test process, on the server's database and assets directory."""
    db = Database(database_url, readers=1)
    await db.connect()
    service = Assets(db, LocalDiskStorage(tmp_path / "assets"))
    service.use_keys(SigningKeys.parse(KEYS))
    try:
        yield service
    finally:
        await db.disconnect()


async def test_caddy_sends_signed_assets_itself(caddy: str, assets: Assets) -> None:
    data = png_bytes()
    tenant = await assets.db.fetch_val("SELECT id FROM tenants LIMIT 1")
    asset = await assets.store(tenant_id=tenant, livemode=False, project_id=None,
                               owner_kind="media_generation", owner_id="mg_1",
                               chunks=chunks_of(data), content_type="image/png")  # fmt: skip
    url = assets.signed_url(asset)
    async with httpx.AsyncClient(base_url=caddy, timeout=10) as client:
        answer = await client.get(url)
        assert answer.status_code == 200, answer.text
        assert hashlib.sha256(answer.content).hexdigest() == asset.sha256
        assert answer.headers["content-type"] == "image/png"
        assert answer.headers["x-content-type-options"] == "nosniff"
        # Sent by Caddy's file_server, not by the API (whose answers carry a request id).
        assert "toolcall-request-id" not in answer.headers
        part = await client.get(url, headers={"Range": "bytes=10-19"})
        assert (part.status_code, part.content) == (206, data[10:20])
        tampered = await client.get(with_query(url, kid="k2"))
        assert tampered.status_code == 403
        assert tampered.json()["error"]["code"] == "invalid_signature"
        expired = await client.get(assets.signed_url(asset, ttl_s=-1))
        assert expired.status_code == 410
        assert expired.json()["error"]["code"] == "expired"
        await assets.delete_for_owner("media_generation", "mg_1")
        assert (await client.get(url)).status_code == 404
