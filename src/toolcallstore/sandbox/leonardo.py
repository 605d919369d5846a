"""The Leonardo.Ai fake (providers.md A4): `POST /api/rest/v1/generations` accepts a generation
and answers `{"sdGenerationJob": {"generationId", "apiCreditCost"}}`; `GET .../generations/{id}`
answers `{"generations_by_pk": {...}}`, `PENDING` until its job finishes (`media_faults.py`'s
`polls` and `stall_ms`), then `COMPLETE` with `generated_images` whose URLs point back at this
fake (`/cdn/{id}/{n}.png`) or `FAILED`; an unknown id is `{"generations_by_pk": null}`.
`DELETE .../generations/{id}` deletes it. Errors are Hasura-style `{"error", "path", "code"}`
(providers.md marks that shape uncertain). `nsfw=1` is a 400 `content-moderation` refusal of the
prompt. Credits: 8 per 1024x1024 image, in proportion to pixels, at least 1.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from toolcallstore.sandbox.endpoint import json_response
from toolcallstore.sandbox.faults import FaultSpecError
from toolcallstore.sandbox.media_bytes import png
from toolcallstore.sandbox.media_faults import (
    FakeJob,
    MediaFailFirst,
    Submissions,
    lost_answer,
    media_file,
    parse_media_faults,
    sleep_ms,
)

API = "/api/rest/v1"
DEFAULT_MODEL = "b24e16ff-06e3-43eb-8d33-4416c2d75876"  # Leonardo Diffusion XL
_TEXTS = {
    401: ("Invalid token", "invalid-jwt"),
    429: ("Too many requests, please slow down.", "rate-limited"),
    500: ("Internal server error", "unexpected"),
    503: ("Service unavailable", "unexpected"),
}


def error(
    status: int, message: str = "", code: str = "", retry_after: float | None = None
) -> Response:
    default_message, default_code = _TEXTS.get(status, ("The request failed.", "unexpected"))
    body = {"error": message or default_message, "path": "$", "code": code or default_code}
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    return json_response(body, status, headers)


@dataclass
class Generation:
    job: FakeJob
    prompt: str
    model: str
    width: int
    height: int
    count: int
    seed: int
    created_at: str


def _size(body: dict[str, Any], name: str) -> int | str:
    value = body.get(name, 1024)
    if isinstance(value, bool) or not isinstance(value, int) or not 32 <= value <= 1536:
        return f"{name} must be an integer between 32 and 1536"
    if value % 8:
        return f"{name} must be a multiple of 8"
    return value


class LeonardoFake:
    def __init__(self) -> None:
        self.fail_first = MediaFailFirst()
        self.submissions = Submissions()
        self.generations: dict[str, Generation] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route(API + "/generations", self.create, methods=["POST"]),
            Route(API + "/generations/{id}", self.get, methods=["GET"]),
            Route(API + "/generations/{id}", self.delete, methods=["DELETE"]),
            Route("/cdn/{id}/{index:int}.png", self.image, methods=["GET"]),
            Route("/_submissions", self.counted, methods=["GET"]),
        ]

    async def counted(self, request: Request) -> Response:
        return json_response(self.submissions.as_json())

    def _refused(self, request: Request) -> Response | None:
        try:
            parse_media_faults(request.path_params.get("spec", ""))
        except FaultSpecError as exc:
            return error(400, str(exc), "invalid-fault-spec")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401)
        return None

    async def create(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        spec = request.path_params.get("spec", "")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return error(400, "Malformed JSON body", "parse-failed")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return error(400, "prompt is required", "validation-failed")
        width, height = _size(body, "width"), _size(body, "height")
        count = body.get("num_images", 4)
        for problem in (width, height):
            if isinstance(problem, str):
                return error(400, problem, "validation-failed")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 8:
            return error(400, "num_images must be an integer between 1 and 8", "validation-failed")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            return error(400, "seed must be a non-negative integer", "validation-failed")

        faults = self.fail_first.admit(spec, parse_media_faults(spec))
        await sleep_ms(faults.latency_ms)
        if faults.status is not None:
            return error(faults.status, retry_after=faults.retry_after)
        if faults.nsfw:
            message = "This prompt was flagged by our content moderation filter."
            return error(400, message, "content-moderation")
        assert isinstance(width, int) and isinstance(height, int)
        generation_id = str(uuid.uuid4())
        self.generations[generation_id] = Generation(
            FakeJob(generation_id, faults), prompt, str(body.get("modelId") or DEFAULT_MODEL),
            width, height, count, seed if seed is not None else zlib.crc32(prompt.encode()),
            "2026-01-01T00:00:00.000Z",
        )  # fmt: skip
        self.submissions.count(prompt)
        credits = count * max(1, round(width * height * 8 / (1024 * 1024)))
        answer = json_response(
            {"sdGenerationJob": {"generationId": generation_id, "apiCreditCost": credits}}
        )
        return lost_answer(answer) if faults.lose_answer else answer

    async def get(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        generation = self.generations.get(request.path_params["id"])
        if generation is None:
            return json_response({"generations_by_pk": None})
        job = generation.job
        await sleep_ms(job.faults.latency_ms)
        stage, _ = job.poll()
        if (status := job.poll_error()) is not None:
            return error(status)
        images = []
        if stage == "succeeded":
            origin = str(request.url).split(API + "/", 1)[0]
            images = [
                {"id": f"{job.id}-{n}", "url": f"{origin}/cdn/{job.id}/{n}.png", "nsfw": False,
                 "likeCount": 0, "generated_image_variation_generics": []}
                for n in range(generation.count)
            ]  # fmt: skip
        status_word = {"succeeded": "COMPLETE", "failed": "FAILED"}.get(stage, "PENDING")
        return json_response({"generations_by_pk": {
            "id": job.id, "status": status_word, "createdAt": generation.created_at,
            "modelId": generation.model, "prompt": generation.prompt,
            "imageWidth": generation.width, "imageHeight": generation.height,
            "seed": generation.seed, "generated_images": images,
        }})  # fmt: skip

    async def delete(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        generation_id = request.path_params["id"]
        if self.generations.pop(generation_id, None) is None:
            return json_response({"delete_generations_by_pk": None})
        return json_response({"delete_generations_by_pk": {"id": generation_id}})

    async def image(self, request: Request) -> Response:
        generation = self.generations.get(request.path_params["id"])
        index = request.path_params["index"]
        if generation is None or generation.job.stage()[0] != "succeeded":
            return Response(b"Not Found", 404, media_type="text/plain")
        if not 0 <= index < generation.count:
            return Response(b"Not Found", 404, media_type="text/plain")
        data = png(generation.prompt, generation.seed + index, generation.width, generation.height)
        return media_file(data, "image/png", generation.job.faults)
