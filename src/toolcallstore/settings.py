"""Every knob of the service, read once from TOOLCALLSTORE_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from toolcallstore.errors import ConfigError

PREFIX = "TOOLCALLSTORE_"


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///./toolcallstore.db"
    host: str = "127.0.0.1"
    port: int = 8080
    # Addresses whose X-Forwarded-For header is believed (the Caddy in front of us).
    trusted_proxies: str = "127.0.0.1,::1"
    max_body_bytes: int = 1_048_576
    key_cache_seconds: float = 2.0
    audit_flush_ms: int = 50
    audit_batch_size: int = 2000
    idempotency_ttl_seconds: int = 86_400
    idempotency_lock_seconds: int = 300
    prune_interval_seconds: int = 600
    admin_key_file: str = ""
    # How long an operator's /admin sign-in lasts (the cookie's Max-Age and signed expiry).
    admin_session_seconds: int = 1800
    log_level: str = "info"
    access_log: bool = True
    db_readers: int = 2
    # On SIGTERM/SIGINT: stop accepting connections, then give open requests (streams
    # included) and running jobs this long to finish; jobs still running are handed back to
    # the queue, requests still open are cut. PM2's kill_timeout must be longer.
    shutdown_grace_seconds: float = 10.0
    # API processes sharing the port, each with its own worker pool (Postgres only).
    processes: int = 1
    workers: int = 4
    # Per-queue concurrency caps, e.g. "media=2,webhooks=8"; the pool total is `workers`.
    queue_limits: str = ""
    job_lease_seconds: float = 30.0
    job_poll_ms: int = 1000
    job_retention_days: int = 7
    # Prices, tools' price bases and (later) LLM lanes; empty means the repository's
    # config/models.json.
    models_file: str = ""
    quote_ttl_seconds: int = 900
    # A hold outlives its tool's timeout by this much before the sweep releases it (a crash).
    hold_grace_seconds: int = 300
    # Holds of job-run tools are extended by this much while their job is still live.
    job_hold_seconds: int = 3600
    hold_sweep_seconds: int = 30
    # Where the sandbox providers answer (test-mode LLM calls go there); empty means this
    # server's own /sandbox mount.
    sandbox_url: str = ""
    # Live LLM prices: refreshed this often (0: never), trusted for this long before quotes fall
    # back to config/models.json. An empty source means the sandbox's stored OpenRouter list;
    # production sets https://openrouter.ai/api/v1/models.
    price_refresh_seconds: int = 3600
    price_max_age_seconds: int = 86_400
    price_source_url: str = ""
    # BYOK encryption keys, "kid:base64[,kid:base64...]" (32-byte AES-256-GCM keys, the first
    # encrypts, the rest only decrypt until `toolcallstore byok rotate`); empty disables BYOK.
    # Kept out of repr so that printing the settings never prints it.
    master_key: str = field(default="", repr=False)
    # How often new events are fanned out to webhook endpoints (deliveries go through the queue).
    webhook_dispatch_ms: int = 200
    # Stripe billing: off without an API key. The base is Stripe's unless set (the sandbox's
    # /sandbox/stripe in tests and demos); the webhook secret verifies POST /v1/stripe/webhook.
    stripe_api_key: str = field(default="", repr=False)
    stripe_api_base: str = ""
    stripe_webhook_secret: str = field(default="", repr=False)
    billing_file: str = ""
    meter_interval_seconds: int = 60
    # Media generation (issue 14): how long a submit may take before its answer counts as lost,
    # the longest pause between status polls (Retry-After may ask longer), how long an accepted
    # request is followed before it is cancelled and the next target tried, where providers
    # may POST their webhooks (our public base URL; empty: no webhooks), and Replicate's
    # webhook secret (whsec_...) that verifies them.
    media_submit_timeout_seconds: float = 30.0
    media_poll_max_seconds: float = 5.0
    media_poll_timeout_seconds: int = 1800
    media_webhook_base_url: str = ""
    replicate_webhook_secret: str = field(default="", repr=False)
    # Stored assets (media results): "local" files under `assets_dir` (empty: beside the SQLite
    # file, else ./toolcallstore-assets) or "s3" objects in an S3-compatible bucket.
    storage: str = "local"
    assets_dir: str = ""
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = "assets/"
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    # Signed asset URLs: "kid:secret[,kid:secret...]", the first signs, all verify. Empty: one
    # key per TOOLCALLSTORE_MASTER_KEY entry derived from it, else a random key kept in the
    # database (shared by every process).
    asset_signing_keys: str = field(default="", repr=False)
    asset_url_ttl_seconds: int = 3600
    # Unpublished assets older than this are deleted (objects and rows); 0 keeps them forever.
    asset_retention_days: int = 30
    # The largest object a store accepts (0: no limit).
    asset_max_bytes: int = 536_870_912
    # The public origin of signed and published asset URLs, e.g. https://toolcallstore.example;
    # empty gives paths (/v1/assets/...).
    public_url: str = ""
    # Domains and DNS (live mode): OpenProvider is the primary registrar and DNS host, Porkbun
    # the failover; a registrar without credentials is not used. Test mode always uses the
    # sandbox's fakes.
    openprovider_url: str = "https://api.openprovider.eu/v1beta"
    openprovider_username: str = ""
    openprovider_password: str = field(default="", repr=False)
    porkbun_url: str = "https://api.porkbun.com/api/json/v3"
    porkbun_api_key: str = field(default="", repr=False)
    porkbun_secret_key: str = field(default="", repr=False)
    # Nameservers given at registration ("ns1.x,ns2.x"); empty: the registrar's own.
    domain_nameservers: str = ""
    # How long a registrar call may take; a write unanswered by then is ambiguous, and the job
    # asks the registrar whether the domain is ours (up to `domain_recheck_count` times,
    # `domain_recheck_ms` apart) before any retry or failover.
    domain_http_timeout_seconds: float = 30.0
    domain_recheck_count: int = 3
    domain_recheck_ms: int = 2000
    # The sandbox's loopback authoritative DNS server (port 0: any free port; -1: not started).
    sandbox_dns_host: str = "127.0.0.1"
    sandbox_dns_port: int = 0
    # Where dns.verify asks about test-mode domains ("host:port"); empty: this process's
    # sandbox DNS server. Live domains are asked at their own authoritative nameservers.
    dns_verify_nameserver: str = ""
    dns_verify_interval_ms: int = 5000
    dns_verify_timeout_seconds: int = 900
    # Mail on Stalwart (v0.16+, JMAP): the server live-mode mail goes to and the operator's
    # provisioning credential, used only to create a domain and its own administrator; test
    # keys use the sandbox's fake. The setup job waits this long for DNS verification before
    # leaving the rest to GET /v1/email/domains/{domain}; mailboxes' months are charged by a
    # job enqueued this often.
    stalwart_url: str = ""
    stalwart_user: str = ""
    stalwart_password: str = field(default="", repr=False)
    mail_verify_wait_seconds: float = 60.0
    mail_charge_interval_seconds: int = 3600
    # Token buckets (ratelimit.py): requests per second and burst, per key (a key may carry
    # its own) and per tenant; a rate of 0 turns that limit off. With --processes N each
    # process enforces 1/N of them.
    rate_limit_key_per_s: float = 100.0
    rate_limit_key_burst: int = 200
    rate_limit_tenant_per_s: float = 1000.0
    rate_limit_tenant_burst: int = 2000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from the environment; unknown TOOLCALLSTORE_* names are refused."""
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        values: dict[str, object] = {}
        for name, raw in env.items():
            if not name.startswith(PREFIX) or name.startswith(PREFIX + "TEST_"):
                continue
            attr = name[len(PREFIX) :].lower()
            if attr not in known:
                continue
            values[attr] = _coerce(name, raw, type(getattr(cls, attr)))
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """These settings as TOOLCALLSTORE_* variables: `from_env` of them gives them back (how
        `serve --processes N` hands them to the processes it starts)."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    def sandbox_base(self) -> str:
        if self.sandbox_url:
            return self.sandbox_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/sandbox"

    def price_source(self) -> str:
        return self.price_source_url or self.sandbox_base() + "/openrouter/api/v1/models"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def resolved_admin_key_file(self) -> Path:
        """Where the first-start admin key is written: beside the SQLite file, else cwd."""
        if self.admin_key_file:
            return Path(self.admin_key_file)
        if self.is_sqlite:
            db_path = sqlite_path(self.database_url)
            if db_path is not None:
                return db_path.with_name(db_path.name + ".admin-key")
        return Path("toolcallstore.admin-key")

    def resolved_assets_dir(self) -> Path:
        """Where local assets live: TOOLCALLSTORE_ASSETS_DIR, else beside the SQLite file."""
        if self.assets_dir:
            return Path(self.assets_dir)
        if self.is_sqlite:
            db_path = sqlite_path(self.database_url)
            if db_path is not None:
                return db_path.with_name(db_path.name + ".assets")
        return Path("toolcallstore-assets")


def parse_queue_limits(raw: str) -> dict[str, int]:
    limits = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, value = part.partition("=")
        if not name or not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise ConfigError(f"TOOLCALLSTORE_QUEUE_LIMITS entry {part!r} is not queue=N (N >= 1)")
        limits[name] = int(value)
    return limits


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (sqlite:////abs or sqlite:///rel), None for :memory:."""
    rest = url.split("?", 1)[0].removeprefix("sqlite:///")
    if rest in ("", ":memory:") or rest == url:
        return None
    return Path(rest)


def _coerce(name: str, raw: str, kind: type) -> object:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            return lowered in {"1", "true", "yes", "on"}
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    return raw
