"""LLM protocol translators, by `Target.protocol`."""

from __future__ import annotations

from toolcallstore.lanes.anthropic import Anthropic
from toolcallstore.lanes.base import Translator
from toolcallstore.lanes.gemini import Gemini
from toolcallstore.lanes.openai_compat import OpenAICompat

# Translators hold no state (each response gets a fresh parser), so one of each serves all.
TRANSLATORS: dict[str, Translator] = {
    "openai": OpenAICompat(),
    "anthropic": Anthropic(),
    "gemini": Gemini(),
}
