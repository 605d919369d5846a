"""Billable tools: what each declares (`registry.py`) and the sandbox tools that exercise the
whole quote -> approve -> execute -> receipt flow without a provider (`sandbox.py`)."""

from toolcallstore.controls.pricing import Estimate
from toolcallstore.tools.registry import Outcome, Tool, ToolCall, ToolRegistry

__all__ = ["Estimate", "Outcome", "Tool", "ToolCall", "ToolRegistry"]
