"""`/admin`: the operator status page (HTML, not API). Served to loopback clients, and to
others only with an admin credential, like /metrics; never through the public Caddy routes.

Signing in exchanges a live admin key for a short session cookie (admin/session.py); every
POST also carries the session's CSRF token; queue actions go through the job store's own
retry and cancel, and each request is audited under the signed-in key like any other."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from toolcallstore.admin import html
from toolcallstore.admin.session import (
    COOKIE,
    COOKIE_PATH,
    Session,
    csrf_ok,
    sign_in,
    sign_out,
    verify,
)
from toolcallstore.admin.status import AdminState, gather, verify_now
from toolcallstore.auth import Principal, is_loopback
from toolcallstore.context import context_of
from toolcallstore.controls.executions import JOB_TYPE as TOOL_JOB_TYPE
from toolcallstore.errors import NotFound, PermissionDenied, StateConflict, Unauthenticated
from toolcallstore.queue.store import TERMINAL
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import Operation

MAX_FORM_BYTES = 4096
SELF = "/admin"


def _state(request: Request) -> AdminState:
    state: AdminState | None = getattr(request.app.state, "admin_pages", None)
    if state is None:
        state = request.app.state.admin_pages = AdminState()
    return state


async def _session(request: Request) -> Session | None:
    """The signed-in session, if any; refuses a remote client that has no admin credential."""
    ctx = context_of(request)
    ctx.scope_needed = "admin"
    session = await verify(services(request).db, request.cookies.get(COOKIE),
                           _state(request).signed_out)  # fmt: skip
    if session is not None:
        ctx.principal = Principal(session.key)  # audited under the signed-in key
        return session
    bearer = ctx.principal
    if not is_loopback(ctx.ip) and not (bearer is not None and bearer.has("admin")):
        ctx.deny("admin_page_not_loopback")
        raise PermissionDenied(
            "The operator pages are served to loopback clients and admin sessions only.",
            required_scope="admin",
        )
    return None


async def _signed_in(request: Request) -> Session:
    session = await _session(request)
    if session is None:
        context_of(request).deny("admin_session_missing")
        raise Unauthenticated("Sign in at /admin/login first: no valid operator session.",
                              code="admin_session_required")  # fmt: skip
    return session


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded fields of a small form; anything else reads as an empty form (so a
    missing key or token is what gets refused)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than any of our forms has
        return {}
    return {name: values[0] for name, values in fields.items()}


async def _checked_post(request: Request) -> Session:
    """A signed-in POST from this site carrying the session's CSRF token."""
    session = await _signed_in(request)
    form = await _form(request)
    token = form.get("csrf") or request.headers.get("x-csrf-token")
    if not csrf_ok(session, token):
        context_of(request).deny("csrf_failed")
        raise PermissionDenied("Missing or wrong CSRF token: reload the page and try again.",
                               code="csrf_failed")  # fmt: skip
    return session


def _secure(request: Request) -> bool:
    # https as the client saw it: uvicorn applies X-Forwarded-Proto from trusted proxies only.
    return request.url.scheme == "https"


def _html(body: str, nonce: str, status: int = 200) -> HTMLResponse:
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}';"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-store",
               "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
               "X-Content-Type-Options": "nosniff"}  # fmt: skip
    return HTMLResponse(body, status_code=status, headers=headers)


def _back(notice: str | None = None) -> RedirectResponse:
    target = SELF if notice is None else f"{SELF}?done={notice}"
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


