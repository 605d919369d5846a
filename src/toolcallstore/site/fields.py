"""JSON Schema of `validation.Field` declarations: what openapi.json and the MCP tools show is
what `validate` enforces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolcallstore.validation import Field


def field_schema(spec: Field) -> dict[str, Any]:
    if spec.kind is str:
        schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": spec.max_length}
        if spec.choices is not None:
            schema = {"type": "string", "enum": sorted(spec.choices)}
        return schema
    if spec.kind is list:
        item = field_schema(Field(str, max_length=spec.max_length, choices=spec.choices))
        return {"type": "array", "items": item, "maxItems": spec.max_items}
    simple = {int: "integer", float: "number", bool: "boolean", dict: "object"}
    if spec.kind in simple:
        return {"type": simple[spec.kind]}
    return {"description": 'A decimal string such as "5.00" (a number is accepted).'}


def body_schema(fields: Mapping[str, Field]) -> dict[str, Any]:
    required = sorted(name for name, spec in fields.items() if spec.required)
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: field_schema(spec) for name, spec in fields.items()},
    }
    if required:
        schema["required"] = required
    return schema
