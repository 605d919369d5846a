"""Upstream bodies are read raw and parsed as they arrive: the gateway must ask for them
uncompressed, or a provider that honours `accept-encoding: gzip` hands the parsers gzip bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tests.chat.helpers import live_server, loopback_upstream, models_file, point_provider
from toolcallstore.settings import Settings

TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


async def test_an_upstream_that_would_gzip_its_error_is_understood(
    settings: Settings, tmp_path: Path
) -> None:
    asked: list[str] = []

    async def upstream(request: Request) -> Response:
        await request.body()
        encoding = request.headers.get("accept-encoding", "")
        asked.append(encoding)
        body = orjson.dumps(TOO_LONG)
        if "gzip" in encoding:  # as real providers do when the client allows it
            return Response(gzip.compress(body), 400, media_type="application/json",
                            headers={"content-encoding": "gzip"})  # fmt: skip
        return Response(body, 400, media_type="application/json")

    file = models_file(tmp_path, {"up": ("openai", None)}, {"lane": ["up"]})
    async with loopback_upstream(upstream) as base_url:
        point_provider(file, "up", base_url)
        async with live_server(settings.with_(models_file=str(file))) as live:
            key = await live.agent_key()
            body = {"model": "lane", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 20}  # fmt: skip
            r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
    assert asked == ["identity"]
    # The provider's own verdict reaches the agent, not a misread "all providers failed".
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
