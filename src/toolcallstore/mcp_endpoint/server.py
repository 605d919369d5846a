"""The MCP server at /mcp (streamable HTTP, the official `mcp` SDK, stateless JSON answers):
the catalog's tools with annotations, for the calling key's scopes, and a job-status tool.

It sits behind the app's own middleware, so the bearer key was resolved (401 without one),
the request is audited and its body size limited before the SDK sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import mcp_types as types
import orjson
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from toolcallstore.auth import Principal, bearer_secret
from toolcallstore.context import context_of
from toolcallstore.errors import PermissionDenied, Unauthenticated
from toolcallstore.mcp_endpoint.flow import (
    CONTROL_ARGS,
    JOB_TOOL,
    Caller,
    Result,
    call_tool,
    job_status,
)
from toolcallstore.responses import send_error
from toolcallstore.site.documents import tool_annotations
from toolcallstore.tools import Tool, ToolRegistry

INSTRUCTIONS = (
    "Priced tools under every money control. Calling a tool runs it when the key may be quoted"
    " inline (auto_quote_max_usd); otherwise the result is a quote and the steps to take (an"
    " approval for high-risk tools): call again with quote_id (and approval_id). Results carry"
    " receipt_id; job tools return job_id: poll with the toolcallstore.job tool."
)
CONTROL_SCHEMA = {
    "quote_id": {"type": "string", "description": "Run this quote (q_...) instead of quoting."},
    "approval_id": {"type": "string", "description": "The granted approval of the quote."},
    "idempotency_key": {"type": "string", "maxLength": 255,
                        "description": "Retry with the same key: it never runs twice."},
}  # fmt: skip
JOB_SCHEMA = {
    "type": "object",
    "required": ["job_id"],
    "properties": {"job_id": {"type": "string"},
                   "wait": {"type": "number", "minimum": 0, "maximum": 60,
                            "description": "Seconds to wait for a change (long-poll)."}},
}  # fmt: skip


def input_schema(tool: Tool) -> dict[str, Any]:
    """The tool's params with the flow's controls beside them; nothing is required, since a
    quote_id carries its params (the API says what is missing otherwise)."""
    params = tool.params_schema or {"type": "object"}
    properties = {**params.get("properties", {}), **CONTROL_SCHEMA}
    clash = set(params.get("properties", {})) & set(CONTROL_ARGS)
    assert not clash, f"{tool.name} has params named like the MCP controls: {clash}"
    return {"type": "object", "properties": properties}


def mcp_tool(tool: Tool) -> types.Tool:
    hints = tool_annotations(tool)
    price = "billable" if tool.billable else "free"
    return types.Tool(
        name=tool.name,
        description=f"{tool.description} (scope {tool.scope}, {tool.risk} risk, {price},"
        f" runs {'as a job' if tool.mode == 'job' else 'inline'})",
        input_schema=input_schema(tool),
        annotations=types.ToolAnnotations(
            title=hints["title"],
            read_only_hint=hints["readOnlyHint"],
            destructive_hint=hints["destructiveHint"],
            idempotent_hint=hints["idempotentHint"],
            open_world_hint=hints["openWorldHint"],
        ),
    )


JOB_MCP_TOOL = types.Tool(
    name=JOB_TOOL,
    description="A job's state (long-polls with wait), and its execution and receipt once done.",
    input_schema=JOB_SCHEMA,
    annotations=types.ToolAnnotations(title="job status", read_only_hint=True,
                                      idempotent_hint=True, open_world_hint=False),
)  # fmt: skip


def _caller(request: Request | None) -> tuple[Caller, Principal]:
    assert request is not None, "the streamable HTTP transport attaches the HTTP request"
    principal = context_of(request).principal
    secret = bearer_secret(request.scope)
    assert principal is not None and secret, "AuthMiddleware let no keyless request through"
    ip = context_of(request).ip or "127.0.0.1"
    return Caller(request.scope["app"], secret, ip), principal


def result_of(result: Result) -> types.CallToolResult:
    text = orjson.dumps(result.data, option=orjson.OPT_INDENT_2).decode()
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
    return types.CallToolResult(
        content=content, structured_content=result.data, is_error=result.is_error
    )


class McpEndpoint:
    """One per app: the SDK server, its session manager (run by the app's lifespan), and the
    ASGI entry the /mcp route calls."""

    def __init__(self, tools: ToolRegistry, name: str, origins: frozenset[str]) -> None:
        self.tools = tools
        self.origins = origins
        self.server: Server[Any] = Server(name, version="1", instructions=INSTRUCTIONS,
                                          on_list_tools=self._list_tools,
                                          on_call_tool=self._call_tool)  # fmt: skip
        self.sessions = StreamableHTTPSessionManager(self.server, stateless=True,
                                                     json_response=True)  # fmt: skip

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The session manager's task group, in a task of its own: a lifespan may be entered
        and left in different tasks (as test fixtures do), a task group may not."""
        started, stop = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with self.sessions.run():
                started.set()
                await stop.wait()

        task = asyncio.create_task(hold(), name="mcp-sessions")
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiting.cancel()
            task.result()  # raises what stopped it
        try:
            yield
        finally:
            stop.set()
            await task

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope)
        if ctx.principal is None:  # /mcp is not public; kept in case it ever is
            await send_error(send, Unauthenticated("The MCP endpoint needs an API key."),
                             ctx.request_id)  # fmt: skip
            return
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and not self._origin_allowed(origin):
            ctx.deny("mcp_origin_refused")
            error = PermissionDenied(f"Origin {origin[:100]} may not call this MCP endpoint.",
                                     code="origin_forbidden")  # fmt: skip
            await send_error(send, error, ctx.request_id)
            return
        await self.sessions.handle_request(scope, receive, send)

    def _origin_allowed(self, origin: str) -> bool:
        host = urlsplit(origin).hostname or ""
        return origin in self.origins or host in ("127.0.0.1", "localhost", "::1")

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        _, principal = _caller(ctx.request)
        usable = [mcp_tool(t) for t in self.tools.all() if principal.has(t.scope)]
        if principal.has("jobs:read"):
            usable.append(JOB_MCP_TOOL)
        return types.ListToolsResult(tools=usable)

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller, _ = _caller(ctx.request)
        arguments = dict(params.arguments or {})
        if params.name == JOB_TOOL:
            return result_of(await job_status(caller, arguments))
        if self.tools.get(params.name) is None:
            message = f"No such tool '{params.name[:100]}'."
            return result_of(Result({"status": "refused", "error": message}, is_error=True))
        return result_of(await call_tool(caller, params.name, arguments))


class McpRoute:
    """The /mcp route's ASGI app: hands the request to its app's endpoint."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint: McpEndpoint = scope["app"].state.mcp
        await endpoint.handle(scope, receive, send)
