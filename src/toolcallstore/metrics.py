"""Prometheus metrics on a registry owned by one app instance (no process globals)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # With `serve --processes N` each scrape reaches one process and shows its counts only.
        self.process = Info(
            "toolcallstore_process", "The server process that answered.", registry=self.registry
        )
        self.process.info({"pid": str(os.getpid())})
        self.requests = Counter(
            "toolcallstore_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "toolcallstore_http_request_duration_seconds",
            "Time from request start to the last response byte.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audit_backlog = Gauge(
            "toolcallstore_audit_backlog_rows",
            "Audit rows recorded but not yet committed.",
            registry=self.registry,
        )

        self.job_claim_latency = Histogram(
            "toolcallstore_job_claim_latency_seconds",
            "From a job being due to a worker claiming it.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.job_runs = Histogram(
            "toolcallstore_job_run_seconds",
            "Handler run time by job type and resulting state (failed, queued = retry, ...).",
            ["type", "state"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.job_depth = Gauge(
            "toolcallstore_jobs",
            "Jobs by queue and live state, counted when metrics are scraped.",
            ["queue", "state"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(route, method, code).inc()
        self.latency.labels(route, method, code).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
