"""The Gemini image fake (providers.md A6): `POST /v1beta/models/{model}:generateContent` for image
models, mounted at `/gemini-image` beside the LLM fake at `/gemini` (same protocol, a separate
fake, so the LLM fake's replies stay as they are). With `IMAGE` in
`generationConfig.responseModalities` the answer has a text part and an `inlineData` PNG part,
its size from `imageConfig.aspectRatio` (Gemini 2.5 Flash Image's sizes), and `usageMetadata`
with 1290 image tokens; without it, text only. Errors are the Google envelope
`{"error": {"code", "message", "status"}}`.

Faults (`media_faults.py`): `nsfw=1` is a 200 with `promptFeedback.blockReason` and no
candidates; `fail_after_queued=1` a 500 after the generation's time (`stall_ms`);
`lose_answer=1` generates, then drops the connection. `GET /_submissions` counts generations.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from toolcallstore.sandbox.endpoint import json_response
from toolcallstore.sandbox.faults import FaultSpecError
from toolcallstore.sandbox.media_bytes import png
from toolcallstore.sandbox.media_faults import (
    MediaFailFirst,
    Submissions,
    lost_answer,
    parse_media_faults,
    sleep_ms,
)

SIZES = {
    "1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184),
    "4:3": (1184, 864), "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344),
    "16:9": (1344, 768), "21:9": (1536, 672),
}  # fmt: skip
IMAGE_TOKENS = 1290
_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
             504: "DEADLINE_EXCEEDED"}  # fmt: skip
_TEXTS = {
    401: "API key not valid. Please pass a valid API key.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report the problem.",
    503: "The model is overloaded. Please try again later.",
}


def error(status: int, message: str = "", retry_after: float | None = None) -> Response:
    text = message or _TEXTS.get(status, "Request failed.")
    body: dict[str, Any] = {"code": status, "message": text}
    body["status"] = _STATUSES.get(status, "UNKNOWN")
    headers = None
    if retry_after is not None:
        body["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{retry_after:g}s"}]  # fmt: skip
        headers = {"retry-after": f"{retry_after:g}"}
    return json_response({"error": body}, status, headers)


def _prompt(body: dict[str, Any]) -> str | None:
    text = ""
    for content in body.get("contents") or []:
        for part in content.get("parts") or [] if isinstance(content, dict) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                text += part["text"]
    return text.strip() or None


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig", body.get("generation_config")) or {}
    return config if isinstance(config, dict) else {}


class GeminiImageFake:
    def __init__(self) -> None:
        self.fail_first = MediaFailFirst()
        self.submissions = Submissions()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1beta/models/{model}:generateContent", self.generate, methods=["POST"]),
            Route("/_submissions", self.counted, methods=["GET"]),
        ]

    async def counted(self, request: Request) -> Response:
        return json_response(self.submissions.as_json())

    async def generate(self, request: Request) -> Response:
        spec = request.path_params.get("spec", "")
        try:
            faults = parse_media_faults(spec)
        except FaultSpecError as exc:
            return error(400, str(exc))
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
        if not key.strip():
            return error(401)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return error(400, "Invalid JSON payload received.")
        prompt = _prompt(body)
        if prompt is None:
            return error(400, "* GenerateContentRequest.contents: contents is not specified")
        config = _config(body)
        image_config = config.get("imageConfig") or {}
        ratio = image_config.get("aspectRatio", "1:1") if isinstance(image_config, dict) else "1:1"
        if ratio not in SIZES:
            return error(400, f"Unsupported aspect ratio: {ratio}")
        seed = config.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return error(400, "Invalid value at 'generation_config.seed' (TYPE_INT32)")

        faults = self.fail_first.admit(spec, faults)
        await sleep_ms(faults.latency_ms)
        if faults.status is not None:
            return error(faults.status, retry_after=faults.retry_after)
        await sleep_ms(faults.stall_ms)  # the generation's time
        if faults.fail_after_queued:
            return error(500)
        usage = {"promptTokenCount": len(prompt.split()) + 4}
        if faults.nsfw:
            usage["totalTokenCount"] = usage["promptTokenCount"]
            feedback = {"blockReason": "PROHIBITED_CONTENT"}
            return json_response({"promptFeedback": feedback, "usageMetadata": usage})
        model = request.path_params["model"]
        parts: list[dict[str, Any]] = [{"text": "Here is the image you asked for."}]
        modalities = config.get("responseModalities") or ["TEXT"]
        if "IMAGE" in modalities and "image" in model:
            self.submissions.count(prompt)
            width, height = SIZES[ratio]
            data = png(
                prompt, seed if seed is not None else zlib.crc32(prompt.encode()), width, height
            )
            inline = {"mimeType": "image/png", "data": base64.b64encode(data).decode()}
            parts.append({"inlineData": inline})
        image_tokens = IMAGE_TOKENS * (len(parts) - 1)
        usage.update(candidatesTokenCount=image_tokens + 8,
                     totalTokenCount=usage["promptTokenCount"] + image_tokens + 8)  # fmt: skip
        answer = json_response({
            "candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {**usage, "candidatesTokensDetails": [
                {"modality": "IMAGE", "tokenCount": image_tokens},
                {"modality": "TEXT", "tokenCount": 8}]},
            "modelVersion": model, "responseId": uuid.uuid4().hex[:22],
        })  # fmt: skip
        return lost_answer(answer) if faults.lose_answer else answer
