"""Normalised events -> the OpenAI chat completion shapes our clients read, whatever protocol
the answering target spoke: `chat.completion.chunk` SSE frames for streams, one
`chat.completion` object otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from toolcallstore.lanes.base import Event, Finish, TextDelta, ToolCallDelta

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class Assembly:
    """The answer so far: text, tool calls by index, finish reason."""

    completion_id: str
    created: int
    model: str = ""
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish: str | None = None
    _role_sent: bool = False

    def add(self, event: Event) -> dict[str, Any] | None:
        """Fold `event` into the answer; returns the chunk's `choices[0]` it streams as, if any."""
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            if event.refusal:
                self.refusal.append(event.text)
                return self._choice({"refusal": event.text})
            self.text.append(event.text)
            return self._choice({"content": event.text})
        if isinstance(event, ToolCallDelta):
            return self._choice({"tool_calls": [self._tool_delta(event)]})
        if isinstance(event, Finish):
            self.finish = event.reason
            return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": event.reason}
        return None

    def _choice(self, delta: dict[str, Any]) -> dict[str, Any]:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}

    def _tool_delta(self, event: ToolCallDelta) -> dict[str, Any]:
        call = self.tool_calls.get(event.index)
        if call is None:
            call = {
                "id": event.id or f"call_{self.completion_id}_{event.index}",
                "type": "function",
                "function": {"name": event.name or "", "arguments": ""},
            }
            self.tool_calls[event.index] = call
            call["function"]["arguments"] += event.arguments
            return {"index": event.index, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"],
                                 "arguments": event.arguments}}  # fmt: skip
        if event.name:
            call["function"]["name"] += event.name
        call["function"]["arguments"] += event.arguments
        return {"index": event.index, "function": {"arguments": event.arguments}}

    def chunk(self, choice: dict[str, Any]) -> bytes:
        return sse({"id": self.completion_id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [choice]})  # fmt: skip

    def final_chunk(self, usage: dict[str, Any], toolcall: dict[str, Any]) -> bytes:
        return sse({"id": self.completion_id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": usage, "toolcall": toolcall})  # fmt: skip

    def error_chunk(
        self, error: dict[str, Any], usage: dict[str, Any], toolcall: dict[str, Any]
    ) -> bytes:
        """The in-band end of a stream that failed after its first token (never a clean
        finish: `finish_reason` is "error" and no [DONE] follows)."""
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "error"}
        return sse({"id": self.completion_id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [choice],
                    "error": error, "usage": usage, "toolcall": toolcall})  # fmt: skip

    def completion(self, usage: dict[str, Any], toolcall: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.text) if self.text or not (self.tool_calls or self.refusal)
            else None,
            "refusal": "".join(self.refusal) or None,
        }  # fmt: skip
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish or "stop",
                }
            ],  # fmt: skip
            "usage": usage,
            "toolcall": toolcall,
        }


def replay_chunks(completion: dict[str, Any]) -> list[bytes]:
    """A stored completion streamed again (an idempotent replay of a streamed call)."""
    base = {k: completion[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    choice = completion["choices"][0]
    message = choice["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("refusal"):
        delta["refusal"] = message["refusal"]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    first = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    if completion.get("error"):  # it ended in-band after its first token, and replays so
        cut = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "error"}
        return [
            sse({**base, "choices": [first]}),
            sse({**base, "choices": [cut], "error": completion["error"],
                 "usage": completion["usage"], "toolcall": completion["toolcall"]}),
        ]  # fmt: skip
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
    return [
        sse({**base, "choices": [first]}),
        sse({**base, "choices": [finish]}),
        sse(
            {
                **base,
                "choices": [],
                "usage": completion["usage"],
                "toolcall": completion["toolcall"],
            }
        ),  # fmt: skip
        DONE,
    ]
