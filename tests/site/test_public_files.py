"""public/ is generated, current, served without auth, and describes what the server enforces."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.conftest import Api, running_api
from toolcallstore.app import create_app
from toolcallstore.cli import main
from toolcallstore.settings import Settings
from toolcallstore.site.build import build_site, load_site, stale_files
from toolcallstore.site.openapi import UndeclaredRoute, build_openapi, declared_operations

PUBLIC = Path(__file__).resolve().parents[2] / "public"


def test_public_dir_is_current(settings: Settings) -> None:
    files = build_site(create_app(settings), load_site())
    stale = stale_files(files, PUBLIC)
    assert not stale, f"public/ is stale ({', '.join(stale)}): run `toolcallstore build-public`"


def test_build_public_writes_and_checks(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "public"
    assert main(["build-public", "--out", str(out)]) == 0
    assert (out / "openapi.json").read_bytes() == (PUBLIC / "openapi.json").read_bytes()
    assert main(["build-public", "--out", str(out), "--check"]) == 0
    (out / "llms.txt").write_text("# edited by hand\n")
    (out / "leftover.html").write_text("old page")
    assert main(["build-public", "--out", str(out), "--check"]) == 1
    assert main(["build-public", "--out", str(out)]) == 0
    assert not (out / "leftover.html").exists()
    assert (out / "llms.txt").read_bytes() == (PUBLIC / "llms.txt").read_bytes()


def test_a_route_without_a_declaration_stops_the_build(settings: Settings) -> None:
    app = create_app(settings)

    async def hidden(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app.router.routes.append(Route("/v1/webhook_endpoints", hidden, methods=["POST"]))
    with pytest.raises(UndeclaredRoute, match=r"POST /v1/webhook_endpoints has no Operation"):
        build_site(app, load_site())


def test_a_declaration_without_a_route_stops_the_build(settings: Settings) -> None:
    app = create_app(settings)
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/me"]
    with pytest.raises(UndeclaredRoute, match=r"Declared but not routed: GET /v1/me"):
        build_openapi(app.router.routes, declared_operations())


PUBLIC_TYPES = {
    "/llms.txt": "text/plain; charset=utf-8",
    "/llms-full.txt": "text/plain; charset=utf-8",
    "/openapi.json": "application/json",
    "/catalog.json": "application/json",
    "/pricing.json": "application/json",
    "/models.json": "application/json",
    "/.well-known/security.txt": "text/plain; charset=utf-8",
    "/.well-known/mcp.json": "application/json",
    "/index.html": "text/html; charset=utf-8",
    "/pricing.html": "text/html; charset=utf-8",
    "/docs/index.html": "text/html; charset=utf-8",
}


async def test_the_app_serves_public_files_without_a_key(api: Api) -> None:
    for path, media in PUBLIC_TYPES.items():
        response = await api.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == media, path
        assert response.content == (PUBLIC / path.lstrip("/")).read_bytes(), path
    root = await api.client.get("/")
    assert root.content == (PUBLIC / "index.html").read_bytes()
    docs = await api.client.get("/docs/")
    assert docs.content == (PUBLIC / "docs" / "index.html").read_bytes()
    assert (await api.client.get("/v1/me")).status_code == 401  # the API still needs a key
    missing = await api.client.get("/nothing.txt")
    assert missing.status_code == 401  # not a public file: the API's answer


async def test_catalog_matches_the_tools_endpoint(api: Api) -> None:
    served = (await api.client.get("/v1/tools", headers=api.auth())).json()["data"]
    catalog = orjson.loads((PUBLIC / "catalog.json").read_bytes())["tools"]
    assert [t["name"] for t in catalog] == [t["name"] for t in served]
    for listed, entry in zip(served, catalog, strict=True):
        assert {k: entry[k] for k in listed} == listed
    irreversible = next(t for t in catalog if t["name"] == "sandbox.irreversible")
    assert irreversible["annotations"]["destructiveHint"] is True
    assert irreversible["params_schema"]["required"] == ["action"]


def test_pricing_shows_our_prices_never_provider_costs() -> None:
    raw = orjson.loads(Path(PUBLIC.parent / "config" / "models.json").read_bytes())
    pricing = (PUBLIC / "pricing.json").read_text()
    assert "provider_cost" not in pricing and "markup" not in pricing
    assert f"1 + {raw['markup']}" not in pricing  # the markup would give provider costs away
    tools = orjson.loads(pricing)["tools"]
    # sandbox.echo: 0.001 x 1.20 + 0.0002 fee; the provider's 0.001 appears nowhere.
    assert tools["sandbox.echo"]["unit_price_usd"] == "0.001400"
    assert raw["tools"]["sandbox.echo"]["provider_cost_usd"] == "0.001"
    target = next(iter(raw["models"]))
    listed = orjson.loads(pricing)["llm"]["targets"][target]
    assert listed["input_usd_per_mtok"] != raw["models"][target]["input_usd_per_mtok"]


def test_llms_txt_follows_the_llmstxt_format() -> None:
    lines = (PUBLIC / "llms.txt").read_text().splitlines()
    assert lines[0] == "# ToolCall Store"
    assert lines[2].startswith("> ")
    sections = [line for line in lines if line.startswith("## ")]
    assert sections[-1] == "## Optional"
    links = [line for line in lines if line.startswith("- [")]
    assert any("/openapi.json" in link for link in links)


async def test_documented_bodies_are_the_validated_ones(settings: Settings) -> None:
    """Every documented JSON body refuses a property its schema does not list, as the server
    does: the schema is the validator's declaration, not a copy of it."""
    master = "k1:" + base64.b64encode(b"m" * 32).decode()
    async with running_api(settings.with_(master_key=master)) as api:
        assert await _refusals_of_undocumented_fields(api) >= 10


async def _refusals_of_undocumented_fields(api: Api) -> int:
    spec = orjson.loads((PUBLIC / "openapi.json").read_bytes())
    checked = 0
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody")
            if body is None:
                continue
            schema = body["content"]["application/json"]["schema"]
            assert schema["additionalProperties"] is False, (method, path)
            url = path.replace("{", "").replace("}", "")
            response = await api.client.request(
                method.upper(), url, headers=api.idem(), json={"not_a_documented_field": 1}
            )
            assert response.status_code == 400, (method, path, response.text)
            assert response.json()["error"]["code"] == "unknown_parameter", (method, path)
            checked += 1
    return checked


async def test_routes_of_the_api_never_wait_on_the_public_files(settings: Settings) -> None:
    """A request to the API does not build the public files: an app with a route nobody
    declared (as tests add) still answers it."""
    async with running_api(settings) as api:

        async def probe(request: object) -> PlainTextResponse:
            return PlainTextResponse("probe")

        api.app.router.routes.append(Route("/test/probe", probe))  # type: ignore[attr-defined]
        answer = await api.client.get("/test/probe", headers=api.auth())
        assert answer.status_code == 200 and answer.text == "probe"
