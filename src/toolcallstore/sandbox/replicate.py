"""A loopback Replicate (providers.md A2) with the media fault grammar (media_faults.py).

    POST [/fault/{spec}]/replicate/v1/models/{owner}/{name}/predictions   create (Prefer: wait)
    GET  /replicate/v1/predictions/{id}                                   the prediction
    POST /replicate/v1/predictions/{id}/cancel                            -> status canceled
    GET  /replicate/v1/predictions                                        list, newest first
    GET  /replicate/v1/webhooks/default/secret                            {"key": "whsec_..."}
    GET  /replicate/files/{id}/{index}                                    an output's bytes
    GET  /replicate/_submissions                                          accepted creates

Errors are RFC 7807 problem JSON; a `retry_after` fault sends `Retry-After`.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

PAGE = 100
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"type": f"https://replicate.com/docs/errors#{status}", "title": title,
            "status": status, "detail": detail}  # fmt: skip
    return Response(orjson.dumps(body), status, headers, media_type="application/problem+json")


@dataclass
class _Prediction:
    clock: FakeJob
    model: str
    input: dict[str, Any]
    webhook: str | None
    created_at: str
    base: str  # the fake's URL root, for the object's urls and outputs


@dataclass
class ReplicateFake:
    predictions: dict[str, _Prediction] = field(default_factory=dict)
    submissions: Submissions = field(default_factory=Submissions)
    fail_first: MediaFailFirst = field(default_factory=MediaFailFirst)
    webhook_secret: str = field(
        default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )

    def routes(self) -> list[Route]:
        v1 = "/replicate/v1"
        routes = [
            Route("/replicate/_submissions", self.counts, methods=["GET"]),
            Route("/replicate/files/{pid}/{index:int}", self.file, methods=["GET"]),
        ]
        # Under a fault prefix too, as a base URL with one serves every call of the client;
        # only the create takes the fault (polls follow the faults their job was made with).
        for prefix in ("", "/fault/{spec}"):
            routes += [
                Route(prefix + v1 + "/webhooks/default/secret", self.secret, methods=["GET"]),
                Route(prefix + v1 + "/predictions", self.list, methods=["GET"]),
                Route(prefix + v1 + "/predictions/{pid}", self.get, methods=["GET"]),
                Route(prefix + v1 + "/predictions/{pid}/cancel", self.cancel, methods=["POST"]),
                Route(prefix + v1 + "/models/{owner}/{name}/predictions", self.create,
                      methods=["POST"]),
            ]  # fmt: skip
        return routes

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "").startswith("Bearer ")

    def _unauthenticated(self) -> Response:
        return problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    async def counts(self, request: Request) -> Response:
        return _json(self.submissions.as_json())

    async def secret(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthenticated()
        return _json({"key": self.webhook_secret})

    async def create(self, request: Request) -> Response:
        spec = request.path_params.get("spec", "")
        try:
            faults = parse_media_faults(spec)
        except FaultSpecError as exc:
            return problem(400, "Invalid fault spec", str(exc))
        if not self._authorized(request):
            return self._unauthenticated()
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return problem(422, "Input validation failed", "input: input is required")
        if not isinstance(body["input"].get("prompt"), str):
            return problem(422, "Input validation failed", "input.prompt: prompt is required")
        faults = self.fail_first.admit(spec, faults)
        await delay(faults)
        if faults.status is not None:
            headers = {} if faults.retry_after is None else {
                "retry-after": f"{faults.retry_after:g}"}  # fmt: skip
            return problem(
                faults.status,
                "Service unavailable",
                "The model is temporarily unavailable (sandbox fault)",
                headers,
            )
        pid = "".join(secrets.choice(_ALPHABET) for _ in range(26))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        base = str(request.base_url).rstrip("/") + "/replicate"
        prediction = _Prediction(FakeJob(pid, faults), model, body["input"], body.get("webhook"),
                                 now, base)  # fmt: skip
        self.predictions[pid] = prediction
        self.submissions.count(body["input"]["prompt"])
        # Sync mode (`Prefer: wait`): the real API holds the answer until the prediction ends
        # or the wait runs out; a fake job ends only when polled, so the answer is at once,
        # not terminal, with the Location to poll.
        answer = _json(self._object(prediction), 201)
        if prediction.clock.stage()[0] in ("queued", "running"):
            answer.headers["location"] = f"{base}/v1/predictions/{pid}"
        return lost_answer(answer) if faults.lose_answer else answer

    def _object(self, p: _Prediction) -> dict[str, Any]:
        stage, _ = p.clock.stage()
        status = {"queued": "starting", "running": "processing", "cancelled": "canceled"}.get(
            stage, stage)  # fmt: skip
        output = None
        error = None
        if stage == "succeeded":
            if p.clock.faults.nsfw:
                status, error = "failed", "NSFW content detected. Try running it again, or try a"
                error += " different prompt."
            else:
                n = 1 if "num_frames" in p.input else int(p.input.get("num_outputs", 1))
                suffix = "mp4" if "num_frames" in p.input else "png"
                pid = p.clock.id
                output = [f"{p.base}/files/{pid}/{i}?name=out-{i}.{suffix}" for i in range(n)]
        elif stage == "failed":
            error = "CUDA out of memory (sandbox fault: failed after it was queued)"
        get = f"{p.base}/v1/predictions/{p.clock.id}"
        return {
            "id": p.clock.id, "model": p.model, "version": "sandbox", "input": p.input,
            "logs": "", "output": output, "error": error, "status": status,
            "data_removed": False, "source": "api", "created_at": p.created_at,
            "started_at": None if stage == "queued" else p.created_at,
            "completed_at": p.created_at if status in ("succeeded", "failed", "canceled") else None,
            "metrics": {"predict_time": 1.2} if status == "succeeded" else {},
            "webhook": p.webhook,
            "urls": {"get": get, "cancel": get + "/cancel",
                     "web": f"https://replicate.com/p/{p.clock.id}"},
        }  # fmt: skip

    async def get(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthenticated()
        p = self.predictions.get(request.path_params["pid"])
        if p is None:
            return problem(404, "Not found", "The requested resource could not be found")
        await delay(p.clock.faults)
        p.clock.poll()
        error = p.clock.poll_error()
        if error is not None:
            headers = {} if p.clock.faults.retry_after is None else {
                "retry-after": f"{p.clock.faults.retry_after:g}"}  # fmt: skip
            return problem(error, "Too many requests" if error == 429 else "Service unavailable",
                           "Request was throttled (sandbox fault)", headers)  # fmt: skip
        return _json(self._object(p))

    async def cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthenticated()
        p = self.predictions.get(request.path_params["pid"])
        if p is None:
            return problem(404, "Not found", "The requested resource could not be found")
        if p.clock.stage()[0] in ("queued", "running"):
            p.clock.cancelled = True
        return _json(self._object(p))

    async def list(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthenticated()
        newest = list(reversed(self.predictions.values()))
        start = int(request.query_params.get("cursor", "0") or 0)
        page = newest[start : start + PAGE]
        more = start + PAGE < len(newest)
        next_url = f"{str(request.url).split('?', 1)[0]}?cursor={start + PAGE}" if more else None
        results = [self._object(p) for p in page]
        return _json({"next": next_url, "previous": None, "results": results})

    async def file(self, request: Request) -> Response:
        p = self.predictions.get(request.path_params["pid"])
        if p is None or p.clock.stage()[0] != "succeeded" or p.clock.faults.nsfw:
            return problem(404, "Not found", "The requested file could not be found")
        seed = int(p.input.get("seed", 0))
        prompt = f"{p.input['prompt']}#{request.path_params['index']}"
        if "num_frames" in p.input:
            data = video(prompt, seed, max(1.0, int(p.input["num_frames"]) / 16))
            return media_file(data, "video/mp4", p.clock.faults)
        data = png(prompt, seed, int(p.input.get("width", 1024)), int(p.input.get("height", 1024)))
        return media_file(data, "image/png", p.clock.faults)
