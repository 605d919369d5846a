"""Issue 22, defect 6: per-key and per-tenant token buckets, 429 `rate_limited` with
Retry-After and the RateLimit-* fields (ratelimit.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import Api, running_api
from toolcallstore.db.keys import ApiKey
from toolcallstore.ratelimit import Limits, RateLimiter
from toolcallstore.settings import Settings


async def make_key(api: Api, secret: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"scopes": ["jobs:read", "keys:manage"], **fields}
    r = await api.client.post("/v1/keys", json=body, headers=api.idem(secret))
    assert r.status_code == 200, r.text
    made: dict[str, Any] = r.json()
    return made


async def me(api: Api, secret: str) -> httpx.Response:
    return await api.client.get("/v1/me", headers=api.auth(secret))


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Api]:
    """Keys may send 5 at once, 1 a second after that; the tenant 8 at once."""
    tight = settings.with_(
        rate_limit_key_per_s=1.0,
        rate_limit_key_burst=5,
        rate_limit_tenant_per_s=1.0,
        rate_limit_tenant_burst=8,
    )
    async with running_api(tight) as api:
        yield api


async def test_a_burst_then_429_with_retry_after_and_ratelimit_fields(api: Api) -> None:
    key = await make_key(api, rate_limit_per_s=0.5, rate_limit_burst=3)
    assert key["rate_limit_per_s"] == 0.5 and key["rate_limit_burst"] == 3
    answers = [await me(api, key["secret"]) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["RateLimit-Limit"] for r in answers] == ["3"] * 4
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
    refused = answers[-1]
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limited"
    assert error["limit_source"] == "key" and error["request_id"]
    # One token back takes 2 s at 0.5/s: the refusal waited 1 s of it (REFUSAL_DELAY_S), so
    # about 1 s is left; the bucket is full again about 5 s later.
    retry = int(refused.headers["Retry-After"])
    assert 1 <= retry <= 2 and error["retry_after_s"] == retry
    assert 4 <= int(refused.headers["RateLimit-Reset"]) <= 6
    await api.app.state.services.audit.flush()  # type: ignore[attr-defined]
    db = api.app.state.services.db  # type: ignore[attr-defined]
    row = await db.fetch_one(
        "SELECT * FROM audit_log WHERE request_id = :r",
        {"r": refused.headers["ToolCall-Request-Id"]},
    )
    assert row["status"] == 429 and row["decision"] == "denied"
    assert row["reason"] == "rate_limited:key" and row["api_key_id"] == key["id"]


async def test_the_bucket_refills_after_retry_after(api: Api) -> None:
    key = await make_key(api, rate_limit_per_s=1, rate_limit_burst=1)
    assert (await me(api, key["secret"])).status_code == 200
    refused = await me(api, key["secret"])
    assert refused.status_code == 429
    await asyncio.sleep(int(refused.headers["Retry-After"]))
    again = await me(api, key["secret"])
    assert again.status_code == 200 and again.headers["RateLimit-Remaining"] == "0"


def test_buckets_refill_at_their_rate_up_to_their_burst() -> None:
    limiter = RateLimiter(Limits(key_per_s=2, key_burst=4, tenant_per_s=0, tenant_burst=0))
    key = _key("key_a", "ten_a")
    taken = [limiter.take(key, now=100.0)[1] for _ in range(5)]
    assert taken == [None, None, None, None, "key"]
    assert limiter.take(key, now=100.5)[1] is None  # 0.5 s at 2/s: one token back
    assert limiter.take(key, now=100.5)[1] == "key"
    # A long pause fills the bucket to its burst, not beyond.
    assert [limiter.take(key, now=200.0)[1] for _ in range(5)] == [None] * 4 + ["key"]


def test_with_several_processes_each_enforces_its_share() -> None:
    limits = Limits(key_per_s=10, key_burst=8, tenant_per_s=0, tenant_burst=0, processes=2)
    limiter = RateLimiter(limits)
    key = _key("key_a", "ten_a")
    taken = [limiter.take(key, now=0.0) for _ in range(5)]
    assert [refused for _, refused in taken] == [None] * 4 + ["key"]
    bucket = taken[0][0]
    assert bucket is not None and bucket.rate == 5 and bucket.burst == 4


async def test_a_key_of_its_own_overrides_the_default(limited: Api) -> None:
    # In a tenant of their own: the tenant's burst of 8 is not the one tested here.
    tenant = await limited.client.post("/v1/tenants", json={"name": "o"}, headers=limited.idem())
    tenant_id = tenant.json()["id"]
    own = await make_key(limited, tenant_id=tenant_id, rate_limit_per_s=100, rate_limit_burst=7)
    own_answers = [(await me(limited, own["secret"])).status_code for _ in range(7)]
    assert own_answers == [200] * 7  # past the default burst of 5
    # (the test above shows an override below the default: 3 where the default is 200)


async def test_one_limited_key_does_not_limit_another(limited: Api, settings: Settings) -> None:
    # Another tenant's keys, so that only the key buckets are in play here.
    tenant = await limited.client.post("/v1/tenants", json={"name": "b"}, headers=limited.idem())
    tenant_id = tenant.json()["id"]
    a = await make_key(limited, tenant_id=tenant_id)
    b = await make_key(limited, tenant_id=tenant_id)
    statuses = [(await me(limited, a["secret"])).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert (await me(limited, a["secret"])).status_code == 429
    answer = await me(limited, b["secret"])
    # b's remaining is the tenant's (8 - 6 taken, plus what refilled while a's refusal waited),
    # nearer to empty than b's own 4.
    assert answer.status_code == 200 and answer.headers["RateLimit-Remaining"] in ("2", "3")


async def test_the_tenant_limit_holds_across_its_keys(limited: Api) -> None:
    tenant = await limited.client.post("/v1/tenants", json={"name": "c"}, headers=limited.idem())
    tenant_id = tenant.json()["id"]
    keys = [await make_key(limited, tenant_id=tenant_id) for _ in range(3)]
    answers = [await me(limited, k["secret"]) for k in keys for _ in range(3)]
    statuses = [r.status_code for r in answers]
    assert statuses == [200] * 8 + [429]  # 3 keys x 3 requests, 8 for the tenant
    error = answers[-1].json()["error"]
    assert error["code"] == "rate_limited" and error["limit_source"] == "tenant"
    other = await make_key(limited)  # the operator's tenant has a bucket of its own
    assert (await me(limited, other["secret"])).status_code == 200


async def test_only_admin_keys_set_a_keys_rate_and_bad_values_are_400(api: Api) -> None:
    manager = await make_key(api)
    r = await api.client.post(
        "/v1/keys",
        json={"scopes": ["jobs:read"], "rate_limit_per_s": 1000},
        headers=api.idem(manager["secret"]),
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "rate_limit_forbidden"
    for bad in ({"rate_limit_per_s": 0}, {"rate_limit_per_s": "fast"},
                {"rate_limit_per_s": True}, {"rate_limit_burst": 0}):  # fmt: skip
        r = await api.client.post(
            "/v1/keys", json={"scopes": ["jobs:read"], **bad}, headers=api.idem()
        )
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == next(iter(bad))


def test_the_cli_sets_a_keys_rate(database_url: str, tmp_path: Any) -> None:
    env = {**os.environ, "TOOLCALLSTORE_DATABASE_URL": database_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "toolcallstore", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip

    tenant = json.loads(cli("tenants", "create", "--name", "acme").stdout)
    made = cli("keys", "create", "--tenant", tenant["id"], "--scopes", "jobs:read",
               "--rate-limit-per-s", "2.5", "--rate-limit-burst", "10")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["rate_limit_per_s"] == 2.5 and key["rate_limit_burst"] == 10
    bad = cli("keys", "create", "--tenant", tenant["id"], "--scopes", "jobs:read",
              "--rate-limit-per-s", "-1")  # fmt: skip
    assert bad.returncode == 2 and "--rate-limit-per-s: 'rate_limit_per_s' must be" in bad.stderr


def _key(key_id: str, tenant_id: str, **fields: Any) -> ApiKey:
    return ApiKey(id=key_id, tenant_id=tenant_id, project_id=None, name="", mode="test",
                  scopes=(), last4="xxxx", auto_quote_max_micros=None, created_by_key_id=None,
                  created_at=0, revoked_at=None, **fields)  # fmt: skip
