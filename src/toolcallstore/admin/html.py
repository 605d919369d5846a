"""The operator pages as server-rendered HTML: inline CSS and script (allowed by a per-response
nonce), no external asset, every value escaped. The sections are rendered here both for the
first load and for each refresh (`/admin/status.json` carries them), so the page script only
swaps them in."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

REFRESH_MS = 5000

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;align-items:center;gap:16px}
header h1{font-size:16px;margin:0;flex:1}
main{padding:12px 20px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 14px;
padding:10px 14px}
h2{font-size:15px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#4a5263}
.bad{color:#b42318;font-weight:600}.warn{color:#b54708;font-weight:600}.ok{color:#067647}
.muted{color:#6b7385}.err{font-family:ui-monospace,monospace;font-size:12px;max-width:520px;
word-break:break-word}
form.inline{display:inline;margin:0}
button{font:inherit;padding:2px 10px;border:1px solid #98a2b3;border-radius:4px;background:#fff;
cursor:pointer}
.notice{background:#ecfdf3;border:1px solid #abefc6;padding:6px 10px;border-radius:4px}
.login{max-width:420px;margin:80px auto}
input[type=password]{width:100%;font:inherit;padding:6px;box-sizing:border-box;margin:6px 0 10px}
"""

SCRIPT = """
(function () {
  var box = document.getElementById('sections');
  var stamp = document.getElementById('updated');
  async function refresh() {
    try {
      var r = await fetch('/admin/status.json', {credentials: 'same-origin',
                                                 headers: {'Accept': 'application/json'}});
      if (r.status === 401 || r.status === 403) { location.assign('/admin/login'); return; }
      if (!r.ok) { stamp.textContent = 'refresh failed (' + r.status + ')'; return; }
      var body = await r.json();
      box.innerHTML = body.html;
      stamp.textContent = 'updated ' + new Date(body.status.generated * 1000).toISOString();
    } catch (e) {
      stamp.textContent = 'refresh failed: server unreachable';
    }
  }
  setInterval(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_MS))

NOTICES = {
    "retried": "The job was put back in its queue.",
    "cancelled": "The job was cancelled.",
    "cancel_requested": "The job is running: it was asked to stop.",
    "verified": "The audit chain was walked from its first row (see below).",
}


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _doc(title: str, body: str, nonce: str, script: str = "") -> str:
    tail = f'<script nonce="{_e(nonce)}">{script}</script>' if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} · ToolCall Store</title>"
        f'<style nonce="{_e(nonce)}">{STYLE}</style></head><body>{body}{tail}</body></html>'
    )


def login_page(nonce: str, error: str | None = None) -> str:
    refusal = f'<p class="bad" id="refusal">{_e(error)}</p>' if error else ""
    body = (
        f'<main class="login"><section><h2>Operator sign-in</h2>{refusal}'
        '<form method="post" action="/admin/login">'
        '<label for="key">A live API key with the <code>admin</code> scope</label>'
        '<input type="password" id="key" name="key" autocomplete="off" required>'
        '<button type="submit">Sign in</button></form>'
        '<p class="muted">The key is exchanged for a short session cookie; it is not kept.</p>'
        "</section></main>"
    )
    return _doc("Operator sign-in", body, nonce)


def status_page(status: dict[str, Any], csrf: str, nonce: str, notice: str | None,
                key_label: str) -> str:  # fmt: skip
    note = NOTICES.get(notice or "")
    header = (
        "<header><h1>ToolCall Store · operator status</h1>"
        f'<span class="muted" id="updated">updated {_e(_iso(status["generated"]))}</span>'
        f"<span>{_e(key_label)}</span>"
        f'<form class="inline" method="post" action="/admin/logout">{_csrf(csrf)}'
        '<button type="submit">Sign out</button></form></header>'
    )
    body = (
        f"{header}<main>"
        + (f'<p class="notice" id="notice">{_e(note)}</p>' if note else "")
        + f'<div id="sections">{sections(status, csrf)}</div></main>'
    )
    return _doc("Operator status", body, nonce, SCRIPT)


def sections(status: dict[str, Any], csrf: str) -> str:
    return "".join((
        _providers(status["providers"], status["pid_note"]),
        _queues(status["queues"], csrf),
        _money(status["money"]),
        _audit(status["audit"], csrf),
        _webhooks(status["webhooks"]),
    ))  # fmt: skip


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def _table(
    heads: Iterable[str], rows: Iterable[Any], cells: Callable[[Any], Iterable[str]],
    empty: str, table_id: str,
) -> str:  # fmt: skip
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(r)) + "</tr>" for r in rows)
    if not body:
        return f'<p class="muted" id="{table_id}">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def _state(state: str) -> str:
    css = {"open": "bad", "half_open": "warn", "closed": "ok"}.get(state, "")
    return f'<span class="{css}">{_e(state)}</span>'


def _provider_cells(t: dict[str, Any]) -> list[str]:
    rate = t["error_rate"]
    last = t["last_error"]
    return [
        _e(t["target"]), _state(t["state"]),
        f'<span class="{"bad" if rate >= 0.5 else "warn" if rate > 0 else "ok"}">'
        f"{rate * 100:.0f}%</span>",
        _e(t["calls"]), _ms(t["latency_ms"]["p50"]), _ms(t["latency_ms"]["p95"]),
        _ms(t["first_token_ms"]["p50"]), _ms(t["first_token_ms"]["p95"]),
        "–" if last is None else f'<span class="err">{_e(last["error"])}</span>'
        f' <span class="muted">{_e(last["age_s"])} s ago</span>',
    ]  # fmt: skip


def _providers(p: dict[str, Any], note: str) -> str:
    heads = ("target", "circuit", "error rate", "calls", "p50", "p95", "first token p50",
             "first token p95", "last error")  # fmt: skip
    table = _table(heads, p["targets"], _provider_cells, "No LLM call made by this process yet.",
                   "providers-table")  # fmt: skip
    return (f'<section id="providers"><h2>Providers</h2>{table}<p class="muted">{_e(note)}'
            f' {_e(p["idle"])} other targets are idle.</p></section>')  # fmt: skip


def _button(job_id: str, action: str, csrf: str) -> str:
    target = f"/admin/jobs/{_e(job_id)}/{action}"
    return (f'<form class="inline" method="post" action="{target}">{_csrf(csrf)}'
            f'<button type="submit">{action.capitalize()}</button></form>')  # fmt: skip


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _queues(q: dict[str, Any], csrf: str) -> str:
    depth = _table(("queue", "queued", "running", "oldest due job waiting"), q["depth"],
                   lambda d: (_e(d["queue"]), _e(d["queued"]), _e(d["running"]),
                              _age(d.get("oldest_queued_age_s"))),
                   "No job queued or running.", "depth-table")  # fmt: skip
    failed = _table(
        ("job", "type", "queue", "tenant", "attempts", "age", "last error", ""), q["failed"],
        lambda j: (_e(j["id"]), _e(j["type"]), _e(j["queue"]), _e(j["tenant_id"]),
                   f'{_e(j["attempts"])}/{_e(j["max_attempts"])}', _age(j["age_s"]),
                   f'<span class="err">{_e(j["last_error"])}</span>',
                   _button(j["id"], "retry", csrf)),
        "No failed job.", "failed-jobs")  # fmt: skip
    live = _table(
        ("job", "type", "queue", "state", "attempts", "age", ""), q["live"],
        lambda j: (_e(j["id"]), _e(j["type"]), _e(j["queue"]),
                   _e(j["state"]) + (" (stop asked)" if j["cancel_requested"] else ""),
                   f'{_e(j["attempts"])}/{_e(j["max_attempts"])}', _age(j["age_s"]),
                   _button(j["id"], "cancel", csrf)),
        "Nothing waiting.", "live-jobs")  # fmt: skip
    return (f'<section id="queues"><h2>Queues</h2>{depth}<h2>Failed jobs</h2>{failed}'
            f"<h2>Queued and running</h2>{live}</section>")  # fmt: skip


def _mode(livemode: bool) -> str:
    return "live" if livemode else "test"


def _money(m: dict[str, Any]) -> str:
    spend = _table(("tenant", "name", "mode", "today", f"month ({m['period']})"), m["spend"],
                   lambda s: (_e(s["tenant_id"]), _e(s["name"]), _mode(s["livemode"]),
                              "$" + _e(s["today_usd"]), "$" + _e(s["month_usd"])),
                   "No charge this month.", "spend-table")  # fmt: skip
    holds = _table(("tenant", "mode", "open holds", "held", "next expiry"), m["open_holds"],
                   lambda h: (_e(h["tenant_id"]), _mode(h["livemode"]), _e(h["count"]),
                              "$" + _e(h["amount_usd"]), _age(h["next_expiry_in_s"])),
                   "No hold open.", "holds-table")  # fmt: skip
    rec = m["reconciliation"]
    verdict = ('<p class="ok">Balanced: receipts, ledger and spend counters agree.</p>'
               if rec["balanced"] else
               f'<p class="bad">{len(rec["mismatches"])} difference(s):</p>')  # fmt: skip
    diffs = "".join(
        f'<li class="err">{_e(_mode(d["livemode"]))} {_e(d["kind"])} {_e(d["id"])}: '
        + _e(", ".join(f"{k}={v}" for k, v in d.items() if k.endswith("_usd")))
        + "</li>"
        for d in rec["mismatches"]
    )
    return (f'<section id="money"><h2>Spend per tenant</h2>{spend}<h2>Open holds</h2>{holds}'
            f'<h2>Reconciliation ({_e(m["period"])})</h2>{verdict}'
            + (f"<ul>{diffs}</ul>" if diffs else "") + "</section>")  # fmt: skip


def _audit(a: dict[str, Any], csrf: str) -> str:
    tail = ('<span class="ok">newest row and head agree</span>' if a["tail_ok"]
            else f'<span class="bad">{_e(a["problem"])}</span>')  # fmt: skip
    walk = a["full_check"]
    if walk is None:
        full = '<span class="muted">not walked by this process yet</span>'
    elif walk["ok"]:
        full = (f'<span class="ok">verified {_e(walk["rows_checked"])} rows</span> at '
                f"{_e(_iso(walk['at']))}")  # fmt: skip
    else:
        full = (f'<span class="bad">broken at row {_e(walk["broken_at"])}: '
                f'{_e(walk["problem"])}</span> ({_e(_iso(walk["at"]))})')  # fmt: skip
    unsealed = f"<tr><th>unsealed rows</th><td>{_e(a['unsealed'])}</td></tr>"
    return (
        '<section id="audit"><h2>Audit chain</h2><table>'
        f"<tr><th>chained rows</th><td>{_e(a['rows'])}</td></tr>"
        f"<tr><th>tail</th><td>{tail}</td></tr>{unsealed}"
        f"<tr><th>full walk</th><td>{full} "
        f'<form class="inline" method="post" action="/admin/audit/verify">{_csrf(csrf)}'
        '<button type="submit">Verify now</button></form></td></tr></table></section>'
    )


def _webhooks(rows: list[dict[str, Any]]) -> str:
    table = _table(
        ("endpoint", "tenant", "mode", "url", "failing for", "state", "last error", "pending"),
        rows,
        lambda w: (_e(w["id"]), _e(w["tenant_id"]), _mode(w["livemode"]), _e(w["url"]),
                   _age(w["failing_for_s"]),
                   f'<span class="bad">disabled: {_e(w["disabled_reason"])}</span>'
                   if w["disabled"] else '<span class="warn">retrying</span>',
                   f'<span class="err">{_e(w["last_error"])}</span>',
                   _e(w["pending_deliveries"])),
        "Every webhook endpoint is delivering.", "webhooks-table")  # fmt: skip
    return f'<section id="webhooks"><h2>Failing webhook endpoints</h2>{table}</section>'
