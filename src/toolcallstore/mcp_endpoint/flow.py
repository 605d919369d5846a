"""An MCP tool call is a POST /v1/executions: the same route, run in-process with the caller's
key, so quotes, approvals, caps, holds, idempotency, audit and receipts are the API's own.

Without `quote_id` the call is quoted inline (under the key's `auto_quote_max_usd`); when that
is refused as `quote_required`, the tool result is a stored quote and what to do next, and
nothing runs. With `quote_id` (and `approval_id` once granted) it executes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import ASGIApp

CONTROL_ARGS = ("quote_id", "approval_id", "idempotency_key")
JOB_TOOL = "toolcallstore.job"


@dataclass(frozen=True)
class Caller:
    """Who called the MCP endpoint: the app to call into, the key, the client's address."""

    app: ASGIApp
    secret: str
    ip: str

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(self.ip, 0))
        headers = {"Authorization": f"Bearer {self.secret}"}
        return httpx.AsyncClient(transport=transport, base_url="http://mcp.internal",
                                 headers=headers, timeout=None)  # fmt: skip


@dataclass(frozen=True)
class Result:
    """A tool result: `data` as structured content, an error when the API refused."""

    data: dict[str, Any]
    is_error: bool = False


def split_arguments(arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    controls = {k: arguments[k] for k in CONTROL_ARGS if arguments.get(k) is not None}
    params = {k: v for k, v in arguments.items() if k not in CONTROL_ARGS}
    return controls, params


async def call_tool(caller: Caller, tool: str, arguments: dict[str, Any]) -> Result:
    controls, params = split_arguments(arguments)
    key = str(controls.get("idempotency_key") or f"mcp-{uuid.uuid4()}")
    async with caller.client() as client:
        if "quote_id" in controls:
            body: dict[str, Any] = {"quote_id": controls["quote_id"]}
            if "approval_id" in controls:
                body["approval_id"] = controls["approval_id"]
            if params:
                body["params"] = params  # checked against the quote: 422 quote_mismatch
        else:
            body = {"tool": tool, "params": params}
        run = await client.post("/v1/executions", json=body, headers={"Idempotency-Key": key})
        if run.status_code == 403 and _code(run) == "quote_required":
            return await _quote_instead(client, tool, params, key)
        return _execution_result(run, key)


def _code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(code)


async def _quote_instead(
    client: httpx.AsyncClient, tool: str, params: dict[str, Any], key: str
) -> Result:
    quote = await client.post(
        "/v1/quotes", json={"tool": tool, "params": params}, headers={"Idempotency-Key": key}
    )
    if quote.status_code != 200:
        return Result({"status": "refused", "http_status": quote.status_code, **quote.json()},
                      is_error=True)  # fmt: skip
    body = quote.json()
    steps = [f"Nothing ran. To run it, call {tool} again with quote_id='{body['id']}'"]
    if body["requires_approval"]:
        steps = [
            f'Ask for an approval: POST /v1/approvals {{"quote_id": "{body["id"]}"}}'
            " (scope quotes:create).",
            "A human with approvals:grant (not the requester) grants it:"
            " POST /v1/approvals/{approval_id}/grant.",
            f"Then call {tool} again with quote_id='{body['id']}' and approval_id.",
        ]
    else:
        steps[0] += " (before it expires)."
    data = {"status": "quote_required", "quote": body,
            "approval_required": body["requires_approval"], "next_steps": steps}  # fmt: skip
    return Result(data)


def _execution_result(run: httpx.Response, key: str) -> Result:
    body = run.json()
    if run.status_code == 200:
        return Result({"status": "succeeded", "receipt_id": body["receipt_id"],
                       "result": body["result"], "execution": body,
                       "idempotency_key": key})  # fmt: skip
    if run.status_code == 202:
        job_id = body["job_id"]
        return Result({"status": "running", "job_id": job_id, "execution": body,
                       "idempotency_key": key,
                       "poll": {"mcp_tool": JOB_TOOL, "arguments": {"job_id": job_id, "wait": 30},
                                "http": f"GET /v1/jobs/{job_id}?wait=30",
                                "events": f"GET /v1/jobs/{job_id}/events",
                                "execution": f"GET /v1/executions/{body['id']}"}})  # fmt: skip
    return Result({"status": "refused" if run.status_code < 500 else "failed",
                   "http_status": run.status_code, "idempotency_key": key, **body},
                  is_error=True)  # fmt: skip


async def job_status(caller: Caller, arguments: dict[str, Any]) -> Result:
    """GET /v1/jobs/{id}?wait=..., and the execution with its receipt once the job is done."""
    job_id = str(arguments.get("job_id", ""))
    wait = arguments.get("wait", 0)
    async with caller.client() as client:
        job = await client.get(f"/v1/jobs/{job_id}", params={"wait": wait})
        if job.status_code != 200:
            return Result({"http_status": job.status_code, **job.json()}, is_error=True)
        data: dict[str, Any] = {"job": job.json()}
        execution_id = (job.json().get("result") or {}).get("execution_id")
        if execution_id:
            execution = await client.get(f"/v1/executions/{execution_id}")
            if execution.status_code == 200:
                data["execution"] = execution.json()
                data["receipt_id"] = execution.json()["receipt_id"]
        return Result(data)
