"""The Runware fake (providers.md A5, runware.ai/docs utilities/task-responses): `POST /v1` with a
JSON array of tasks, answered `{"data": [...]}` (and `"errors": [...]` for failed items).

- `imageInference` with `deliveryMethod: "async"` is acknowledged with `{"data": []}`; `"sync"`
  (the default) answers with the images once the job is done (`stall_ms`).
- `getResponse` polls a task by its client-chosen `taskUUID`. Answers are cumulative: every
  finished image is repeated on every later poll (clients deduplicate on `imageUUID`), an
  unfinished task has one `"status": "processing"` item with `progress`, a failed one an item in
  `errors`. An unknown `taskUUID` is a 400 `taskNotFound` and a second submit of a known one a
  400 `duplicateTaskUUID` (both modelled: providers.md does not say what Runware answers).
- `includeCost: true` puts each image's `cost` in USD: 0.0013 a megapixel.
- Faults (`media_faults.py`): `nsfw=1` is a 400 `contentModeration` refusal at submit;
  `fail_after_queued=1` an `inferenceError` item when the job would finish.

Images are at `/im/{taskUUID}/{n}.png`, on this fake's origin. `GET /_submissions` counts
accepted tasks.
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
    MediaFaults,
    Submissions,
    lost_answer,
    media_file,
    parse_media_faults,
    sleep_ms,
)

USD_PER_MEGAPIXEL = 0.0013
_CODES = {401: "invalidApiKey", 402: "insufficientCredits", 429: "tooManyRequests",
          500: "internalError", 502: "internalError", 503: "serviceUnavailable"}  # fmt: skip


class TaskError(Exception):
    def __init__(self, code: str, message: str, task: dict[str, Any], parameter: str = "") -> None:
        super().__init__(message)
        self.item: dict[str, Any] = {"code": code, "message": message, "parameter": parameter}
        self.item.update(taskType=task.get("taskType"), taskUUID=task.get("taskUUID"))


def errors(status: int, *items: dict[str, Any], retry_after: float | None = None) -> Response:
    if not items:
        message = "The request failed." if status != 401 else "Invalid API key."
        items = ({"code": _CODES.get(status, "unknownError"), "message": message},)
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    return json_response({"errors": list(items)}, status, headers)


@dataclass
class Task:
    job: FakeJob
    prompt: str
    width: int
    height: int
    count: int
    seed: int
    include_cost: bool


def _int_field(task: dict[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = task.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TaskError("invalidParameter", f"{name} must be an integer {low}-{high}", task, name)
    return value


def _inference(task: dict[str, Any]) -> Task:
    """The task's fields, checked; raises TaskError as Runware's validation would."""
    try:
        if uuid.UUID(str(task.get("taskUUID"))).version != 4:
            raise ValueError
    except ValueError:
        raise TaskError("invalidTaskUUID", "taskUUID must be a UUID v4", task, "taskUUID") from None
    prompt = task.get("positivePrompt")
    if not isinstance(prompt, str) or not 2 <= len(prompt.strip()) <= 3000:
        message = "positivePrompt must be a string of 2-3000 characters"
        raise TaskError("invalidPositivePrompt", message, task, "positivePrompt")
    if not isinstance(task.get("model"), str):
        raise TaskError("invalidModel", "model is required", task, "model")
    width = _int_field(task, "width", 128, 2048, 1024)
    height = _int_field(task, "height", 128, 2048, 1024)
    for name, side in (("width", width), ("height", height)):
        if side % 64:
            raise TaskError("invalidParameter", f"{name} must be a multiple of 64", task, name)
    count = _int_field(task, "numberResults", 1, 20, 1)
    seed = _int_field(task, "seed", 1, 9_223_372_036_854_775_807, zlib.crc32(prompt.encode()) + 1)
    job = FakeJob(str(task["taskUUID"]), MediaFaults())
    return Task(job, prompt, width, height, count, seed, task.get("includeCost") is True)


class RunwareFake:
    def __init__(self) -> None:
        self.fail_first = MediaFailFirst()
        self.submissions = Submissions()
        self.tasks: dict[str, Task] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1", self.handle, methods=["POST"]),
            Route("/im/{uuid}/{index:int}.png", self.image, methods=["GET"]),
            Route("/_submissions", self.counted, methods=["GET"]),
        ]

    async def counted(self, request: Request) -> Response:
        return json_response(self.submissions.as_json())

    async def handle(self, request: Request) -> Response:
        spec = request.path_params.get("spec", "")
        try:
            faults = parse_media_faults(spec)
        except FaultSpecError as exc:
            return errors(400, {"code": "invalidFaultSpec", "message": str(exc)})
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return errors(401)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, list) or not all(isinstance(t, dict) for t in body):
            return errors(
                400, {"code": "invalidRequest", "message": "the body must be a task array"}
            )
        origin = str(request.url).rsplit("/v1", 1)[0]
        try:
            return await self._tasks(body, spec, faults, origin)
        except TaskError as exc:
            return errors(400, exc.item)

    def _checked(
        self, body: list[dict[str, Any]]
    ) -> tuple[list[tuple[dict[str, Any], Task]], list[dict[str, Any]]]:
        """The new inference tasks and the polls of the array; raises TaskError."""
        new = [(t, _inference(t)) for t in body if t.get("taskType") == "imageInference"]
        for raw, _ in new:
            if raw["taskUUID"] in self.tasks:
                raise TaskError("duplicateTaskUUID", "taskUUID was used already", raw, "taskUUID")
        polls = [t for t in body if t.get("taskType") == "getResponse"]
        for raw in polls:
            if raw.get("taskUUID") not in self.tasks:
                raise TaskError("taskNotFound", "no task with this taskUUID", raw, "taskUUID")
        if len(new) + len(polls) != len(body):
            raise TaskError("invalidTaskType", "unsupported taskType", body[0], "taskType")
        return new, polls

    async def _tasks(
        self, body: list[dict[str, Any]], spec: str, faults: MediaFaults, origin: str
    ) -> Response:
        new, polls = self._checked(body)
        await sleep_ms(faults.latency_ms)
        lost = False
        if new:
            faults = self.fail_first.admit(spec, faults)
            if faults.status is not None:
                return errors(faults.status, retry_after=faults.retry_after)
            if faults.nsfw:
                message = "The prompt was flagged by content moderation."
                raise TaskError("contentModeration", message, new[0][0], "positivePrompt")
            lost = faults.lose_answer
        data: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for raw, task in new:
            task.job = FakeJob(task.job.id, faults)
            self.tasks[task.job.id] = task
            self.submissions.count(task.prompt)
            if raw.get("deliveryMethod", "sync") == "sync":
                await sleep_ms(faults.stall_ms)
                task.job.polls = max(faults.polls, 1)
                self._report(task, origin, data, failed)
        for raw in polls:
            task = self.tasks[raw["taskUUID"]]
            task.job.poll()
            if (status := task.job.poll_error()) is not None:
                return errors(status)
            self._report(task, origin, data, failed)
        body_out: dict[str, Any] = {"data": data}
        if failed:
            body_out["errors"] = failed
        answer = json_response(body_out)
        return lost_answer(answer) if lost else answer

    def _report(
        self, task: Task, origin: str, data: list[dict[str, Any]], failed: list[dict[str, Any]]
    ) -> None:
        """The task's items as a poll sees them now: finished images, progress or failure."""
        stage, progress = task.job.stage()
        uuid_ = task.job.id
        done = task.count if stage == "succeeded" else int(progress * task.count)
        if stage == "failed":
            done = 0
        for n in range(done):
            item = {"taskType": "imageInference", "taskUUID": uuid_, "status": "success",
                    "imageUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{uuid_}/{n}")),
                    "imageURL": f"{origin}/im/{uuid_}/{n}.png", "seed": task.seed + n}  # fmt: skip
            if task.include_cost:
                item["cost"] = round(USD_PER_MEGAPIXEL * task.width * task.height / 1e6, 6)
            data.append(item)
        if stage == "failed":
            failed.append({"code": "inferenceError", "status": "error", "taskUUID": uuid_,
                           "taskType": "imageInference",
                           "message": "The inference failed on the provider."})  # fmt: skip
        elif done < task.count:
            data.append({"taskType": "imageInference", "taskUUID": uuid_, "status": "processing",
                         "progress": round(progress * 100)})  # fmt: skip

    async def image(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["uuid"])
        index = request.path_params["index"]
        if task is None or not 0 <= index < task.count:
            return Response(b"Not Found", 404, media_type="text/plain")
        data = png(task.prompt, task.seed + index, task.width, task.height)
        return media_file(data, "image/png", task.job.faults)
