"""llms.txt (llmstxt.org: H1, > summary, prose, H2 link lists, ## Optional) and llms-full.txt
(the guide and every operation in one text), from the same sources as openapi.json."""

from __future__ import annotations

import json
from typing import Any

from toolcallstore.site.documents import SiteConfig

GUIDE = """\
## How an agent uses the store

1. Authenticate every call with `Authorization: Bearer <key>`. Keys are `tcs_live_...` (real
   providers, real money) or `tcs_test_...` (built-in sandbox providers, nothing real happens).
   A key holds scopes; a call needing a scope the key lacks is 403 `insufficient_scope`
   naming `required_scope`.
2. Find a tool in `GET /v1/tools` (or /catalog.json): its scope, risk, approval rule, price
   basis and params.
3. Quote it: `POST /v1/quotes {"tool", "params"}` with an `Idempotency-Key` header. The quote
   holds `price_usd`, `max_cost_usd` (the most it can cost), `expires_at` and
   `requires_approval` with `approval_reasons`.
4. If `requires_approval`: `POST /v1/approvals {"quote_id"}`; a human with `approvals:grant`
   (never the requester) grants it. Poll `GET /v1/approvals/{id}` until `granted`.
5. Pay and run: `POST /v1/executions {"quote_id", "approval_id"?}` with an `Idempotency-Key`.
   A key with `auto_quote_max_usd` may send `{"tool", "params"}` instead and be quoted inline
   for low-risk calls under that amount; otherwise 403 `quote_required`. The worst case is held
   against the monthly spend caps first (402 `spend_cap_exceeded` if it would break one).
6. A sync tool answers 200 with `result` and `receipt_id`. A job tool answers 202 with
   `job_id`: long-poll `GET /v1/jobs/{id}?wait=30`, stream `GET /v1/jobs/{id}/events` (SSE), or
   poll `GET /v1/executions/{id}`. `GET /v1/receipts/{id}` is what was charged.
7. Retry any POST with the same `Idempotency-Key`: the first answer is replayed with
   `Idempotent-Replayed: true` and nothing runs twice. Errors are
   `{"error": {"type", "code", "message", "request_id", "param"?}}`; branch on `code`.
8. LLM calls: `POST /v1/chat/completions` speaks OpenAI's protocol (point any OpenAI SDK at
   `/v1`); `max_cost_usd` caps the price; the last chunk carries `toolcall.receipt_id`.
9. MCP: the same tools at `/mcp` (streamable HTTP, the same bearer key). A call that needs a
   quote or an approval returns the quote instead of acting; call again with `approval_id`.
10. Webhooks: `POST /v1/webhook_endpoints {"url", "events"}` (scope `webhooks:manage`; the
   signing secret is shown once) gets events such as `execution.succeeded`, signed with Standard
   Webhooks headers and delivered at least once; `GET /v1/events/{id}` shows every attempt.
"""


def llms_txt(site: SiteConfig, tool_names: list[str]) -> str:
    base = site.base_url
    tools = ", ".join(f"`{name}`" for name in tool_names)
    return f"""# {site.name}

> {site.summary}

Agents call priced tools ({tools}) and LLMs through one API: quote first, get a human approval
when the tool is risky, execute with an idempotency key, and keep the receipt. Test-mode keys
(`tcs_test_...`) reach only sandbox providers, so an agent can try the whole flow for free.

{GUIDE}
## Docs

- [API reference (OpenAPI 3.1)]({base}/openapi.json): every route, scope, error code and header
- [Everything in one text]({base}/llms-full.txt): this guide and the whole API
- [Guide]({base}/docs/index.html): the flow with examples
- [MCP]({base}/docs/mcp.html): the MCP endpoint at {base}/mcp

## Catalog

- [Tools]({base}/catalog.json): scope, risk, approval rule, price basis, params schema
- [Pricing]({base}/pricing.json): our prices per call and per million tokens
- [Models]({base}/models.json): LLM lanes, aliases and targets

## Optional

- [MCP discovery]({base}/.well-known/mcp.json)
- [Security contact]({base}/.well-known/security.txt)
- [Pricing page]({base}/pricing.html)
"""


def llms_full_txt(site: SiteConfig, openapi: dict[str, Any]) -> str:
    parts = [f"# {site.name}: the whole API\n", f"> {site.summary}\n", GUIDE, "## Operations\n"]
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            parts.append(operation_text(path, method, op))
    return "\n".join(parts)


def operation_text(path: str, method: str, op: dict[str, Any]) -> str:
    lines = [f"### {method.upper()} {path}", "", op["summary"] + "."]
    if op.get("description"):
        lines.append(op["description"])
    if op.get("security") == []:
        lines.append("Auth: none.")
    else:
        lines.append(f"Auth: bearer key; scope: {op.get('x-required-scope', 'any valid key')}.")
    for param in op.get("parameters", []):
        if "$ref" in param:
            required = not param["$ref"].endswith("OptionalIdempotencyKey")
            lines.append(f"Header Idempotency-Key: {'required' if required else 'optional'}.")
        else:
            lines.append(f"{param['in'].capitalize()} `{param['name']}`: "
                         f"{json.dumps(param['schema'])}.")  # fmt: skip
    body = op.get("requestBody")
    if body is not None:
        schema = body["content"]["application/json"]["schema"]
        lines.append(f"Body (JSON): {json.dumps(schema, sort_keys=True)}")
    for status, response in op["responses"].items():
        media = ", ".join(response.get("content", {}))
        codes = response.get("x-error-codes")
        what = f"error codes {', '.join(codes)}" if codes else response["description"]
        lines.append(f"- {status} ({media}): {what}")
    return "\n".join(lines) + "\n"
