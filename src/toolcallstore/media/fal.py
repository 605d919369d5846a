"""fal.ai's queue API (providers.md A1): submit to `POST /{model}`, then the `status_url`,
`response_url` and `cancel_url` the submit answered.

fal has no way to find a submission by a client-chosen id, so a submit whose answer was lost
cannot be looked up (`can_lookup` is False): the job treats that attempt as possibly billed
and never submits to fal again for the same generation (see media/runner.py). Its webhooks are
unsigned: only a hint to poll now.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from toolcallstore.media import http as media_http
from toolcallstore.media.base import (
    FailureKind,
    MediaProviderError,
    MediaRequest,
    MediaStatus,
    Output,
    Polled,
    Submitted,
)

_STEP = re.compile(r"(\d+)\s*/\s*(\d+)")
_STATUSES: dict[str, MediaStatus] = {
    "IN_QUEUE": "queued",
    "IN_PROGRESS": "running",
    "COMPLETED": "succeeded",
}


def _detail(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return str(detail[0].get("msg", detail))[:300]
    return str(detail or body)[:300]


class FalProvider:
    name = "fal"
    can_cancel = True
    can_lookup = False

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str,
                 *, timeout_s: float = 30.0) -> None:  # fmt: skip
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Key {api_key}"}
        self.timeout_s = timeout_s

    def _error(self, response: httpx.Response, *, accepted: bool) -> MediaProviderError:
        body = media_http.body_of(response)
        message = _detail(body)
        status = response.status_code
        kind = media_http.kind_of_status(status)
        if accepted and kind == "invalid":
            kind = "failed"
        if "content_policy" in str(response.headers.get("x-fal-error-type", "")) or (
            "content policy" in message.lower()
        ):
            kind = "refused"
        return MediaProviderError(kind, f"fal: {message}", status=status,
                                  retry_after=media_http.retry_after(response))  # fmt: skip

    def _input(self, request: MediaRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt}
        if request.kind == "video":
            body["duration"] = str(int(request.seconds or 5))
            body["aspect_ratio"] = "16:9" if request.width >= request.height else "9:16"
        else:
            body["image_size"] = {"width": request.width, "height": request.height}
            body["num_images"] = request.n
        if request.seed is not None:
            body["seed"] = request.seed
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        return body

    async def submit(self, request: MediaRequest) -> Submitted:
        url = f"{self.base_url}/{request.model}"
        if request.webhook_url:
            url += "?fal_webhook=" + quote(request.webhook_url, safe="")
        response = await media_http.send(self.http, "POST", url, headers=self.headers,
                                         json=self._input(request), timeout_s=self.timeout_s,
                                         submit=True)  # fmt: skip
        if response.status_code >= 300:
            raise self._error(response, accepted=False)
        body = media_http.body_of(response)
        try:
            handle = {key: str(body[key]) for key in
                      ("request_id", "status_url", "response_url", "cancel_url")}  # fmt: skip
        except (KeyError, TypeError):
            raise MediaProviderError("ambiguous", "fal: a submit answer without its URLs") from None
        return Submitted(handle["request_id"], handle)

    async def poll(self, submitted: Submitted) -> Polled:
        handle = submitted.handle
        response = await media_http.send(
            self.http,
            "GET",
            handle["status_url"] + "?logs=1",
            headers=self.headers,
            timeout_s=self.timeout_s,
        )
        if response.status_code >= 300:
            error = self._error(response, accepted=True)
            if error.kind in ("unavailable",):
                raise error
            return Polled("failed", error=error)
        body = media_http.body_of(response) or {}
        status = _STATUSES.get(str(body.get("status")))
        if status is None:
            raise MediaProviderError("unavailable", f"fal: unknown status {body.get('status')!r}")
        if status != "succeeded":
            return Polled(status, progress=_progress(body.get("logs")),
                          retry_after=media_http.retry_after(response))  # fmt: skip
        if body.get("error") or body.get("error_type"):
            kind: FailureKind = "failed"
            if "content_policy" in str(body.get("error_type")):
                kind = "refused"
            return Polled("failed", error=MediaProviderError(kind, f"fal: {body.get('error')}"))
        result = await media_http.send(self.http, "GET", handle["response_url"],
                                       headers=self.headers, timeout_s=self.timeout_s)  # fmt: skip
        if result.status_code >= 300:
            error = self._error(result, accepted=True)
            if error.kind == "unavailable" and "x-fal-error-type" not in result.headers:
                raise error  # a proxy's hiccup: the result is still there
            if error.kind == "unavailable":
                error = MediaProviderError("failed", error.message, status=error.status)
            return Polled("failed", error=error)
        return _outputs(media_http.body_of(result) or {})

    async def cancel(self, submitted: Submitted) -> bool:
        response = await media_http.send(
            self.http,
            "PUT",
            submitted.handle["cancel_url"],
            headers=self.headers,
            timeout_s=self.timeout_s,
        )
        body = media_http.body_of(response) or {}
        return response.status_code < 300 and body.get("status") in (
            "OK", "CANCELLATION_REQUESTED")  # fmt: skip

    async def lookup(self, request: MediaRequest) -> Submitted | None:
        return None  # fal cannot find a request by anything we chose

    def download(self, output: Output) -> AsyncIterator[bytes]:
        assert output.url is not None
        return media_http.download(self.http, output.url)


def _progress(logs: Any) -> float | None:
    if not isinstance(logs, list):
        return None
    for entry in reversed(logs):
        match = _STEP.search(str(entry.get("message", "")) if isinstance(entry, dict) else "")
        if match and int(match.group(2)):
            return min(1.0, int(match.group(1)) / int(match.group(2)))
    return None


def _outputs(body: dict[str, Any]) -> Polled:
    nsfw = body.get("has_nsfw_concepts")
    if isinstance(nsfw, list) and nsfw and all(nsfw):
        return Polled(
            "failed",
            error=MediaProviderError(
                "refused", "fal: the output was flagged by the content policy (has_nsfw_concepts)"
            ),
        )
    items = body.get("images")
    if not isinstance(items, list):
        video = body.get("video")
        items = [video] if isinstance(video, dict) else []
    outputs = tuple(
        Output(str(item.get("content_type") or "image/png"), url=str(item["url"]),
               width=item.get("width"), height=item.get("height"))
        for item in items if isinstance(item, dict) and item.get("url")
    )  # fmt: skip
    if not outputs:
        return Polled("failed", error=MediaProviderError("failed", "fal: no output in the result"))
    return Polled("succeeded", progress=1.0, outputs=outputs)
