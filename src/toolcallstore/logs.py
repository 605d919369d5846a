"""One JSON object per log line; tracebacks stay in the log, never in a response."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import orjson


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("toolcallstore")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class AccessLog:
    """Writes one JSON line per request, a batch per write, straight to a text stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        stream = self._stream or sys.stderr
        lines = [
            orjson.dumps(
                {
                    "ts": _iso(row["ts"] / 1_000_000),
                    "level": "info",
                    "logger": "toolcallstore.access",
                    "request_id": row["request_id"],
                    "tenant": row["tenant_id"],
                    "key_id": row["api_key_id"],
                    "method": row["method"],
                    "route": row["route"],
                    "status": row["status"],
                    "latency_ms": row["latency_us"] / 1000,
                    "cost_micros": row["cost_micros"],
                }
            )
            for row in rows
        ]
        stream.write(b"\n".join(lines).decode() + "\n")
        stream.flush()


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
