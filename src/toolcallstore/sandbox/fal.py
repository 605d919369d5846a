"""A loopback fal.ai queue (providers.md A1) with the media fault grammar (media_faults.py).

    POST [/fault/{spec}]/fal/{owner}/{alias}[/{subpath}]     submit -> request_id + 4 URLs
    GET  /fal/{owner}/{alias}/requests/{id}/status           IN_QUEUE | IN_PROGRESS | COMPLETED
    GET  /fal/{owner}/{alias}/requests/{id}                  the result (images or video)
    PUT  /fal/{owner}/{alias}/requests/{id}/cancel           202 CANCELLATION_REQUESTED | 400
    GET  /fal/files/{id}/{index}                             an output's bytes
    GET  /fal/_submissions                                   how many submits were accepted

Errors are non-2xx `{"detail": ...}`; a failed request's result carries `X-Fal-Error-Type`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.sandbox.faults import FaultSpecError
from toolcallstore.sandbox.media_bytes import png, video
from toolcallstore.sandbox.media_faults import (
    FakeJob,
    MediaFailFirst,
    Submissions,
    delay,
    lost_answer,
    media_file,
    parse_media_faults,
)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _detail(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return _json({"detail": message}, status, headers)


@dataclass
class _Job:
    clock: FakeJob
    model: str
    body: dict[str, Any]


@dataclass
class FalFake:
    jobs: dict[str, _Job] = field(default_factory=dict)
    submissions: Submissions = field(default_factory=Submissions)
    fail_first: MediaFailFirst = field(default_factory=MediaFailFirst)

    def routes(self) -> list[Route]:
        requests = "/fal/{owner}/{alias}/requests/{rid}"
        routes = [
            Route("/fal/_submissions", self.counts, methods=["GET"]),
            Route("/fal/files/{rid}/{index:int}", self.file, methods=["GET"]),
            Route(requests + "/status", self.status, methods=["GET"]),
            Route(requests + "/cancel", self.cancel, methods=["PUT"]),
            Route(requests, self.result, methods=["GET"]),
        ]
        for prefix in ("", "/fault/{spec}"):
            routes.append(Route(prefix + "/fal/{model:path}", self.submit, methods=["POST"]))
        return routes

    async def counts(self, request: Request) -> Response:
        return _json(self.submissions.as_json())

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "").startswith("Key ")

    async def submit(self, request: Request) -> Response:
        spec = request.path_params.get("spec", "")
        try:
            faults = parse_media_faults(spec)
        except FaultSpecError as exc:
            return _detail(str(exc), 400)
        if not self._authorized(request):
            return _detail("Missing or invalid credentials (Authorization: Key <FAL_KEY>)", 401)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            loc = ["body", "prompt"]
            return _json({"detail": [{"loc": loc, "msg": "field required",
                                      "type": "value_error.missing"}]}, 422)  # fmt: skip
        faults = self.fail_first.admit(spec, faults)
        await delay(faults)
        if faults.status is not None:
            headers = {} if faults.retry_after is None else {
                "retry-after": f"{faults.retry_after:g}"}  # fmt: skip
            return _detail("Service temporarily unavailable (sandbox fault)", faults.status,
                           headers)  # fmt: skip
        model = request.path_params["model"]
        parts = model.split("/")
        if len(parts) < 2:
            return _detail(f"Application '{model}' not found", 404)
        rid = str(uuid.uuid4())
        self.jobs[rid] = _Job(FakeJob(rid, faults), model, body)
        self.submissions.count(body["prompt"])
        base = f"{str(request.base_url).rstrip('/')}/fal/{parts[0]}/{parts[1]}/requests/{rid}"
        answer = _json({"request_id": rid, "response_url": base, "status_url": base + "/status",
                        "cancel_url": base + "/cancel", "queue_position": 0})  # fmt: skip
        return lost_answer(answer) if faults.lose_answer else answer

    def _job(self, request: Request) -> _Job | None:
        return self.jobs.get(request.path_params["rid"])

    async def status(self, request: Request) -> Response:
        job = self._job(request)
        if job is None:
            return _detail("Request not found", 404)
        await delay(job.clock.faults)
        stage, progress = job.clock.poll()
        error = job.clock.poll_error()
        if error is not None:
            return _detail("Service temporarily unavailable (sandbox fault)", error)
        url = str(request.url).split("/status", 1)[0]
        if stage == "queued":
            return _json({"status": "IN_QUEUE", "queue_position": 0, "response_url": url})
        if stage == "running":
            steps = 20
            message = f"step {round(progress * steps)}/{steps}"
            logs = [{"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "source": "user",
                     "message": message}]  # fmt: skip
            return _json({"status": "IN_PROGRESS", "logs": logs, "response_url": url})
        return _json({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 1.42},
                      "response_url": url})  # fmt: skip

    async def result(self, request: Request) -> Response:
        job = self._job(request)
        if job is None:
            return _detail("Request not found", 404)
        stage, _ = job.clock.stage()
        if stage in ("queued", "running"):
            return _detail("Request is still in progress", 400)
        if stage == "cancelled":
            return _detail("Request was cancelled", 400)
        if stage == "failed":
            return _detail("Inference failed: the worker crashed (sandbox fault)", 500,
                           {"x-fal-error-type": "runner_failure"})  # fmt: skip
        rid = job.clock.id
        files = f"{str(request.base_url).rstrip('/')}/fal/files/{rid}"
        if job.body.get("duration") is not None:
            video_out = {"url": f"{files}/0", "content_type": "video/mp4", "file_name": "out.mp4"}
            return _json({"video": video_out, "seed": job.body.get("seed", 0)})
        size = job.body.get("image_size") or {}
        width, height = int(size.get("width", 1024)), int(size.get("height", 1024))
        n = int(job.body.get("num_images", 1))
        images = [{"url": f"{files}/{i}", "width": width, "height": height,
                   "content_type": "image/png"} for i in range(n)]  # fmt: skip
        nsfw = [job.clock.faults.nsfw] * n
        return _json({"images": images, "seed": job.body.get("seed", 0), "has_nsfw_concepts": nsfw,
                      "timings": {"inference": 1.4}, "prompt": job.body["prompt"]})  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        job = self._job(request)
        if job is None:
            return _json({"status": "NOT_FOUND"}, 404)
        if job.clock.stage()[0] in ("succeeded", "failed"):
            return _json({"status": "ALREADY_COMPLETED"}, 400)
        job.clock.cancelled = True
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    async def file(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["rid"])
        if job is None or job.clock.stage()[0] != "succeeded":
            return _detail("File not found", 404)
        seed = int(job.body.get("seed", 0))
        prompt = f"{job.body['prompt']}#{request.path_params['index']}"
        if job.body.get("duration") is not None:
            data = video(prompt, seed, float(job.body["duration"]))
            return media_file(data, "video/mp4", job.clock.faults)
        size = job.body.get("image_size") or {}
        data = png(prompt, seed, int(size.get("width", 1024)), int(size.get("height", 1024)))
        return media_file(data, "image/png", job.clock.faults)
