"""Circuit-breaker settings from models.json, per lane or per target: a flapping primary that
has recovered is used again once its configured cooldown has passed (the whole app on a real
socket, the sandbox failing the primary's first requests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.chat.helpers import Live, live_server, models_file, target_id
from toolcallstore.settings import Settings

# The primary fails its first 2 requests (the call and its quick retry), then recovers.
PROVIDERS = {"flappy": ("openai", "status=500,fail_first=2"), "fast": ("openai", None)}
QUICK = {"cooldown_s": 1, "min_calls": 2}


def configure(file: Path, where: str | None) -> None:
    data = orjson.loads(file.read_bytes())
    if where == "lane":
        data["lanes"]["flapping"]["breaker"] = QUICK
    elif where == "target":
        data["models"][target_id("flappy")]["breaker"] = QUICK
    file.write_bytes(orjson.dumps(data))


async def targets_used(live: Live, key: str) -> list[tuple[str, str]]:
    body = {"model": "flapping", "messages": [{"role": "user", "content": "hi"}]}
    r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
    assert r.status_code == 200, r.text
    attempts: list[dict[str, Any]] = r.json()["toolcall"]["attempts"]
    return [(a["target"], a["outcome"]) for a in attempts]


@pytest.mark.parametrize("where", ["lane", "target"])
async def test_a_recovered_primary_is_used_again_after_a_configured_one_second_cooldown(
    settings: Settings, tmp_path: Path, where: str
) -> None:
    file = models_file(tmp_path, PROVIDERS, {"flapping": ["flappy", "fast"]}, hedge_after_ms=0)
    configure(file, where)
    flappy, fast = target_id("flappy"), target_id("fast")
    async with live_server(settings.with_(models_file=str(file))) as live:
        key = await live.agent_key()
        assert await targets_used(live, key) == [
            (flappy, "failed"), (flappy, "failed"), (fast, "succeeded"),
        ]  # fmt: skip
        # Two failures of two calls: the breaker is open, the primary is tried last.
        assert await targets_used(live, key) == [(fast, "succeeded")]
        await asyncio.sleep(1.2)
        assert await targets_used(live, key) == [(flappy, "succeeded")]  # the probe
        assert await targets_used(live, key) == [(flappy, "succeeded")]  # closed again
        await live.balanced()


async def test_without_settings_the_breaker_keeps_its_defaults(
    settings: Settings, tmp_path: Path
) -> None:
    # Five failures (min_calls 5) open it; after 1.2 s the 30 s cooldown still holds.
    providers = {"flappy": ("openai", "status=500,fail_first=6"), "fast": ("openai", None)}
    file = models_file(tmp_path, providers, {"flapping": ["flappy", "fast"]}, hedge_after_ms=0)
    flappy, fast = target_id("flappy"), target_id("fast")
    async with live_server(settings.with_(models_file=str(file))) as live:
        key = await live.agent_key()
        for _ in range(3):  # each call: the primary, its quick retry, then the fallback
            assert (await targets_used(live, key))[-1] == (fast, "succeeded")
        await asyncio.sleep(1.2)
        assert await targets_used(live, key) == [(fast, "succeeded")]
        r = await live.client.get("/v1/health/providers", headers=live.auth())
        states = {t["target"]: t["state"] for t in r.json()["targets"]}
        assert states[flappy] == "open"
        await live.balanced()
