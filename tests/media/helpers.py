"""Media tests' shared steps: a models file whose media providers point at the sandbox fakes
(with fault specs), a live app on a loopback socket, and the calls an agent makes."""

from __future__ import annotations

import secrets
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

from toolcallstore.controls.pricing import REPO_CONFIG, to_micros_up

MARKUP = Decimal("0.20")
MEDIA_FEE = Decimal("0.001")
AGENT_SCOPES = ["media:generate", "quotes:create", "receipts:read", "jobs:read"]

# protocol -> (sandbox path under /sandbox, a model its fake serves)
SANDBOX = {
    "fal": ("/fal", "fal-ai/flux/schnell"),
    "replicate": ("/replicate/v1", "black-forest-labs/flux-schnell"),
}


def media_models_file(
    tmp_path: Path,
    providers: dict[str, tuple[str, str | None, str]],
    lanes: dict[str, list[str]] | None = None,
    *,
    kinds: tuple[str, ...] = ("image",),
    sizes: tuple[str, ...] = ("512x512", "1024x1024"),
) -> Path:
    """config/models.json plus media `providers` ({id: (protocol, fault spec or None, USD per
    image)}), one target each (`<id>/<model>`), and media `lanes` of them ({lane: [id, ...]})."""
    data = orjson.loads((REPO_CONFIG / "models.json").read_bytes())
    for pid, (protocol, fault, cost) in providers.items():
        path, model = SANDBOX[protocol]
        prefix = "{sandbox}" + (f"/fault/{fault}" if fault else "")
        data["media_providers"][pid] = {
            "protocol": protocol,
            "base_url": prefix + path,
            "sandbox_path": path,
            "api_key_env": "TOOLCALLSTORE_TEST_UNUSED_KEY",
            "description": f"sandbox {protocol}" + (f" with {fault}" if fault else ""),
        }
        data["media_models"][target(pid)] = {
            "provider": pid,
            "model": model,  # the provider's model id; the target id is <pid>/sandbox-model
            "kinds": list(kinds),
            "sizes": list(sizes),
            "basis": "per_image",
            "provider_cost_usd": cost,
            "max_n": 4,
        }
    for lane, members in (lanes or {}).items():
        data["media_lanes"][lane] = {
            "description": f"test lane {lane}",
            "kind": kinds[0],
            "targets": [target(p) for p in members],
            "order": "listed",
        }
    file = tmp_path / "models.json"
    file.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return file


def target(pid: str) -> str:
    return f"{pid}/sandbox-model"


def price_micros(cost_usd: str, n: int = 1) -> int:
    """The customer's price of `n` images of a per-image target."""
    return to_micros_up(Decimal(cost_usd) * n * (1 + MARKUP) + MEDIA_FEE)


async def media_key(client: httpx.AsyncClient, admin: str, **extra: Any) -> str:
    body = {"scopes": AGENT_SCOPES, "auto_quote_max_usd": "5.00", **extra}
    headers = {"Authorization": f"Bearer {admin}", "Idempotency-Key": secrets.token_hex(8)}
    r = await client.post("/v1/keys", json=body, headers=headers)
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def generate(client: httpx.AsyncClient, secret: str, body: dict[str, Any],
                   key: str | None = None) -> httpx.Response:  # fmt: skip
    headers = {**auth(secret), "Idempotency-Key": key or secrets.token_hex(8)}
    return await client.post("/v1/media/generations", json=body, headers=headers)


async def finished(client: httpx.AsyncClient, secret: str, generation_id: str,
                   timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    """Long-poll the generation until it is finished and settled (its receipt written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.get(f"/v1/media/generations/{generation_id}?wait=10",
                             headers=auth(secret), timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("succeeded", "failed", "cancelled") and body["receipt_id"]:
            return body
    raise AssertionError(f"generation {generation_id} did not finish within {timeout:g} s")


async def submissions(client: httpx.AsyncClient, protocol: str, prompt: str) -> int:
    """How many times the sandbox fake accepted a generation of `prompt`."""
    path = {"fal": "/sandbox/fal/_submissions", "replicate": "/sandbox/replicate/_submissions"}
    r = await client.get(path[protocol])
    assert r.status_code == 200, r.text
    return int(r.json()["by_prompt"].get(prompt, 0))
