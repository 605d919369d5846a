"""HTTP resources, one module each; `routes()` gathers them for the app."""

from starlette.routing import BaseRoute

from toolcallstore.api import (
    approvals,
    executions,
    health,
    jobs,
    keys,
    quotes,
    receipts,
    spend_caps,
    tenants,
)


def routes() -> list[BaseRoute]:
    return [
        *health.routes,
        *tenants.routes,
        *keys.routes,
        *jobs.routes,
        *quotes.routes,
        *approvals.routes,
        *executions.routes,
        *spend_caps.routes,
        *receipts.routes,
    ]