async def status_page(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return RedirectResponse("/admin/login", status_code=303)
    status = await gather(services(request), _state(request))
    nonce = secrets.token_urlsafe(16)
    label = f"{session.key.name or session.key.id} (…{session.key.last4})"
    page = html.status_page(status, session.csrf, nonce, request.query_params.get("done"), label)
    return _html(page, nonce)


async def status_json(request: Request) -> Response:
    session = await _signed_in(request)
    status = await gather(services(request), _state(request))
    body = {"status": status, "html": html.sections(status, session.csrf)}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def login_page(request: Request) -> Response:
    if await _session(request) is not None:
        return _back()
    nonce = secrets.token_urlsafe(16)
    return _html(html.login_page(nonce), nonce)


async def login(request: Request) -> Response:
    await _session(request)  # only the network rule: a new sign-in replaces any session
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        context_of(request).deny("admin_login_cross_site")
        raise PermissionDenied("Sign in from the operator page itself.", code="csrf_failed")
    form = await _form(request)
    svc = services(request)
    try:
        session = await sign_in(svc.db, form.get("key", ""), svc.settings.admin_session_seconds)
    except (Unauthenticated, PermissionDenied) as refusal:
        context_of(request).deny(f"admin_login:{refusal.code}")
        if "text/html" not in request.headers.get("accept", ""):
            raise
        nonce = secrets.token_urlsafe(16)  # a browser: the form again, saying why
        return _html(html.login_page(nonce, refusal.message), nonce, refusal.status)
    context_of(request).principal = Principal(session.key)
    context_of(request).reason = "admin_signed_in"
    response = _back()
    response.set_cookie(COOKIE, session.cookie, max_age=svc.settings.admin_session_seconds,
                        path=COOKIE_PATH, secure=_secure(request), httponly=True,
                        samesite="strict")  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    session = await _checked_post(request)
    sign_out(session, _state(request).signed_out)
    context_of(request).reason = "admin_signed_out"
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=_secure(request), httponly=True,
                           samesite="strict")  # fmt: skip
    return response


async def retry_job(request: Request) -> Response:
    await _checked_post(request)
    job_id = request.path_params["job_id"]
    context_of(request).reason = f"admin_job_retry:{job_id}"
    svc = services(request)
    job = await svc.jobs.store.retry(job_id)
    if job is None:
        raise NotFound("No such job.", param="job_id")
    if job.state != "queued":
        raise StateConflict(f"Only failed or cancelled jobs are retried; this one is {job.state}.",
                            code="job_not_retryable", param="job_id")  # fmt: skip
    svc.jobs.wake()
    return _back("retried")


async def cancel_job(request: Request) -> Response:
    await _checked_post(request)
    job_id = request.path_params["job_id"]
    context_of(request).reason = f"admin_job_cancel:{job_id}"
    store = services(request).jobs.store
    found = await store.get(job_id)
    if found is None:
        raise NotFound("No such job.", param="job_id")
    if found.state in TERMINAL:
        raise StateConflict(f"This job has already ended ({found.state}).", code="job_finished",
                            param="job_id")  # fmt: skip
    # The jobs API's rule: a tool's job may have acted once started, so only before that.
    tool_job = found.type == TOOL_JOB_TYPE
    job = await store.cancel(job_id, unstarted_only=tool_job)
    assert job is not None
    if job.state in TERMINAL:  # cancelled now, or ended on its own meanwhile
        return _back("cancelled" if job.state == "cancelled" else None)
    if tool_job:
        raise StateConflict("This tool's job has already started, and its effect may have"
                            " happened: it can no longer be cancelled.", code="job_started",
                            param="job_id")  # fmt: skip
    return _back("cancel_requested")


async def verify_audit(request: Request) -> Response:
    await _checked_post(request)
    context_of(request).reason = "admin_audit_verify"
    await verify_now(services(request).db, _state(request))
    return _back("verified")


routes = [
    Route("/admin", status_page, methods=["GET"]),
    Route("/admin/status.json", status_json, methods=["GET"]),
    Route("/admin/login", login_page, methods=["GET"]),
    Route("/admin/login", login, methods=["POST"]),
    Route("/admin/logout", logout, methods=["POST"]),
    Route("/admin/jobs/{job_id}/retry", retry_job, methods=["POST"]),
    Route("/admin/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/admin/audit/verify", verify_audit, methods=["POST"]),
]

# HTML pages for the operator, not API: matched like every route, kept out of openapi.json
# (`external`), and described by the README's "Operator status page" section.
PAGE_DOCS = "/admin"
operations = [
    Operation(method, path, summary, "admin", "admin", external=PAGE_DOCS)
    for method, path, summary in (
        ("GET", "/admin", "Operator status page"),
        ("GET", "/admin/status.json", "Operator status (the page's refresh)"),
        ("GET", "/admin/login", "Operator sign-in form"),
        ("POST", "/admin/login", "Operator sign-in: an admin key for a session cookie"),
        ("POST", "/admin/logout", "Operator sign-out"),
        ("POST", "/admin/jobs/{job_id}/retry", "Requeue a failed or cancelled job"),
        ("POST", "/admin/jobs/{job_id}/cancel", "Cancel a job (the jobs API's rules)"),
        ("POST", "/admin/audit/verify", "Walk the audit chain now"),
    )
]
