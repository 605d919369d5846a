"""End to end with the test key, per provider: generate, poll (long-poll), download each asset
through its signed URL, decode it with Pillow, and check the receipt's price."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import pytest
from PIL import Image

from tests.chat.helpers import live_server
from tests.media.helpers import auth, finished, generate, media_key, submissions
from toolcallstore.controls.pricing import load_pricing
from toolcallstore.media.catalog import load_media_catalog
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

CATALOG = load_media_catalog(load_pricing())

# The shipped targets of config/models.json, in test mode served by the sandbox fakes.
TARGETS = {
    "fal": ("fal/fal-ai/flux/schnell", "fal", 2),
    "replicate": ("replicate/black-forest-labs/flux-schnell", "replicate", 2),
}


@pytest.mark.parametrize("provider", sorted(TARGETS))
async def test_a_generation_end_to_end(provider: str, settings: Settings, tmp_path: Path) -> None:
    target_id, protocol, n = TARGETS[provider]
    target = CATALOG.targets[target_id]
    params = {"prompt": f"a lighthouse at dusk {secrets.token_hex(4)}", "model": target_id,
              "size": "512x512", "n": n, "seed": 7}  # fmt: skip
    async with live_server(settings.with_(media_poll_max_seconds=0.5)) as live:
        agent = await media_key(live.client, live.admin_key)
        r = await generate(live.client, agent, params)
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["object"] == "media.generation" and started["job_id"].startswith("job_")
        assert started["status"] == "queued"
        done = await finished(live.client, agent, started["id"])
        assert done["status"] == "succeeded", done
        assert len(done["assets"]) == n
        for asset in done["assets"]:
            # The signed URL needs no API key; Pillow decodes what it serves.
            got = await live.client.get(asset["url"])
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(got.content))
            image.load()
            assert image.size == (512, 512)
            assert asset["size"] == len(got.content)
        # The price: what the provider bills for this request, marked up, plus the fee.
        expected = CATALOG.price_of(target.cost({**params, "kind": "image"}))
        assert done["amount_usd"] == micros_to_usd(expected)
        receipt = await live.receipt(done["receipt_id"])
        assert (receipt["status"], receipt["amount_usd"]) == ("succeeded", micros_to_usd(expected))
        assert [a["outcome"] for a in receipt["attempts"]] == ["succeeded"]
        assert await submissions(live.client, protocol, params["prompt"]) == 1
        # Listed, and deleted with its assets: the signed URL then finds nothing.
        listed = await live.client.get("/v1/media/generations", headers=auth(agent))
        assert [g["id"] for g in listed.json()["data"]] == [done["id"]]
        gone = await live.client.delete(f"/v1/media/generations/{done['id']}", headers=auth(agent))
        assert gone.status_code == 200, gone.text
        assert (await live.client.get(done["assets"][0]["url"])).status_code == 404
        await live.balanced()
