"""Stability AI v2beta stable-image generate (providers.md A3): one synchronous multipart POST,
the image's bytes back with `finish-reason` and `seed` headers.

`MediaRequest.model` picks the endpoint: `ultra` and `core` are endpoints of their own, any
`sd3...` model (`sd3.5-large`, `sd3.5-medium`, ...) goes to the `sd3` endpoint as its `model`
field. The size becomes the nearest `aspect_ratio` Stability knows; it renders about a megapixel
whatever the size asked.

Synchronous, so `submit` answers with the finished state: there is nothing to poll, cancel or
look up afterwards. A `CONTENT_FILTERED` image was generated (and billed) but blurred: it is a
failed, refused generation; a 403 `content_moderation` refused the prompt before generating.
Stability reports no cost: the target's configured price is the cost.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from toolcallstore.media import http as wire
from toolcallstore.media.base import MediaProviderError, MediaRequest, Output, Polled, Submitted

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
MAX_SEED = 4_294_967_294


def aspect_ratio(width: int, height: int) -> str:
    """The Stability aspect ratio nearest to width:height."""

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(int(w) / int(h) - width / height)

    return min(ASPECT_RATIOS, key=distance)


class StabilityProvider:
    name = "stability"
    can_cancel = False
    can_lookup = False

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, api_key: str, *, timeout_s: float = 150.0
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")  # .../v2beta
        self._key = api_key
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)

    def _form(self, request: MediaRequest) -> tuple[str, dict[str, Any]]:
        if request.kind != "image":
            raise MediaProviderError("invalid", "stability: makes images only")
        if request.n != 1:
            raise MediaProviderError("invalid", "stability: makes one image per request")
        fields = {
            "prompt": request.prompt,
            "aspect_ratio": aspect_ratio(request.width, request.height),
            "output_format": "png",
        }
        if request.seed is not None:
            fields["seed"] = str(request.seed % (MAX_SEED + 1))
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        endpoint = request.model
        if request.model.startswith("sd3"):
            endpoint, fields["model"] = "sd3", request.model
        files = {name: (None, value) for name, value in fields.items()}
        return f"{self._base}/stable-image/generate/{endpoint}", files

    async def submit(self, request: MediaRequest) -> Submitted:
        url, files = self._form(request)
        headers = {"authorization": f"Bearer {self._key}", "accept": "image/*"}
        try:
            response = await self._http.post(
                url, files=files, headers=headers, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            raise wire.transport_error(self.name, exc, submit=True) from None
        if response.status_code != 200:
            raise self._error(response)
        request_id = request.client_ref or str(uuid.uuid4())
        handle = {"seed": response.headers.get("seed")}
        return Submitted(request_id, handle, state=self._finished(response))

    def _finished(self, response: httpx.Response) -> Polled:
        finish = response.headers.get("finish-reason", "SUCCESS")
        if finish == "CONTENT_FILTERED":
            error = MediaProviderError("refused", "stability: the image was content filtered")
            return Polled("failed", error=error)
        if finish != "SUCCESS":
            return Polled("failed", error=MediaProviderError("failed", f"stability: {finish}"))
        content_type = response.headers.get("content-type", "image/png").split(";")[0]
        return Polled("succeeded", 1.0, (wire.inline_output(content_type, response.content),))

    def _error(self, response: httpx.Response) -> MediaProviderError:
        body = wire.body_of(response)
        name, errors = "", ""
        if isinstance(body, dict):
            name = str(body.get("name", ""))
            errors = "; ".join(str(e) for e in body.get("errors", []) or [])
        if response.status_code == 403 and name == "content_moderation":
            return wire.http_error(self.name, response, errors or name, "refused")
        return wire.http_error(self.name, response, f"{name}: {errors}" if name else errors)

    async def poll(self, submitted: Submitted) -> Polled:
        if submitted.state is not None:
            return submitted.state
        # The answer was the result: after a crash before it was stored, nothing keeps it.
        raise MediaProviderError("failed", "stability: a synchronous result that was not kept")

    async def cancel(self, submitted: Submitted) -> bool:
        return False

    async def lookup(self, request: MediaRequest) -> Submitted | None:
        return None

    def download(self, output: Output) -> AsyncIterator[bytes]:
        return wire.download_output(self._http, self.name, output)
