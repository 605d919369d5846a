"""Which adapter speaks each `protocol` of `media_providers` in models.json.

Every adapter is built the same way: `Adapter(http, base_url, api_key, timeout_s=...)`.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from toolcallstore.media.base import MediaProvider
from toolcallstore.media.fal import FalProvider
from toolcallstore.media.gemini_image import GeminiImageProvider
from toolcallstore.media.leonardo import LeonardoProvider
from toolcallstore.media.replicate import ReplicateProvider
from toolcallstore.media.runware import RunwareProvider
from toolcallstore.media.stability import StabilityProvider

SANDBOX_KEY = "sandbox-test-key"  # what test mode sends to the sandbox fakes


class AdapterFactory(Protocol):
    def __call__(self, http: httpx.AsyncClient, base_url: str, api_key: str, *,
                 timeout_s: float = ...) -> MediaProvider: ...  # fmt: skip


ADAPTERS: dict[str, AdapterFactory] = {
    "fal": FalProvider,
    "replicate": ReplicateProvider,
    "stability": StabilityProvider,
    "leonardo": LeonardoProvider,
    "runware": RunwareProvider,
    "gemini-image": GeminiImageProvider,
}
