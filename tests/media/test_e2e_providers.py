"""End to end with the test key for Stability, Leonardo, Runware and Gemini image (fal and
Replicate are in test_e2e.py): generate, long-poll, download each asset through its signed URL,
decode it with Pillow, check the receipt's price (from the cost the provider reported, where it
reports one) and that the provider was asked once."""

from __future__ import annotations

import io
import secrets
from decimal import Decimal

import pytest
from PIL import Image

from tests.chat.helpers import live_server
from tests.media.helpers import finished, generate, media_key
from toolcallstore.controls.pricing import load_pricing
from toolcallstore.media.catalog import load_media_catalog
from toolcallstore.media.leonardo import CREDIT_MICROS
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

CATALOG = load_media_catalog(load_pricing())

# provider -> (shipped target, n, the size its fake renders for 512x512, reported cost in micros)
TARGETS: dict[str, tuple[str, int, tuple[int, int], int | None]] = {
    # Stability renders about a megapixel for the nearest aspect ratio; no cost reported.
    "stability": ("stability/core", 1, (1024, 1024), None),
    # 2 credits an image at 512x512 (the fake's rule), priced per credit.
    "leonardo": ("leonardo/de7d3faf-762f-48e0-b3b7-9d0ac3a3fcf3", 2, (512, 512),
                 4 * CREDIT_MICROS),
    # 0.0013 USD a megapixel: 0.000341 an image at 512x512.
    "runware": ("runware/runware:100@1", 2, (512, 512), 2 * 341),
    "gemini-image": ("gemini-image/gemini-2.5-flash-image", 1, (1024, 1024), None),
}  # fmt: skip


@pytest.mark.parametrize("provider", sorted(TARGETS))
async def test_a_generation_end_to_end(provider: str, settings: Settings) -> None:
    target_id, n, size, reported = TARGETS[provider]
    target = CATALOG.targets[target_id]
    wanted = "1024x1024" if "1024x1024" in target.sizes and size == (1024, 1024) else "512x512"
    params = {"prompt": f"a tide pool at noon {secrets.token_hex(4)}", "model": target_id,
              "size": wanted, "n": n, "seed": 11}  # fmt: skip
    async with live_server(settings.with_(media_poll_max_seconds=0.5)) as live:
        agent = await media_key(live.client, live.admin_key)
        r = await generate(live.client, agent, params)
        assert r.status_code == 202, r.text
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded", done
        assert len(done["assets"]) == n
        for asset in done["assets"]:
            got = await live.client.get(asset["url"])
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(got.content))
            image.load()
            assert image.size == size
        estimate = target.cost({**params, "kind": "image"})
        billed = estimate if reported is None else Decimal(reported) / 1_000_000
        expected = min(CATALOG.price_of(billed), CATALOG.price_of(estimate))
        assert done["amount_usd"] == micros_to_usd(expected)
        receipt = await live.receipt(done["receipt_id"])
        assert (receipt["status"], receipt["amount_usd"]) == ("succeeded", micros_to_usd(expected))
        counted = await live.client.get(f"/sandbox/{provider}/_submissions")
        assert counted.json()["by_prompt"] == {params["prompt"]: 1}
        await live.balanced()
