"""Leonardo.Ai (providers.md A4): `POST /generations` answers `sdGenerationJob.generationId` and
the `apiCreditCost` it billed; `GET /generations/{id}` is `PENDING`, `COMPLETE` (with
`generated_images` URLs) or `FAILED`. No cancel (DELETE only deletes the generation) and no way
to find a submission whose answer was lost.

The credit cost is known at submit and kept in the handle, so a poll after a crash still reports
it: `Polled.cost_micros` is `apiCreditCost` x the price of a credit (`CREDIT_MICROS`). Leonardo's
webhooks are set per API key, not per request: `MediaRequest.webhook_url` is not sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from toolcallstore.media import http as wire
from toolcallstore.media.base import (
    FailureKind,
    MediaProviderError,
    MediaRequest,
    MediaStatus,
    Output,
    Polled,
    Submitted,
)

STATUSES: dict[str, MediaStatus] = {"PENDING": "running", "COMPLETE": "succeeded",
                                    "FAILED": "failed"}  # fmt: skip
# One API credit's price in micro-USD (API plans sell 3,500 credits for about $9): the reported
# `apiCreditCost` times this is the attempt's cost.
CREDIT_MICROS = 2600
MODERATION_WORDS = ("moderat", "nsfw", "inappropriate", "content policy")


class LeonardoProvider:
    name = "leonardo"
    can_cancel = False
    can_lookup = False

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        credit_micros: int = CREDIT_MICROS,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")  # .../api/rest/v1
        self._key = api_key
        self._credit_micros = credit_micros
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}", "accept": "application/json"}

    async def _send(self, method: str, url: str, *, submit: bool, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(
                method, url, headers=self._headers(), timeout=self._timeout, **kw
            )
        except httpx.TransportError as exc:
            raise wire.transport_error(self.name, exc, submit=submit) from None
        if response.status_code >= 300:
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> MediaProviderError:
        body = wire.body_of(response)
        message, code = str(body), ""
        if isinstance(body, dict):
            message, code = str(body.get("error", body)), str(body.get("code", ""))
        text = f"{code} {message}".lower()
        if response.status_code < 500 and any(w in text for w in MODERATION_WORDS):
            return wire.http_error(self.name, response, message, "refused")
        return wire.http_error(self.name, response, message)

    async def submit(self, request: MediaRequest) -> Submitted:
        if request.kind != "image":
            raise MediaProviderError("invalid", "leonardo: makes images only")
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "modelId": request.model,
            "width": request.width,
            "height": request.height,
            "num_images": request.n,
        }
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            body["seed"] = request.seed
        response = await self._send("POST", f"{self._base}/generations", submit=True, json=body)
        answer = _json(response, "ambiguous")
        job = answer.get("sdGenerationJob") or answer.get("generate")  # v1, or v2's name
        if not isinstance(job, dict) or not isinstance(job.get("generationId"), str):
            raise MediaProviderError("ambiguous", "leonardo: an answer without a generationId")
        credits = job.get("apiCreditCost")
        if not isinstance(credits, int | float) or isinstance(credits, bool):
            credits = None
        handle = {"generation_id": job["generationId"], "api_credit_cost": credits}
        return Submitted(job["generationId"], handle, state=Polled("queued"))

    async def poll(self, submitted: Submitted) -> Polled:
        url = f"{self._base}/generations/{submitted.request_id}"
        response = await self._send("GET", url, submit=False)
        cost = self._cost(submitted)
        generation = _json(response).get("generations_by_pk")
        if not isinstance(generation, dict):
            error = MediaProviderError("failed", "leonardo: the generation is not found")
            return Polled("failed", error=error, cost_micros=cost)
        status = STATUSES.get(str(generation.get("status")))
        if status is None:
            return Polled("running", cost_micros=cost)  # a status we do not know: not over yet
        if status == "failed":
            error = MediaProviderError("failed", "leonardo: the generation failed")
            return Polled("failed", error=error, cost_micros=cost)
        if status == "running":
            return Polled("running", cost_micros=cost)
        outputs = tuple(
            Output(wire.content_type_of(image["url"], "image/jpeg"), url=image["url"],
                   width=generation.get("imageWidth"), height=generation.get("imageHeight"))
            for image in generation.get("generated_images") or []
            if isinstance(image, dict) and isinstance(image.get("url"), str)
        )  # fmt: skip
        if not outputs:
            error = MediaProviderError("failed", "leonardo: complete without images")
            return Polled("failed", error=error, cost_micros=cost)
        return Polled("succeeded", 1.0, outputs, cost_micros=cost)

    def _cost(self, submitted: Submitted) -> int | None:
        credits = submitted.handle.get("api_credit_cost")
        if not isinstance(credits, int | float) or isinstance(credits, bool) or credits < 0:
            return None
        return -int(-credits * self._credit_micros // 1)  # rounded up

    async def cancel(self, submitted: Submitted) -> bool:
        return False

    async def lookup(self, request: MediaRequest) -> Submitted | None:
        return None

    def download(self, output: Output) -> AsyncIterator[bytes]:
        return wire.download_output(self._http, self.name, output)


def _json(response: httpx.Response, kind: FailureKind = "unavailable") -> dict[str, Any]:
    """The answer's JSON object; else `kind` (a submit's unreadable answer is ambiguous)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise MediaProviderError(kind, "leonardo: an answer that is not a JSON object")
    return body
