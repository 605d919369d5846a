"""Loopback fakes of the LLM providers (DESIGN §8): the real wire protocols of OpenAI chat
completions, Anthropic Messages and Gemini generateContent, with deterministic replies
(`replies.py`) and fault injection (`faults.py`) under `/fault/{spec}/...`.

Paths, relative to where the app is mounted:

    POST [/fault/{spec}]/openai/v1/chat/completions
    POST [/fault/{spec}]/anthropic/v1/messages
    POST [/fault/{spec}]/gemini/v1beta/models/{model}:generateContent
    POST [/fault/{spec}]/gemini/v1beta/models/{model}:streamGenerateContent[?alt=sse]
    GET  [/fault/{spec}]/openrouter/api/v1/models   (a stored price list, `openrouter.py`)
    /stripe/v1/...                                  (Stripe billing, `stripe.py`)
    /stalwart/.well-known/jmap, /stalwart/jmap/...  (Stalwart mail, `stalwart.py`)
    /openprovider/v1beta/...  /porkbun/api/json/v3/...  (registrars and DNS, `domains.py`;
                              their zones answer on a loopback DNS server, `dns_server.py`)

`app.state.domains` is the registrars' shared world; whoever serves the sandbox starts its DNS
server (`app.state.domains.dns.start(host, port)`): the API's lifespan does for its mount.

Media fakes (`media_faults.py` has their fault grammar, `media_bytes.py` their outputs), each
also under `/fault/{spec}`, each with `GET .../_submissions` (accepted generations):

    [/fault/{spec}]/fal/..., [/fault/{spec}]/replicate/v1/...   (`fal.py`, `replicate.py`)
    POST [/fault/{spec}]/stability/v2beta/stable-image/generate/{ultra|core|sd3}
    POST [/fault/{spec}]/leonardo/api/rest/v1/generations, GET .../generations/{id}
    POST [/fault/{spec}]/runware/v1                  (task arrays)
    POST [/fault/{spec}]/gemini-image/v1beta/models/{model}:generateContent
"""

from __future__ import annotations

from typing import Protocol

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from toolcallstore.sandbox.anthropic import AnthropicDialect
from toolcallstore.sandbox.domains import DomainSandbox
from toolcallstore.sandbox.endpoint import Dialect, Endpoint, SandboxState
from toolcallstore.sandbox.fal import FalFake
from toolcallstore.sandbox.gemini import GeminiDialect
from toolcallstore.sandbox.gemini_image import GeminiImageFake
from toolcallstore.sandbox.leonardo import LeonardoFake
from toolcallstore.sandbox.openai import OpenAIDialect
from toolcallstore.sandbox.openrouter import OpenRouterModels
from toolcallstore.sandbox.replicate import ReplicateFake
from toolcallstore.sandbox.runware import RunwareFake
from toolcallstore.sandbox.stability import StabilityFake
from toolcallstore.sandbox.stalwart import create_stalwart_app
from toolcallstore.sandbox.stripe import create_stripe_app

__all__ = ["create_sandbox_app"]


class MediaFake(Protocol):
    def routes(self) -> list[BaseRoute]: ...


def create_sandbox_app() -> Starlette:
    state = SandboxState()
    paths: list[tuple[str, Dialect]] = [
        ("/openai/v1/chat/completions", OpenAIDialect()),
        ("/anthropic/v1/messages", AnthropicDialect()),
        ("/gemini/v1beta/models/{model}:generateContent", GeminiDialect()),
        ("/gemini/v1beta/models/{model}:streamGenerateContent", GeminiDialect()),
    ]
    price_list = OpenRouterModels(state)
    media_fakes: dict[str, MediaFake] = {
        "stability": StabilityFake(),
        "leonardo": LeonardoFake(),
        "runware": RunwareFake(),
        "gemini-image": GeminiImageFake(),
    }
    domains = DomainSandbox()
    routes: list[Route | Mount] = [
        Mount("/stripe", app=create_stripe_app()),
        Mount("/openprovider/v1beta", app=domains.openprovider.app()),
        Mount("/porkbun/api/json/v3", app=domains.porkbun.app()),
        Mount("/stalwart", app=create_stalwart_app()),
    ]
    routes += FalFake().routes() + ReplicateFake().routes()  # media fakes (issue 14)
    for prefix in ("", "/fault/{spec}"):
        for path, dialect in paths:
            handle = Endpoint(dialect, state).handle
            routes.append(Route(prefix + path, handle, methods=["POST"]))
        routes.append(
            Route(prefix + "/openrouter/api/v1/models", price_list.handle, methods=["GET"])
        )
        for name, fake in media_fakes.items():
            routes.append(Mount(f"{prefix}/{name}", routes=fake.routes()))
    app = Starlette(routes=routes)
    app.state.domains = domains
    return app
