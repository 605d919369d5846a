"""The deterministic replies all three LLM fakes give, and how they count tokens.

Token counting, relied on by tests and by the gateway's cost estimate:

- `count_tokens(text) = max(1, ceil(len(text.encode("utf-8")) / 4))`.
- Prompt tokens = sum over the messages, the system prompt counting as one message, of
  `count_tokens(message text) + 3`, plus `count_tokens(orjson.dumps(tools))` of the request's
  tool list as sent, when it is not empty. A message's text is its text parts, tool-call
  arguments and tool-result contents (compact JSON where the protocol sends objects), joined
  with nothing between.
- Completion tokens = the number of reply words (each word with its trailing space is one
  streamed chunk), or for a tool call `count_tokens(arguments JSON) + count_tokens(tool name)`.

The reply is "Sandbox reply from <model>: <words of the last user message> lorem ipsum ...",
exactly `min(words, max_tokens)` words. With tools offered and allowed and a user message last,
the reply is one call to the named (or first) tool instead, unless it would exceed max_tokens.
Its arguments fill every schema property: strings "sandbox", integers 1, numbers 1.5, booleans
true, arrays [], objects {}, enums their first value. After a tool result the reply starts
"Sandbox received the tool result:". A request ending with an assistant message (Anthropic's
prefill) is checked against the reply the fake would have given from the start: a prefix that
is that reply's beginning (whitespace aside) is continued with the words that follow it, so the
continuation echoes how much of the prefix arrived; any other prefix is not a beginning the fake
recognises, and it answers from the start, as a real model re-answers a prefix it cannot carry
on (the client would see the answer twice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from toolcallstore.sandbox.faults import Faults

FinishReason = Literal["stop", "length", "tool_calls"]
# "prefill": the request ends with a partial assistant message to continue (Anthropic).
LastKind = Literal["user", "tool_result", "prefill", "other"]

TOKENS_PER_MESSAGE = 3
FRAGMENT_CHARS = 8  # tool-call arguments are streamed in pieces of at most this many characters
FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_EXAMPLES: Mapping[str, Any] = {"integer": 1, "number": 1.5, "boolean": True}


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Tool:
    name: str
    schema: Mapping[str, Any]  # JSON schema of the arguments


@dataclass(frozen=True)
class Conversation:
    """A request reduced to what the reply depends on, whatever the protocol."""

    model: str
    message_texts: Sequence[str]  # one per message, the system prompt first when there is one
    last_kind: LastKind
    last_text: str  # the last user message's text, or the tool result's when that came last
    prefill: str = ""  # the partial assistant message to continue, when last_kind is "prefill"
    max_tokens: int | None = None
    tools: Sequence[Tool] = ()
    tools_json: str = ""  # the request's tool list serialised, for counting
    tools_enabled: bool = True
    forced_tool: str | None = None
    mode: Literal["json", "sse", "json_array"] = "json"
    stream_usage: bool = True  # OpenAI sends the usage chunk only when asked

    @property
    def prompt_tokens(self) -> int:
        total = sum(count_tokens(text) + TOKENS_PER_MESSAGE for text in self.message_texts)
        return total + (count_tokens(self.tools_json) if self.tools_json else 0)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON

    @property
    def fragments(self) -> list[str]:
        """At least 3 pieces when the arguments have 3 characters, at most 8 characters each."""
        size = max(1, min(FRAGMENT_CHARS, math.ceil(len(self.arguments) / 3)))
        return [self.arguments[i : i + size] for i in range(0, len(self.arguments), size)]

    @property
    def tokens(self) -> int:
        return count_tokens(self.arguments) + count_tokens(self.name)


@dataclass(frozen=True)
class Reply:
    chunks: Sequence[str]  # text chunks, one per word; empty for a tool call
    tool_call: ToolCall | None
    finish: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def chunk_count(self) -> int:
        return len(self.tool_call.fragments) if self.tool_call else len(self.chunks)


@dataclass(frozen=True)
class Turn:
    """One request being answered: what was asked, the reply, and the faults in force."""

    conversation: Conversation
    reply: Reply
    faults: Faults
    serial: int  # makes the response and tool-call ids unique within the process
    created: int  # unix seconds

    @property
    def model(self) -> str:
        return self.conversation.model


def example_value(schema: Any) -> Any:
    """A value that fits a property's JSON schema well enough for a sandbox."""
    if not isinstance(schema, Mapping):
        return "sandbox"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind).lower() if kind else "string"  # Gemini spells types in capitals
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return _EXAMPLES.get(kind, "sandbox")


def example_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    names = list(properties)
    if isinstance(required, list):
        names += [name for name in required if isinstance(name, str) and name not in properties]
    return {name: example_value(properties.get(name)) for name in names}


def choose_tool(conversation: Conversation) -> Tool | None:
    if not conversation.tools or not conversation.tools_enabled:
        return None
    if conversation.last_kind != "user":
        return None
    for tool in conversation.tools:
        if tool.name == conversation.forced_tool:
            return tool
    return conversation.tools[0]


def reply_words(conversation: Conversation, count: int) -> list[str]:
    if conversation.last_kind == "prefill":
        return _continuation(conversation, count)
    return _answer_words(conversation, count)


def _continuation(conversation: Conversation, count: int) -> list[str]:
    """What follows the prefill: the rest of the answer it begins, or, when it is not the
    beginning of this conversation's answer, the answer from its start."""
    answer = replace(conversation, last_kind="user", prefill="")
    received = conversation.prefill.split()
    if received and _answer_words(answer, len(received)) == received:
        return _answer_words(answer, len(received) + count)[len(received) :]
    return _answer_words(answer, count)


def _answer_words(conversation: Conversation, count: int) -> list[str]:
    if conversation.last_kind == "tool_result":
        words = ["Sandbox", "received", "the", "tool", "result:"]
    else:
        words = ["Sandbox", "reply", "from", f"{conversation.model}:"]
    words += conversation.last_text.split()[: max(0, count - len(words))]
    missing = max(0, count - len(words))
    words += [FILLER[i % len(FILLER)] for i in range(missing)]
    return words[:count]


def build_reply(conversation: Conversation, words: int) -> Reply:
    prompt_tokens = conversation.prompt_tokens
    limit = conversation.max_tokens
    tool = choose_tool(conversation)
    if tool is not None:
        call = ToolCall(tool.name, json_text(example_arguments(tool.schema)))
        # A call that does not fit max_tokens becomes text, so usage never exceeds max_tokens.
        if limit is None or call.tokens <= limit:
            return Reply((), call, "tool_calls", prompt_tokens, call.tokens)
    count = words if limit is None else min(words, limit)
    chosen = reply_words(conversation, count)
    chunks = [word + " " for word in chosen[:-1]] + chosen[-1:]
    finish: FinishReason = "length" if count < words else "stop"
    return Reply(chunks, None, finish, prompt_tokens, count)
