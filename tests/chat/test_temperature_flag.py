"""A model that accepts only temperature 1.0, flagged `only_temperature_1` in models.json: a
caller's temperature is not sent to it, so the call is answered instead of refused. The
sandbox's Anthropic fake plays such a model for names ending in `-t1`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.chat.helpers import live_server, models_file, target_id
from toolcallstore.settings import Settings


@pytest.mark.parametrize("flagged", [True, False])
async def test_a_temperature_is_not_sent_to_a_model_that_accepts_only_1(
    settings: Settings, tmp_path: Path, flagged: bool
) -> None:
    file = models_file(tmp_path, {"fixed": ("anthropic", None)}, {"fixed-lane": ["fixed"]})
    data = orjson.loads(file.read_bytes())
    data["models"][target_id("fixed")]["model"] = "sandbox-model-t1"
    if flagged:
        data["models"][target_id("fixed")]["only_temperature_1"] = True
    file.write_bytes(orjson.dumps(data))
    async with live_server(settings.with_(models_file=str(file))) as live:
        key = await live.agent_key()
        body = {"model": "fixed-lane", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 20, "temperature": 0.2}  # fmt: skip
        r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
        if flagged:
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"].startswith("Sandbox reply")
        else:  # without the flag the provider refuses the temperature
            assert r.status_code == 502 and r.json()["error"]["code"] == "all_providers_failed"
            (attempt,) = r.json()["error"]["toolcall"]["attempts"]
            assert attempt["error"] == {"code": "invalid_request", "status": 400}
        await live.balanced()
