"""Probes and metrics: /healthz (alive), /readyz (able to serve), /metrics (operators only)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import authenticated, is_loopback
from toolcallstore.context import context_of
from toolcallstore.db.migrate import current_version, latest_version
from toolcallstore.errors import PermissionDenied, Unavailable
from toolcallstore.lanes.health import WINDOW_SECONDS
from toolcallstore.responses import JSONResponse
from toolcallstore.services import services
from toolcallstore.site.operations import Operation

AUDIT_BACKLOG_LIMIT = 50_000


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        version = await current_version(svc.db)
        checks["database"] = "ok"
        expected = latest_version(svc.db.dialect)
        checks["migrations"] = "ok" if version == expected else f"at {version}, need {expected}"
    except Exception as exc:  # any driver error means "not ready", reported, never raised
        checks["database"] = f"error: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    for name, task in svc.tasks.items():
        checks[f"task:{name}"] = "ok" if not task.done() else "stopped"
    backlog = svc.audit.backlog
    checks["audit_backlog"] = "ok" if backlog < AUDIT_BACKLOG_LIMIT else f"{backlog} rows waiting"
    failing = {name: state for name, state in checks.items() if state != "ok"}
    if failing:
        reasons = [f"{name}: {state}" for name, state in failing.items()]
        raise Unavailable("Not ready: " + "; ".join(reasons), checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


async def metrics(request: Request) -> Response:
    ctx = context_of(request)
    principal = ctx.principal
    if not (principal is not None and principal.has("admin")) and not is_loopback(ctx.ip):
        ctx.scope_needed = "admin"
        ctx.deny("metrics_not_loopback")
        raise PermissionDenied(
            "Metrics are served to loopback clients and admin keys only.",
            required_scope="admin",
        )
    svc = services(request)
    svc.metrics.audit_backlog.set(svc.audit.backlog)
    svc.metrics.job_depth.clear()
    for queue, state, count in await svc.jobs.store.depth():
        svc.metrics.job_depth.labels(queue, state).set(count)
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def provider_health(request: Request) -> Response:
    """Every target's breaker, error rate and latency as this process has seen them."""
    authenticated(request)
    svc = services(request)
    lanes = {lane.id: list(lane.targets) for lane in svc.lanes.lanes.values()}
    targets = list(svc.lanes.models)
    return JSONResponse(
        {
            "object": "provider_health",
            "window_seconds": WINDOW_SECONDS,
            "targets": svc.health.report(targets),
            "lanes": lanes,
        }
    )


routes = [
    Route("/v1/health/providers", provider_health, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]

operations = [
    Operation("GET", "/v1/health/providers", "Each LLM target's breaker, error rate, latency",
              "health", None, responses={200: "ProviderHealth"}),
    Operation("GET", "/healthz", "Liveness", "health", "public", responses={200: "Health"}),
    Operation("GET", "/readyz", "Readiness: database, migrations, background tasks", "health",
              "public", responses={200: "Health"}, errors={503: ("unavailable",)}),
    Operation("GET", "/metrics", "Prometheus metrics (loopback clients or admin keys)",
              "health", "public", responses={200: "Metrics"},
              errors={403: ("insufficient_scope",)}),
]  # fmt: skip
