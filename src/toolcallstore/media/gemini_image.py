"""Gemini image generation (providers.md A6): `generateContent` on an image model (e.g.
`gemini-2.5-flash-image`) with `responseModalities: ["TEXT", "IMAGE"]`; the image comes back
inline, base64 in an `inlineData` part.

Synchronous, like Stability: `submit` answers with the finished state, nothing to poll, cancel
or look up afterwards. A prompt blocked by `promptFeedback.blockReason`, or a candidate ending
for safety (`SAFETY`, `IMAGE_SAFETY`, `PROHIBITED_CONTENT`, ...), is a final refusal. Gemini
bills tokens and reports no price: the target's configured price is the cost (the usage is in
the handle).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from toolcallstore.media import http as wire
from toolcallstore.media.base import MediaProviderError, MediaRequest, Output, Polled, Submitted

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")
REFUSALS = frozenset({"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII",
                      "RECITATION", "IMAGE_PROHIBITED_CONTENT", "OTHER"})  # fmt: skip
_RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def aspect_ratio(width: int, height: int) -> str:
    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(int(w) / int(h) - width / height)

    return min(ASPECT_RATIOS, key=distance)


class GeminiImageProvider:
    name = "gemini-image"
    can_cancel = False
    can_lookup = False

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, api_key: str, *, timeout_s: float = 120.0
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")  # .../v1beta
        self._key = api_key
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)

    async def submit(self, request: MediaRequest) -> Submitted:
        if request.kind != "image":
            raise MediaProviderError("invalid", "gemini-image: makes images only")
        if request.n != 1:
            raise MediaProviderError("invalid", "gemini-image: makes one image per request")
        config: dict[str, Any] = {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": aspect_ratio(request.width, request.height)},
        }
        if request.seed is not None:
            config["seed"] = request.seed % 2**31
        text = request.prompt
        if request.negative_prompt:
            text += f"\n\nAvoid: {request.negative_prompt}"
        body = {
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "generationConfig": config,
        }
        url = f"{self._base}/models/{request.model}:generateContent"
        headers = {"x-goog-api-key": self._key, "content-type": "application/json"}
        try:
            response = await self._http.post(
                url, content=orjson.dumps(body), headers=headers, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            raise wire.transport_error(self.name, exc, submit=True) from None
        if response.status_code >= 300:
            raise self._error(response)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise MediaProviderError("ambiguous", "gemini-image: an answer that is not JSON")
        request_id = str(answer.get("responseId") or request.client_ref)
        handle = {"usage": answer.get("usageMetadata"), "model_version": answer.get("modelVersion")}
        return Submitted(request_id, handle, state=self._finished(answer))

    def _finished(self, answer: dict[str, Any]) -> Polled:
        feedback = answer.get("promptFeedback") or {}
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            reason = f"gemini-image: prompt blocked ({feedback['blockReason']})"
            return Polled("failed", error=MediaProviderError("refused", reason))
        candidates = answer.get("candidates") or []
        candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
        finish = str(candidate.get("finishReason", ""))
        if finish in REFUSALS:
            reason = f"gemini-image: generation stopped ({finish})"
            return Polled("failed", error=MediaProviderError("refused", reason))
        parts = (candidate.get("content") or {}).get("parts") or []
        outputs = tuple(
            wire.inline_output(
                str(part["inlineData"].get("mimeType", "image/png")),
                wire.b64decode(self.name, part["inlineData"].get("data")),
            )
            for part in parts
            if isinstance(part, dict) and isinstance(part.get("inlineData"), dict)
        )
        if not outputs:
            reason = f"gemini-image: no image in the answer (finishReason {finish or 'none'})"
            return Polled("failed", error=MediaProviderError("failed", reason))
        return Polled("succeeded", 1.0, outputs)

    def _error(self, response: httpx.Response) -> MediaProviderError:
        body = wire.body_of(response)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return wire.http_error(self.name, response, response.text[:200])
        message = f"{error.get('status', '')}: {error.get('message', '')}"
        failure = wire.http_error(self.name, response, message)
        for detail in error.get("details") or []:
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if isinstance(delay, str) and (match := _RETRY_DELAY.match(delay)):
                failure.retry_after = float(match.group(1))
        return failure

    async def poll(self, submitted: Submitted) -> Polled:
        if submitted.state is not None:
            return submitted.state
        raise MediaProviderError("failed", "gemini-image: a synchronous result that was not kept")

    async def cancel(self, submitted: Submitted) -> bool:
        return False

    async def lookup(self, request: MediaRequest) -> Submitted | None:
        return None

    def download(self, output: Output) -> AsyncIterator[bytes]:
        return wire.download_output(self._http, self.name, output)
