"""Strict request parsing: JSON objects only, unknown fields refused, every type checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from toolcallstore.errors import InvalidRequest


@dataclass(frozen=True)
class Field:
    kind: type
    required: bool = False
    max_length: int = 200
    choices: frozenset[str] | None = None
    # For list fields: the allowed items (strings) and the most items allowed.
    max_items: int = 50


def invalid(param: str, message: str, code: str = "invalid_parameter") -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = f"The request body is not valid JSON: {exc}"
        raise InvalidRequest(message, code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    _refuse_duplicate_keys(raw)
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise _DuplicateKey(name)
        seen[name] = value
    return seen


def _refuse_duplicate_keys(raw: bytes) -> None:
    """orjson keeps the last of a repeated key; strict parsing refuses the body instead (a
    second, stdlib pass over a body orjson has already found well-formed)."""
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        message = f"The request body repeats the key '{exc.args[0]}' in one object."
        raise InvalidRequest(message, code="invalid_json") from None
    except (ValueError, RecursionError):
        # orjson took it (stdlib limits differ: digits of huge integers, nesting depth).
        return


def validate(data: Mapping[str, Any], fields: Mapping[str, Field]) -> dict[str, Any]:
    """Check `data` against `fields`; returns only the fields that were given."""
    for name in data:
        if name not in fields:
            raise invalid(name, f"Unknown parameter '{name}'.", "unknown_parameter")
    clean: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in data or data[name] is None:
            if spec.required:
                raise invalid(name, f"Missing required parameter '{name}'.", "missing_parameter")
            continue
        clean[name] = _check(name, data[name], spec)
    return clean


def _check(name: str, value: Any, spec: Field) -> Any:
    if spec.kind is list:
        if not isinstance(value, list) or len(value) > spec.max_items:
            raise invalid(name, f"'{name}' must be a list of at most {spec.max_items} strings.")
        return [_check_str(f"{name}[{i}]", item, spec) for i, item in enumerate(value)]
    if spec.kind is str:
        return _check_str(name, value, spec)
    if spec.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise invalid(name, f"'{name}' must be an integer.")
    if spec.kind is bool and not isinstance(value, bool):
        raise invalid(name, f"'{name}' must be true or false.")
    if spec.kind is dict and not isinstance(value, dict):
        raise invalid(name, f"'{name}' must be a JSON object.")
    return value


def _check_str(name: str, value: Any, spec: Field) -> str:
    if not isinstance(value, str):
        raise invalid(name, f"'{name}' must be a string.")
    if not value.strip() or len(value) > spec.max_length:
        raise invalid(name, f"'{name}' must be 1-{spec.max_length} characters.")
    if "\x00" in value:
        raise invalid(name, f"'{name}' must not contain NUL characters.")
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(sorted(spec.choices))
        raise invalid(name, f"'{name}' must be one of: {allowed}; got '{value[:50]}'.")
    return value


@dataclass(frozen=True)
class PageParams:
    limit: int
    starting_after: str | None


def page_params(request: Request, extra: tuple[str, ...] = ()) -> PageParams:
    """`?limit=1..100` (default 10) and `?starting_after=<id>`; query names other than these
    and `extra` are refused."""
    query = request.query_params
    for name in query:
        if name not in ("limit", "starting_after", *extra):
            raise invalid(name, f"Unknown query parameter '{name}'.", "unknown_parameter")
    raw_limit = query.get("limit", "10")
    # isascii: str.isdigit() also takes digits such as '²', which int() refuses.
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 100:
        raise invalid("limit", "'limit' must be an integer from 1 to 100.")
    cursor = query.get("starting_after")
    if cursor is not None:
        _check_str("starting_after", cursor, Field(str, max_length=100))
    return PageParams(int(raw_limit), cursor)


def wait_seconds(request: Request, most: float) -> float:
    """A long-poll's `?wait=` (seconds, 0 to `most`; 0 when absent), the only query parameter."""
    for name in request.query_params:
        if name != "wait":
            raise invalid(name, f"Unknown query parameter '{name}'.", "unknown_parameter")
    raw = request.query_params.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= most:
        raise invalid("wait", f"'wait' must be a number of seconds from 0 to {most:g}.")
    return wait
