"""HTTP resources, one module each; `routes()` gathers them for the app."""

from starlette.routing import BaseRoute

from toolcallstore.api import health, jobs, keys, tenants


def routes() -> list[BaseRoute]:
    return [*health.routes, *tenants.routes, *keys.routes, *jobs.routes]
