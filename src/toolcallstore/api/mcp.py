"""`/mcp`: the MCP endpoint (streamable HTTP). The protocol is MCP's, described by
/docs/mcp.html and /.well-known/mcp.json rather than openapi.json; mcp_endpoint/ holds it."""

from __future__ import annotations

from starlette.routing import Route

from toolcallstore.mcp_endpoint.server import McpRoute
from toolcallstore.site.operations import Operation

MCP_METHODS = ["GET", "POST", "DELETE"]
routes = [Route("/mcp", McpRoute(), methods=MCP_METHODS)]
operations = [
    Operation(method, "/mcp", "MCP (streamable HTTP)", "mcp", None, external="/docs/mcp.html")
    for method in MCP_METHODS
]
