"""The Stability fake (providers.md A3): `POST /v2beta/stable-image/generate/{ultra|core|sd3}`,
multipart in, the PNG's bytes out (`Accept: image/*`, with `finish-reason` and `seed` headers)
or `{"image": base64, "finish_reason", "seed"}` (`Accept: application/json`). Errors are
`{"id", "name", "errors"}`. Whatever `output_format` asks, the fake renders PNG and says so.

Faults (`media_faults.py`): `status=403` is the `content_moderation` refusal; `nsfw=1` answers
200 with `finish-reason: CONTENT_FILTERED` (generated, billed, blurred); `fail_after_queued=1`
is a 500 after the generation's time (`stall_ms`); `lose_answer=1` generates, then drops the
connection mid-answer. `GET /_submissions` counts accepted generations.
"""

from __future__ import annotations

import base64
import uuid
import zlib

from starlette.datastructures import FormData
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
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "2:3": (832, 1216),
    "3:2": (1216, 832), "4:5": (896, 1088), "5:4": (1088, 896), "9:16": (768, 1344),
    "9:21": (640, 1536),
}  # fmt: skip
ENDPOINTS = ("ultra", "core", "sd3")
SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash")
MAX_SEED = 4_294_967_294
_NAMES = {400: "bad_request", 401: "unauthorized", 402: "payment_required",
          403: "content_moderation", 404: "not_found", 413: "payload_too_large",
          422: "invalid_request", 429: "rate_limit_exceeded", 500: "internal_error",
          503: "service_unavailable"}  # fmt: skip
_TEXTS = {
    403: "Your request was flagged by our content moderation system, as a result your request "
    "was denied and you were not charged.",
    429: "You have exceeded the rate limit of 150 requests within a 10 second period.",
    500: "An unexpected server error has occurred, please try again later.",
}


def error(status: int, *messages: str, retry_after: float | None = None) -> Response:
    body = {
        "id": uuid.uuid4().hex,
        "name": _NAMES.get(status, "error"),
        "errors": list(messages) or [_TEXTS.get(status, "The request failed.")],
    }
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    return json_response(body, status, headers)


def _seed(form: FormData, prompt: str) -> int | Response:
    raw = form.get("seed", "0")
    if not isinstance(raw, str) or not raw.isdigit() or int(raw) > MAX_SEED:
        return error(400, f"seed: must be an integer between 0 and {MAX_SEED}")
    # 0 asks for a random seed: the fake's is drawn from the prompt, to stay deterministic.
    return int(raw) or zlib.crc32(prompt.encode()) % MAX_SEED + 1


class StabilityFake:
    def __init__(self) -> None:
        self.fail_first = MediaFailFirst()
        self.submissions = Submissions()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2beta/stable-image/generate/{endpoint}", self.generate, methods=["POST"]),
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
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "authorization: missing or invalid Bearer token")
        endpoint = request.path_params["endpoint"]
        if endpoint not in ENDPOINTS:
            return error(404, f"no such endpoint: stable-image/generate/{endpoint}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(400, "content-type: must be multipart/form-data")
        form = await request.form()
        prompt = form.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return error(400, "prompt: required")
        if len(prompt) > 10_000:
            return error(400, "prompt: must be at most 10000 characters")
        ratio = form.get("aspect_ratio", "1:1")
        if ratio not in SIZES:
            return error(400, f"aspect_ratio: must be one of {', '.join(SIZES)}")
        if endpoint == "sd3" and form.get("model", "sd3.5-large") not in SD3_MODELS:
            return error(400, f"model: must be one of {', '.join(SD3_MODELS)}")
        seed = _seed(form, prompt)
        if isinstance(seed, Response):
            return seed

        faults = self.fail_first.admit(spec, faults)
        await sleep_ms(faults.latency_ms)
        if faults.status is not None:
            return error(faults.status, retry_after=faults.retry_after)
        await sleep_ms(faults.stall_ms)  # the generation's time
        if faults.fail_after_queued:
            return error(500)
        self.submissions.count(prompt)
        width, height = SIZES[str(ratio)]
        data = png(prompt, seed, width, height)
        finish = "CONTENT_FILTERED" if faults.nsfw else "SUCCESS"
        if request.headers.get("accept", "image/*").startswith("application/json"):
            image = base64.b64encode(data).decode()
            response = json_response({"image": image, "finish_reason": finish, "seed": seed})
        else:
            headers = {"finish-reason": finish, "seed": str(seed)}
            response = Response(data, 200, headers, media_type="image/png")
        return lost_answer(response) if faults.lose_answer else response
