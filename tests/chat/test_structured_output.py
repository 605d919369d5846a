"""`response_format` asking for JSON on lanes with Anthropic targets, which have no such
parameter: those targets are left out, and a lane of nothing else is refused with a 400 that
says so, never answered with the format silently dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chat.helpers import Live, live_server, models_file, target_id
from toolcallstore.settings import Settings

PROVIDERS = {"claude": ("anthropic", None), "gpt": ("openai", None)}
LANES = {"claude-only": ["claude"], "mixed": ["claude", "gpt"]}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}


@pytest.fixture
async def live(settings: Settings, tmp_path: Path) -> AsyncIterator[Live]:
    file = models_file(tmp_path, PROVIDERS, LANES)
    async with live_server(settings.with_(models_file=str(file))) as server:
        yield server


async def chat(live: Live, lane: str, response_format: dict[str, Any]) -> httpx.Response:
    key = await live.agent_key()
    body = {"model": lane, "messages": [{"role": "user", "content": "where?"}],
            "max_tokens": 20, "response_format": response_format}  # fmt: skip
    return await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))


@pytest.mark.parametrize("response_format", [JSON_SCHEMA, {"type": "json_object"}])
async def test_json_output_on_a_lane_of_anthropic_targets_is_refused_with_a_clear_400(
    live: Live, response_format: dict[str, Any]
) -> None:
    r = await chat(live, "claude-only", response_format)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == "response_format"
    assert "Anthropic" in error["message"]
    await live.balanced()  # nothing held, nothing charged


async def test_json_output_skips_the_anthropic_target_of_a_mixed_lane(live: Live) -> None:
    r = await chat(live, "mixed", JSON_SCHEMA)
    assert r.status_code == 200, r.text
    attempts = r.json()["toolcall"]["attempts"]
    assert [a["target"] for a in attempts] == [target_id("gpt")]
    await live.balanced()


async def test_plain_text_format_still_goes_to_anthropic(live: Live) -> None:
    r = await chat(live, "claude-only", {"type": "text"})
    assert r.status_code == 200, r.text
    assert r.json()["toolcall"]["target"] == target_id("claude")
