"""The generated pages, opened in headless Chromium from a running server: they render with
no console error, no failed load and no broken link; screenshots are kept as CI artifacts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.site.browser import chromium, open_page
from tests.site.edge import REPO

ARTIFACTS = Path(os.environ.get("TOOLCALLSTORE_ARTIFACTS_DIR", REPO / "artifacts"))
PAGES = {
    "index": "/",
    "pricing": "/pricing.html",
    "docs": "/docs/index.html",
    "mcp": "/docs/mcp.html",
}


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    server = await asyncio.to_thread(start_server, database_url, tmp_path,
                                     TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0")  # fmt: skip
    try:
        yield server
    finally:
        await asyncio.to_thread(stop_server, server)


@pytest.mark.timeout(180)
async def test_pages_render_without_errors_or_broken_links(served: Server, tmp_path: Path) -> None:
    checked: set[str] = set()
    async with chromium(tmp_path / "profile") as port, httpx.AsyncClient() as http:
        for name, path in PAGES.items():
            shot = ARTIFACTS / "screenshots" / f"{name}.png"
            report = await open_page(port, served.base_url + path, shot)
            assert report.errors == [], (path, report.errors)
            assert report.title.endswith("ToolCall Store"), report.title
            assert report.missing_anchors == [], (path, report.missing_anchors)
            assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 5_000
            for link in report.links:
                target, _ = urldefrag(link)
                assert urlsplit(target).netloc == urlsplit(served.base_url).netloc, link
                if target not in checked:
                    checked.add(target)
                    answer = await http.get(target)
                    assert answer.status_code == 200, (path, link, answer.status_code)
        assert len(checked) >= 8  # nav, catalog, pricing and discovery links were followed
        missing = await open_page(port, served.base_url + "/missing.html", tmp_path / "m.png")
    assert any(error.startswith("401") for error in missing.errors), missing.errors
