"""The production app plus one route that runs a sync tool with the money controls left out.

    python bench/uncontrolled_app.py [--host 127.0.0.1] [--port 8080] [--sql-timing]

Serves exactly like `toolcallstore serve` (migrate, bootstrap the admin key, uvicorn with
uvloop and httptools, no uvicorn access log) with one extra route, `POST /bench/echo`, that
takes the body of an inline `POST /v1/executions` (`{"tool", "params"}`), checks the tool's
scope and params, prices the call and runs the tool, and answers with the result. It passes
the same middleware as every route (request id, body limit, key lookup, audit row, access log,
metrics), so against `POST /v1/executions` on the same process the difference is the controls
alone: idempotency claim, stored quote, spend-cap hold, settlement, receipt, ledger, events and
the two audit rows written inside the billable transactions. Nothing is stored, so it exists
only here, never in the product.

`--sql-timing` adds `POST /bench/sql` (start timing from zero) and `GET /bench/sql` (what was
timed): the time each SQLite statement of the write batches (`run_sync`) took, by statement
text, as called from Python (binding, stepping, and for RETURNING the rows), and each batch's
whole time ("[batch of open_call]": a batch of that one body; "[batch of several bodies]").
The benches use it to say how much of a controlled call is its SQL alone, in runs apart from
the measured rounds, since timing every statement costs a little.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.app import create_app
from toolcallstore.auth import require_scope
from toolcallstore.controls.calls import find_tool, parse_tool_params
from toolcallstore.controls.executions import run_tool
from toolcallstore.db import database, loop_writer, sync
from toolcallstore.errors import APIError
from toolcallstore.ids import new_id
from toolcallstore.money import micros_to_usd
from toolcallstore.responses import JSONResponse
from toolcallstore.server import serve
from toolcallstore.services import services
from toolcallstore.settings import Settings
from toolcallstore.tools import ToolCall
from toolcallstore.validation import Field, invalid, read_json_object, validate

PATH = "/bench/echo"
BODY_FIELDS = {
    "tool": Field(str, required=True, max_length=100),
    "params": Field(dict, required=True),
}


async def run_uncontrolled(request: Request) -> Response:
    """What `POST /v1/executions` does for an inline call, minus every money control."""
    body = await read_json_object(request)
    fields = validate(body, BODY_FIELDS)
    tool = find_tool(request, fields["tool"])
    principal = require_scope(request, tool.scope)  # authorisation is not a money control
    if tool.mode != "sync":
        raise invalid("tool", "Only sync tools run here; job tools need the queue.")
    params = parse_tool_params(tool, fields["params"])
    estimate = tool.price(params, services(request).tools.pricing)
    call = ToolCall(new_id("exe"), principal.tenant_id, principal.key.project_id,
                    principal.livemode, params, estimate)  # fmt: skip
    # run_tool is the controlled flow's own runner (timeout, errors as APIError), so the tool
    # runs the same way on both sides.
    outcome = await run_tool(tool, call)
    if isinstance(outcome, APIError):
        raise outcome
    answer: dict[str, Any] = {
        "id": call.execution_id,
        "object": "execution",
        "tool": tool.name,
        "status": "succeeded",
        "amount_usd": micros_to_usd(outcome.price_micros),
        "result": outcome.result,
        "livemode": principal.livemode,
    }
    return JSONResponse(answer)


class SqlTiming:
    """Seconds spent in each statement of the SQLite write batches, by statement text."""

    def __init__(self) -> None:
        self.on = False
        self.spent: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def install(self) -> None:
        plain_batch, plain_begin = sync.sqlite_batch, loop_writer.LoopWriter._begin

        def timed_batch(conn: sqlite3.Connection, work: sync.Work, *, begun: bool = False) -> Any:
            if not self.on:
                return plain_batch(conn, work, begun=begun)
            started = time.perf_counter()
            outcomes = plain_batch(_Timed(conn, self), work, begun=begun)
            # A batch of one body is one transaction of one caller (always so at 1 connection):
            # its whole cost, Python included, by the body's name.
            bodies = _name(work[0][0]) if len(work) == 1 else "several bodies"
            self.add(f"[batch of {bodies}]", started)
            return outcomes

        def timed_begin(writer: loop_writer.LoopWriter) -> bool:
            started = time.perf_counter()
            begun = plain_begin(writer)
            self.add("BEGIN IMMEDIATE", started)
            return begun

        # Each module that runs batches imported sqlite_batch by name.
        for module in (sync, loop_writer, database):
            setattr(module, "sqlite_batch", timed_batch)  # noqa: B010
        setattr(loop_writer.LoopWriter, "_begin", timed_begin)  # noqa: B010

    def add(self, sql: str, started: float) -> None:
        if self.on:
            took = time.perf_counter() - started
            entry = self.spent[sql]
            entry[0] += 1
            entry[1] += took

    async def start(self, request: Request) -> Response:
        self.spent.clear()
        self.on = True
        return JSONResponse({"timing": True})

    async def report(self, request: Request) -> Response:
        report: dict[str, dict[str, float]] = {}
        for sql, (count, seconds) in self.spent.items():
            entry = report.setdefault(" ".join(sql.split()), {"count": 0, "seconds": 0.0})
            entry["count"] += count
            entry["seconds"] += seconds
        return JSONResponse(report)


def _name(body: Any) -> str:
    return str(getattr(getattr(body, "func", body), "__name__", "a body"))  # partial or function


class _Timed:
    """The connection a batch runs on, timing each statement."""

    def __init__(self, conn: sqlite3.Connection, timing: SqlTiming) -> None:
        self._conn, self._timing = conn, timing

    def execute(self, sql: str, values: Any = ()) -> sqlite3.Cursor:
        started = time.perf_counter()
        cursor = self._conn.execute(sql, values)
        self._timing.add(sql, started)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        started = time.perf_counter()
        cursor = self._conn.executemany(sql, rows)
        self._timing.add(sql, started)
        return cursor


def create_bench_app(settings: Settings, sql_timing: bool = False) -> Starlette:
    app = create_app(settings)
    # First in the router, as /v1/executions is: the same middleware stack, the same route
    # lookup cost.
    app.router.routes.insert(0, Route(PATH, run_uncontrolled, methods=["POST"]))
    if sql_timing:
        timing = SqlTiming()
        timing.install()
        app.router.routes.append(Route("/bench/sql", timing.start, methods=["POST"]))
        app.router.routes.append(Route("/bench/sql", timing.report, methods=["GET"]))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--sql-timing", action="store_true", help="time each write statement")
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.host:
        settings = settings.with_(host=args.host)
    if args.port:
        settings = settings.with_(port=args.port)
    serve(settings, create_bench_app(settings, args.sql_timing))


if __name__ == "__main__":
    main()
