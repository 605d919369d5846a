"""Replicate predictions (providers.md A2): create (`Prefer: wait`), get, cancel; RFC 7807
problem-JSON errors and `Retry-After`.

A create whose answer was lost is looked up in `GET /v1/predictions` (newest first): ours is
the one whose webhook URL carries our attempt id (`client_ref`), or, without a webhook, whose
input is exactly ours and which was created after the attempt began. Webhooks are signed
(`webhook-signature`, `verify_webhook`) and still only a hint to poll.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

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

PREFER_WAIT_S = 1  # a fast model answers the create itself; a slow one is polled
LOOKUP_PAGES = 3
_STATUSES: dict[str, MediaStatus] = {
    "starting": "queued",
    "processing": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "cancelled",
}
_REFUSALS = ("nsfw", "content policy", "safety")


def _created(raw: Any) -> float:
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")[:26] + "+00:00").timestamp()
    except ValueError:
        return 0.0


class ReplicateProvider:
    name = "replicate"
    can_cancel = True
    can_lookup = True

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str,
                 *, timeout_s: float = 30.0) -> None:  # fmt: skip
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout_s = timeout_s

    def _error(self, response: httpx.Response, *, accepted: bool) -> MediaProviderError:
        body = media_http.body_of(response)
        detail = body.get("detail") or body.get("title") if isinstance(body, dict) else None
        message = str(detail or response.text[:200])
        kind = media_http.kind_of_status(response.status_code)
        if accepted and kind == "invalid":
            kind = "failed"
        if any(word in message.lower() for word in _REFUSALS):
            kind = "refused"
        return MediaProviderError(kind, f"replicate: {message}"[:300], status=response.status_code,
                                  retry_after=media_http.retry_after(response))  # fmt: skip

    def _input(self, request: MediaRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt}
        if request.kind == "video":
            body["num_frames"] = int((request.seconds or 5) * 16)
            body["aspect_ratio"] = "16:9" if request.width >= request.height else "9:16"
        else:
            body.update(width=request.width, height=request.height, num_outputs=request.n)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        return body

    async def submit(self, request: MediaRequest) -> Submitted:
        body: dict[str, Any] = {"input": self._input(request)}
        if request.webhook_url:
            body["webhook"] = request.webhook_url
            body["webhook_events_filter"] = ["start", "completed"]
        headers = {**self.headers, "Prefer": f"wait={PREFER_WAIT_S}"}
        response = await media_http.send(
            self.http, "POST", f"{self.base_url}/models/{request.model}/predictions",
            headers=headers, json=body, timeout_s=self.timeout_s + PREFER_WAIT_S, submit=True,
        )  # fmt: skip
        if response.status_code >= 300:
            raise self._error(response, accepted=False)
        prediction = media_http.body_of(response)
        if not isinstance(prediction, dict) or "id" not in prediction:
            raise MediaProviderError("ambiguous", "replicate: a create answer without an id")
        submitted = _submitted(prediction)
        return Submitted(submitted.request_id, submitted.handle, _polled(prediction, response))

    async def poll(self, submitted: Submitted) -> Polled:
        response = await media_http.send(
            self.http,
            "GET",
            submitted.handle["get_url"],
            headers=self.headers,
            timeout_s=self.timeout_s,
        )
        if response.status_code >= 300:
            error = self._error(response, accepted=True)
            if error.kind == "unavailable":
                raise error
            return Polled("failed", error=error)
        prediction = media_http.body_of(response)
        if not isinstance(prediction, dict):
            raise MediaProviderError("unavailable", "replicate: an unreadable prediction")
        return _polled(prediction, response)

    async def cancel(self, submitted: Submitted) -> bool:
        response = await media_http.send(
            self.http,
            "POST",
            submitted.handle["cancel_url"],
            headers=self.headers,
            timeout_s=self.timeout_s,
        )
        body = media_http.body_of(response) or {}
        return response.status_code < 300 and body.get("status") == "canceled"

    async def lookup(self, request: MediaRequest) -> Submitted | None:
        wanted = self._input(request)
        url: str | None = f"{self.base_url}/predictions"
        for _ in range(LOOKUP_PAGES):
            if url is None:
                break
            response = await media_http.send(self.http, "GET", url, headers=self.headers,
                                             timeout_s=self.timeout_s)  # fmt: skip
            if response.status_code >= 300:
                raise self._error(response, accepted=True)
            page = media_http.body_of(response) or {}
            for prediction in page.get("results") or []:
                if _is_ours(prediction, request, wanted):
                    return _submitted(prediction)
            url = page.get("next")
        return None

    def download(self, output: Output) -> AsyncIterator[bytes]:
        assert output.url is not None
        return media_http.download(self.http, output.url)


def _is_ours(prediction: dict[str, Any], request: MediaRequest, wanted: dict[str, Any]) -> bool:
    webhook = prediction.get("webhook")
    if webhook and request.client_ref:
        return request.client_ref in str(webhook)
    return bool(prediction.get("input") == wanted and request.client_ref)


def _submitted(prediction: dict[str, Any]) -> Submitted:
    urls = prediction.get("urls") or {}
    handle = {"id": str(prediction["id"]), "get_url": str(urls.get("get", "")),
              "cancel_url": str(urls.get("cancel", ""))}  # fmt: skip
    return Submitted(handle["id"], handle)


def _polled(prediction: dict[str, Any], response: httpx.Response) -> Polled:
    status = _STATUSES.get(str(prediction.get("status")))
    if status is None:
        raise MediaProviderError("unavailable", f"replicate: status {prediction.get('status')!r}")
    wait = media_http.retry_after(response)
    if status == "failed":
        message = str(prediction.get("error") or "the prediction failed")
        kind: FailureKind = "failed"
        if any(w in message.lower() for w in _REFUSALS):
            kind = "refused"
        return Polled("failed", error=MediaProviderError(kind, f"replicate: {message}"[:300]))
    if status != "succeeded":
        return Polled(status, retry_after=wait)
    output = prediction.get("output")
    urls = output if isinstance(output, list) else [output] if output else []
    outputs = tuple(Output(_content_type(str(u)), url=str(u)) for u in urls if u)
    if not outputs:
        return Polled("failed", error=MediaProviderError("failed", "replicate: no output"))
    return Polled("succeeded", progress=1.0, outputs=outputs)


def _content_type(url: str) -> str:
    for suffix, kind in ((".png", "image/png"), (".webp", "image/webp"), (".jpg", "image/jpeg"),
                         (".mp4", "video/mp4"), (".webm", "video/webm")):  # fmt: skip
        if url.split("?", 1)[0].endswith(suffix):
            return kind
    return "application/octet-stream"


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Replicate's signature: HMAC-SHA256 keyed by base64decode(secret after 'whsec_') over
    `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` lists `v1,<base64>` values."""
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature", "")
    if not (webhook_id and timestamp and signatures and "_" in secret):
        return False
    try:
        key = base64.b64decode(secret.split("_", 1)[1])
    except ValueError:
        return False
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for item in signatures.split():
        version, _, value = item.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False
