"""index.html, pricing.html and docs/: plain HTML, inline CSS, no scripts, no external assets."""

from __future__ import annotations

import html
import re
from typing import Any

from toolcallstore.site.documents import SiteConfig
from toolcallstore.site.texts import GUIDE

STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#111}code,pre{font:14px ui-monospace,monospace;background:#f3f3f3}"
    "pre{padding:.5rem;overflow-x:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
    "nav a{margin-right:1rem}h3{margin-top:2rem}"
)
NUMBER = re.compile(r"^\d+\. ")
NAV = (
    '<nav><a href="/index.html">Home</a><a href="/pricing.html">Pricing</a>'
    '<a href="/docs/index.html">Docs</a><a href="/docs/mcp.html">MCP</a>'
    '<a href="/openapi.json">OpenAPI</a><a href="/llms.txt">llms.txt</a></nav>'
)


def page(site: SiteConfig, title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · {html.escape(site.name)}</title>"
        f'<link rel="icon" href="data:,"><style>{STYLE}</style></head>\n'
        f"<body>{NAV}\n{body}\n</body></html>\n"
    )


def inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def markdown(text: str) -> str:
    """The little Markdown the guide uses: ## headings, numbered items, paragraphs, `code`."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        if block.startswith("## "):
            out.append(f"<h2>{inline(block[3:])}</h2>")
            continue
        items = re.split(r"\n(?=\d+\. )", block)
        if re.match(r"\d+\. ", items[0]):
            lis = "".join(f"<li>{inline(NUMBER.sub('', item))}</li>" for item in items)
            out.append(f"<ol>{lis}</ol>")
        else:
            out.append(f"<p>{inline(block)}</p>")
    return "\n".join(out)


def index_page(site: SiteConfig, catalog: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(t['name'])}</code></td><td>{html.escape(t['description'])}"
        f"</td><td>{t['scope']}</td><td>{t['risk']}</td><td>{t['mode']}</td></tr>"
        for t in catalog["tools"]
    )
    body = (
        f"<h1>{html.escape(site.name)}</h1><p>{html.escape(site.summary)}</p>"
        '<p>Agents: start with <a href="/llms.txt">llms.txt</a>, the '
        '<a href="/openapi.json">OpenAPI description</a> or the MCP endpoint '
        '(<a href="/.well-known/mcp.json">discovery</a>).</p>'
        "<h2>Tools</h2><table><tr><th>tool</th><th>what it does</th><th>scope</th><th>risk</th>"
        f'<th>runs</th></tr>{rows}</table><p><a href="/catalog.json">catalog.json</a></p>'
    )
    return page(site, "Home", body)


def pricing_page(site: SiteConfig, pricing: dict[str, Any]) -> str:
    tools = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(str(p.get('basis')))}"
        f"</td><td>{html.escape(str(p.get('unit_price_usd', p.get('description', ''))))}</td></tr>"
        for name, p in pricing["tools"].items()
    )
    targets = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{p['input_usd_per_mtok']}</td>"
        f"<td>{p['output_usd_per_mtok']}</td></tr>"
        for name, p in pricing["llm"]["targets"].items()
    )
    fee = html.escape(pricing["llm"]["fee_usd_per_call"])
    body = (
        f"<h1>Pricing</h1><p>{html.escape(pricing['notes'])}</p><h2>Tools</h2>"
        f"<table><tr><th>tool</th><th>basis</th><th>price (USD)</th></tr>{tools}</table>"
        f"<h2>LLM targets</h2><p>USD per million tokens, plus {fee} USD per call.</p>"
        "<table><tr><th>target</th><th>input</th><th>output</th></tr>"
        f'{targets}</table><p><a href="/pricing.json">pricing.json</a> · '
        '<a href="/models.json">models.json</a></p>'
    )
    return page(site, "Pricing", body)


def docs_page(site: SiteConfig, openapi: dict[str, Any]) -> str:
    toc, sections = [], []
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            anchor = op["operationId"]
            label = f"{method.upper()} {path}"
            toc.append(f'<li><a href="#{anchor}">{html.escape(label)}</a></li>')
            sections.append(_operation_html(anchor, label, op))
    body = (
        f"<h1>{html.escape(site.name)} docs</h1>{markdown(GUIDE)}"
        f"<h2>API reference</h2><ul>{''.join(toc)}</ul>{''.join(sections)}"
    )
    return page(site, "Docs", body)


def _operation_html(anchor: str, label: str, op: dict[str, Any]) -> str:
    scope = "none" if op.get("security") == [] else op.get("x-required-scope", "any valid key")
    rows = "".join(
        f"<tr><td>{status}</td><td>{html.escape(r['description'])}</td></tr>"
        for status, r in op["responses"].items()
    )
    return (
        f'<h3 id="{anchor}">{html.escape(label)}</h3><p>{html.escape(op["summary"])}.</p>'
        f"<p>Scope: <code>{html.escape(scope)}</code></p>"
        f"<table><tr><th>status</th><th>meaning</th></tr>{rows}</table>"
    )


def mcp_page(site: SiteConfig, mcp: dict[str, Any]) -> str:
    tools = "".join(
        f"<li><code>{html.escape(t['name'])}</code> (scope <code>{t['scope']}</code>"
        f"{', destructive' if t['annotations']['destructiveHint'] else ''})</li>"
        for t in mcp["tools"]
    )
    body = (
        "<h1>MCP</h1><p>The store's tools are an MCP server at <code>/mcp</code> (streamable "
        "HTTP). Authenticate with <code>Authorization: Bearer &lt;API key&gt;</code>; the key's "
        "scopes decide which tools run.</p><p>A tool call runs the same flow as "
        "<code>POST /v1/executions</code>: under the key's <code>auto_quote_max_usd</code> a "
        "low-risk call is quoted inline and runs; otherwise the result is the quote (price, "
        "whether an approval is needed and how to get one) and nothing happens. Call again with "
        "<code>quote_id</code> (and <code>approval_id</code> once granted) to run it. Results "
        "carry <code>receipt_id</code>; a job tool returns its job and how to poll it: the "
        "<code>toolcallstore.job</code> tool (with <code>wait</code> to long-poll), "
        "<code>GET /v1/jobs/{id}</code> or its events.</p>"
        f'<h2>Tools</h2><ul>{tools}</ul><p><a href="/.well-known/mcp.json">mcp.json</a></p>'
    )
    return page(site, "MCP", body)
