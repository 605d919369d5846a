"""ToolCall Store: quoted, capped, approved, idempotent, audited tool calls for AI agents."""

__version__ = "0.1.0"
