"""`toolcallstore build-public`: every public file, generated from the app (its routes, tools,
prices and lanes) and config/site.json; never edited by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from toolcallstore.controls.pricing import REPO_CONFIG
from toolcallstore.services import Services
from toolcallstore.site.documents import (
    SiteConfig,
    catalog_document,
    mcp_document,
    models_document,
    pricing_document,
    security_txt,
)
from toolcallstore.site.openapi import build_openapi, declared_operations
from toolcallstore.site.pages import docs_page, index_page, mcp_page, pricing_page
from toolcallstore.site.texts import llms_full_txt, llms_txt

DEFAULT_SITE_FILE = REPO_CONFIG / "site.json"
CONTENT_TYPES = {
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


# Every public file, so a request can be told apart from the API's without building them.
PUBLIC_FILES = frozenset({
    "openapi.json", "llms.txt", "llms-full.txt", "catalog.json", "pricing.json", "models.json",
    ".well-known/security.txt", ".well-known/mcp.json", "index.html", "pricing.html",
    "docs/index.html", "docs/mcp.html",
})  # fmt: skip


def load_site(path: str | Path | None = None) -> SiteConfig:
    return SiteConfig.from_dict(json.loads(Path(path or DEFAULT_SITE_FILE).read_text()))


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def build_site(app: Starlette, site: SiteConfig) -> dict[str, bytes]:
    """Relative path -> content of every public file."""
    svc: Services = app.state.services
    openapi = build_openapi(app.router.routes, declared_operations())
    catalog = catalog_document(svc.tools)
    pricing = pricing_document(svc.tools, svc.lanes)
    mcp = mcp_document(site, svc.tools)
    tool_names = [tool.name for tool in svc.tools.all()]
    files = {
        "openapi.json": _json(openapi),
        "llms.txt": llms_txt(site, tool_names).encode(),
        "llms-full.txt": llms_full_txt(site, openapi).encode(),
        "catalog.json": _json(catalog),
        "pricing.json": _json(pricing),
        "models.json": _json(models_document(svc.lanes)),
        ".well-known/security.txt": security_txt(site).encode(),
        ".well-known/mcp.json": _json(mcp),
        "index.html": index_page(site, catalog).encode(),
        "pricing.html": pricing_page(site, pricing).encode(),
        "docs/index.html": docs_page(site, openapi).encode(),
        "docs/mcp.html": mcp_page(site, mcp).encode(),
    }
    assert set(files) == PUBLIC_FILES, "PUBLIC_FILES names every file built"
    return files


def write_site(files: dict[str, bytes], out: Path) -> list[str]:
    """Write the files under `out`, remove generated files no longer produced; returns what
    changed."""
    changed = stale_files(files, out)
    for name, content in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)
    for extra in _existing(out) - set(files):
        (out / extra).unlink()
    return changed


def stale_files(files: dict[str, bytes], out: Path) -> list[str]:
    """Files of `out` that differ from `files`, are missing, or should not be there."""
    stale = [n for n, c in files.items() if not (out / n).is_file() or (out / n).read_bytes() != c]
    return sorted(stale + sorted(_existing(out) - set(files)))


def _existing(out: Path) -> set[str]:
    if not out.is_dir():
        return set()
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
