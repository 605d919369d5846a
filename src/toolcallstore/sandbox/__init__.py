"""Loopback fakes of the LLM providers (DESIGN §8): the real wire protocols of OpenAI chat
completions, Anthropic Messages and Gemini generateContent, with deterministic replies
(`replies.py`) and fault injection (`faults.py`) under `/fault/{spec}/...`.

Paths, relative to where the app is mounted:

    POST [/fault/{spec}]/openai/v1/chat/completions
    POST [/fault/{spec}]/anthropic/v1/messages
    POST [/fault/{spec}]/gemini/v1beta/models/{model}:generateContent
    POST [/fault/{spec}]/gemini/v1beta/models/{model}:streamGenerateContent[?alt=sse]
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from toolcallstore.sandbox.anthropic import AnthropicDialect
from toolcallstore.sandbox.endpoint import Dialect, Endpoint, SandboxState
from toolcallstore.sandbox.gemini import GeminiDialect
from toolcallstore.sandbox.openai import OpenAIDialect

__all__ = ["create_sandbox_app"]


def create_sandbox_app() -> Starlette:
    state = SandboxState()
    paths: list[tuple[str, Dialect]] = [
        ("/openai/v1/chat/completions", OpenAIDialect()),
        ("/anthropic/v1/messages", AnthropicDialect()),
        ("/gemini/v1beta/models/{model}:generateContent", GeminiDialect()),
        ("/gemini/v1beta/models/{model}:streamGenerateContent", GeminiDialect()),
    ]
    routes = []
    for prefix in ("", "/fault/{spec}"):
        for path, dialect in paths:
            handle = Endpoint(dialect, state).handle
            routes.append(Route(prefix + path, handle, methods=["POST"]))
    return Starlette(routes=routes)
