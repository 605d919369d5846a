"""Runware over REST (providers.md A5): task arrays POSTed to `/v1`.

The `taskUUID` is ours to choose: it is derived from `MediaRequest.client_ref` (a UUID v4 made
from its hash), so a submit whose answer was lost is found again by polling the same taskUUID
(`lookup`), and a second submit of the same attempt names the same task. The task is sent with
`deliveryMethod: "async"` (acknowledged with `{"data": []}`) and polled with `getResponse`,
whose answers are cumulative: images are deduplicated on `imageUUID`. `includeCost` makes
Runware report each image's cost in USD; their sum is `Polled.cost_micros`. No cancel.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from toolcallstore.media import http as wire
from toolcallstore.media.base import (
    FailureKind,
    MediaProviderError,
    MediaRequest,
    Output,
    Polled,
    Submitted,
)

MODERATION_WORDS = ("moderation", "nsfw", "safety")
NOT_FOUND_CODES = frozenset({"taskNotFound", "invalidTaskUUID"})


def task_uuid(client_ref: str) -> str:
    """The UUID v4 that names the attempt `client_ref` at Runware (random without one)."""
    if not client_ref:
        return str(uuid.uuid4())
    digest = hashlib.sha256(b"toolcallstore runware task\x00" + client_ref.encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _items_error(provider: str, items: list[Any]) -> MediaProviderError:
    first: dict[str, Any] = items[0] if items and isinstance(items[0], dict) else {}
    inner = first["error"] if isinstance(first.get("error"), dict) else first
    code, message = str(inner.get("code", "")), str(inner.get("message", ""))
    refused = any(w in f"{code} {message}".lower() for w in MODERATION_WORDS)
    kind: FailureKind = "refused" if refused else "failed"
    return MediaProviderError(kind, f"{provider}: {code}: {message}"[:500])


class RunwareProvider:
    name = "runware"
    can_cancel = False
    can_lookup = True

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, api_key: str, *, timeout_s: float = 30.0
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/")  # .../v1
        self._key = api_key
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)

    async def _send(self, tasks: list[dict[str, Any]], *, submit: bool) -> httpx.Response:
        headers = {"authorization": f"Bearer {self._key}", "content-type": "application/json"}
        try:
            return await self._http.post(
                self._url, content=orjson.dumps(tasks), headers=headers, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            raise wire.transport_error(self.name, exc, submit=submit) from None

    def _error(self, response: httpx.Response) -> MediaProviderError:
        body = wire.body_of(response)
        items = body.get("errors") if isinstance(body, dict) else body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            items = [body["error"]]
        items = items if isinstance(items, list) else []
        described = _items_error(self.name, items)
        kind: FailureKind | None = "refused" if described.kind == "refused" else None
        return wire.http_error(self.name, response, described.message, kind)

    async def submit(self, request: MediaRequest) -> Submitted:
        if request.kind != "image":
            raise MediaProviderError("invalid", "runware: this adapter makes images only")
        task: dict[str, Any] = {
            "taskType": "imageInference", "taskUUID": task_uuid(request.client_ref),
            "model": request.model, "positivePrompt": request.prompt,
            "width": request.width, "height": request.height, "numberResults": request.n,
            "outputType": "URL", "outputFormat": "PNG", "includeCost": True,
            "deliveryMethod": "async",
        }  # fmt: skip
        if request.negative_prompt:
            task["negativePrompt"] = request.negative_prompt
        if request.seed is not None:
            task["seed"] = request.seed
        if request.webhook_url:
            task["webhookURL"] = request.webhook_url
        response = await self._send([task], submit=True)
        submitted = Submitted(
            task["taskUUID"], {"task_uuid": task["taskUUID"], "number_results": request.n}
        )
        if response.status_code >= 300:
            error = self._error(response)
            if "duplicateTaskUUID" in error.message:
                return submitted  # this attempt's task exists already: it is the one to poll
            raise error
        state = self._state(submitted, response, kind="ambiguous")
        return Submitted(submitted.request_id, submitted.handle, state=state or Polled("queued"))

    def _state(self, submitted: Submitted, response: httpx.Response, kind: FailureKind) -> Polled:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
            raise MediaProviderError(kind, "runware: an answer that is not {data: [...]}")
        mine = submitted.request_id
        items = [
            i for i in body.get("data", []) if isinstance(i, dict) and i.get("taskUUID") == mine
        ]
        failed = [i for i in body.get("errors") or [] if isinstance(i, dict)
                  and i.get("taskUUID") in (mine, None)]  # fmt: skip
        failed += [i for i in items if i.get("status") == "error"]
        return self._progress(submitted, items, failed)

    def _progress(
        self, submitted: Submitted, items: list[dict[str, Any]], failed: list[dict[str, Any]]
    ) -> Polled:
        images: dict[str, dict[str, Any]] = {}
        progress = 0.0
        for item in items:
            if isinstance(item.get("imageURL"), str):
                images.setdefault(str(item.get("imageUUID") or item["imageURL"]), item)
            elif isinstance(item.get("progress"), int | float):
                progress = max(progress, float(item["progress"]) / 100)
        costs = [wire.usd_to_micros(i.get("cost")) for i in images.values()]
        cost = sum(c for c in costs if c is not None) if any(c is not None for c in costs) else None
        if failed:
            return Polled("failed", error=_items_error(self.name, failed), cost_micros=cost)
        wanted = int(submitted.handle.get("number_results") or 1)
        if len(images) >= wanted:
            outputs = tuple(
                Output(wire.content_type_of(i["imageURL"]), url=i["imageURL"])
                for i in images.values()
            )
            return Polled("succeeded", 1.0, outputs, cost_micros=cost)
        if not items:
            return Polled("queued")
        return Polled("running", max(progress, len(images) / wanted), cost_micros=cost)

    async def poll(self, submitted: Submitted) -> Polled:
        poll = [{"taskType": "getResponse", "taskUUID": submitted.request_id}]
        response = await self._send(poll, submit=False)
        if response.status_code >= 300:
            raise self._error(response)
        return self._state(submitted, response, kind="unavailable")

    async def cancel(self, submitted: Submitted) -> bool:
        return False

    async def lookup(self, request: MediaRequest) -> Submitted | None:
        """The attempt's task if Runware has it; None when Runware says it does not."""
        uuid_ = task_uuid(request.client_ref)
        found = Submitted(uuid_, {"task_uuid": uuid_, "number_results": request.n})
        response = await self._send([{"taskType": "getResponse", "taskUUID": uuid_}], submit=False)
        if response.status_code >= 300:
            body = wire.body_of(response)
            items = body.get("errors") if isinstance(body, dict) else None
            codes = {i.get("code") for i in items or [] if isinstance(i, dict)}
            if response.status_code < 500 and codes and codes <= NOT_FOUND_CODES:
                return None
            raise self._error(response)
        return Submitted(uuid_, found.handle, state=self._state(found, response, "unavailable"))

    def download(self, output: Output) -> AsyncIterator[bytes]:
        return wire.download_output(self._http, self.name, output)
