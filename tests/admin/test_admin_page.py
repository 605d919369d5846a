"""/admin in-process: who may sign in, what a session and its CSRF token guard, the queue
buttons acting through the job store, and the audit rows they leave."""

from __future__ import annotations

from collections.abc import Awaitable

import httpx

from tests.admin.helpers import (
    csrf_of,
    db_of,
    execute,
    failing_job,
    new_key,
    operator_tenant,
    refused,
    sign_in,
    wait_for_job,
)
from tests.conftest import Api, running_api
from toolcallstore.admin.session import COOKIE
from toolcallstore.queue.store import NewJob
from toolcallstore.settings import Settings

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_sign_in_sets_a_strict_httponly_cookie_that_holds_no_key(
    ops: tuple[Api, str],
) -> None:
    api, secret = ops
    assert (await api.client.get("/admin")).headers["location"] == "/admin/login"
    form = await api.client.get("/admin/login")
    assert form.status_code == 200 and 'name="key"' in form.text
    assert "'nonce-" in form.headers["content-security-policy"]
    r = await sign_in(api.client, secret)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for part in ("HttpOnly", "SameSite=strict", "Path=/admin", "Max-Age=1800"):
        assert part.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain http here
    assert secret not in cookie and secret[-20:] not in cookie
    page = await api.client.get("/admin")
    assert page.status_code == 200 and "operator status" in page.text
    # Every value on the page is escaped: nothing outside the page's own markup is live.
    assert "<script" not in page.text.split("<script nonce=")[0]


async def test_test_keys_and_keys_without_admin_cannot_sign_in(ops: tuple[Api, str]) -> None:
    api, _ = ops
    db = db_of(api)
    tenant = await operator_tenant(db)
    refused(await sign_in(api.client, api.admin_key), 403, "live_key_required")  # test mode
    test_admin = await new_key(db, tenant, "test", ("admin",))
    r = await sign_in(api.client, test_admin)
    refused(r, 403, "live_key_required")
    assert "set-cookie" not in r.headers
    no_admin = await new_key(db, tenant, "live", ("jobs:read",))
    refused(await sign_in(api.client, no_admin), 403, "insufficient_scope")
    refused(await sign_in(api.client, "tcs_live_" + "x" * 32), 401, "invalid_api_key")
    assert COOKIE not in api.client.cookies
    refused(await api.client.get("/admin/status.json"), 401, "admin_session_required")
    # A browser gets the form again, saying why, with the same status.
    browser = await api.client.post("/admin/login", data={"key": test_admin},
                                    headers={"Accept": "text/html"})  # fmt: skip
    assert browser.status_code == 403 and 'id="refusal"' in browser.text
    assert "Test-mode keys cannot sign in" in browser.text and "set-cookie" not in browser.headers


async def test_posts_need_the_session_and_its_csrf_token(ops: tuple[Api, str]) -> None:
    api, secret = ops
    pool = api.app.state.services.jobs  # type: ignore[attr-defined]
    job, _ = await pool.enqueue(NewJob("sandbox.noop", {}, run_at=2**60, max_attempts=1))
    cancel = f"/admin/jobs/{job.id}/cancel"
    refused(await api.client.post(cancel, data={"csrf": "x"}), 401, "admin_session_required")
    await sign_in(api.client, secret)
    token = csrf_of((await api.client.get("/admin")).text)
    refused(await api.client.post(cancel), 403, "csrf_failed")
    crowded = "&".join(f"f{i}=1" for i in range(20)) + f"&csrf={token}"
    refused(await api.client.post(cancel, content=crowded, headers=FORM), 403, "csrf_failed")
    refused(await api.client.post(cancel, content=b"csrf=\xff\xfe", headers=FORM), 403,
            "csrf_failed")  # fmt: skip
    forged = token[:-1] + ("1" if token.endswith("0") else "0")  # one character changed
    refused(await api.client.post(cancel, data={"csrf": forged}), 403, "csrf_failed")
    # The token of one session is worthless with another session's cookie.
    async with httpx.AsyncClient(transport=api.client._transport,
                                 base_url="http://testserver") as other:  # fmt: skip
        await sign_in(other, secret)
        refused(await other.post(cancel, data={"csrf": "a" * len(token)}), 403, "csrf_failed")
    state = await db_of(api).fetch_val("SELECT state FROM jobs WHERE id = :id", {"id": job.id})
    assert state == "queued"  # nothing refused changed anything
    done = await api.client.post(cancel, data={"csrf": token})
    assert done.status_code == 303 and done.headers["location"] == "/admin?done=cancelled"
    state = await db_of(api).fetch_val("SELECT state FROM jobs WHERE id = :id", {"id": job.id})
    assert state == "cancelled"
    # Sign-out ends the session: the old cookie no longer opens anything.
    cookie = api.client.cookies[COOKIE]
    out = await api.client.post("/admin/logout", data={"csrf": token})
    assert out.status_code == 303 and "max-age=0" in out.headers["set-cookie"].lower()
    assert COOKIE not in api.client.cookies
    stale = await api.client.get("/admin/status.json", headers={"Cookie": f"{COOKIE}={cookie}"})
    refused(stale, 401, "admin_session_required")


async def test_retry_requeues_a_dead_job_which_runs_again_and_is_audited(
    ops: tuple[Api, str],
) -> None:
    api, secret = ops
    db = db_of(api)
    pool = api.app.state.services.jobs  # type: ignore[attr-defined]
    job, _ = await pool.enqueue(failing_job(await operator_tenant(db)))
    await wait_for_job(db, job.id, "failed")
    await sign_in(api.client, secret)
    status = (await api.client.get("/admin/status.json")).json()
    failed = {j["id"]: j for j in status["status"]["queues"]["failed"]}
    assert failed[job.id]["last_error"] == "RuntimeError: failing on purpose (run 1)"
    token = csrf_of(status["html"])
    r = await api.client.post(f"/admin/jobs/{job.id}/retry", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/admin?done=retried"
    done = await wait_for_job(db, job.id, "succeeded")
    assert done["attempts"] == 1  # fresh attempts: it ran exactly once more
    runs = await db.fetch_val("SELECT runs FROM sandbox_effects WHERE job_id = :id", {"id": job.id})
    assert runs == 2
    again = await api.client.post(f"/admin/jobs/{job.id}/retry", data={"csrf": token})
    refused(again, 409, "job_not_retryable")  # a succeeded job is not run a third time
    await api.app.state.services.audit.flush()  # type: ignore[attr-defined]
    rows = await db.fetch_all(
        "SELECT api_key_id, reason, status, decision FROM audit_log WHERE path = :p ORDER BY ts",
        {"p": f"/admin/jobs/{job.id}/retry"},
    )
    key_id = await db.fetch_val("SELECT id FROM api_keys WHERE mode = 'live'")
    assert [(r["reason"], r["status"]) for r in rows] == [
        (f"admin_job_retry:{job.id}", 303), (f"admin_job_retry:{job.id}", 409)]  # fmt: skip
    assert {r["api_key_id"] for r in rows} == {key_id}


async def test_cancel_follows_the_queue_rules(ops: tuple[Api, str]) -> None:
    api, secret = ops
    db = db_of(api)
    pool = api.app.state.services.jobs  # type: ignore[attr-defined]
    running, _ = await pool.enqueue(NewJob("sandbox.sleep", {"ms": 20_000}, max_attempts=1))
    await wait_for_job(db, running.id, "running")
    await sign_in(api.client, secret)
    token = csrf_of((await api.client.get("/admin")).text)
    r = await api.client.post(f"/admin/jobs/{running.id}/cancel", data={"csrf": token})
    assert r.headers["location"] == "/admin?done=cancel_requested"
    await wait_for_job(db, running.id, "cancelled")  # it stopped at its next check
    r = await api.client.post(f"/admin/jobs/{running.id}/cancel", data={"csrf": token})
    refused(r, 409, "job_finished")
    r = await api.client.post("/admin/jobs/job_nothing/retry", data={"csrf": token})
    refused(r, 404, "not_found")


async def test_remote_clients_without_admin_arerefused(settings: Settings) -> None:
    async with running_api(settings, client_addr="203.0.113.7") as remote:
        db = db_of(remote)
        for path in ("/admin", "/admin/login", "/admin/status.json"):
            refused(await remote.client.get(path), 403, "insufficient_scope")
        weak = await new_key(db, await operator_tenant(db), "live", ("jobs:read",))
        r = await remote.client.get("/admin", headers=remote.auth(weak))
        refused(r, 403, "insufficient_scope")
        live_admin = await new_key(db, await operator_tenant(db), "live", ("admin",))
        refused(await sign_in(remote.client, live_admin), 403, "insufficient_scope")
        # With an admin credential (as for /metrics), a remote operator may sign in.
        r = await remote.client.post("/admin/login", data={"key": live_admin},
                                     headers=remote.auth(live_admin))  # fmt: skip
        assert r.status_code == 303
        assert (await remote.client.get("/admin")).status_code == 200  # the session suffices


async def test_the_cookie_is_secure_over_https(settings: Settings) -> None:
    async with running_api(settings) as api:
        db = db_of(api)
        secret = await new_key(db, await operator_tenant(db), "live", ("admin",))
        transport = httpx.ASGITransport(app=api.app, client=("127.0.0.1", 40001))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://ops.test") as https:
            r = await sign_in(https, secret)
            assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


async def test_a_forged_or_extended_cookie_and_a_revoked_key_end_the_session(
    ops: tuple[Api, str],
) -> None:
    api, secret = ops
    await sign_in(api.client, secret)
    cookie = api.client.cookies[COOKIE]
    key_id, expires, nonce, signature = cookie.split(".")
    api.client.cookies.clear()

    def status(value: str) -> Awaitable[httpx.Response]:
        return api.client.get("/admin/status.json", headers={"Cookie": f"{COOKIE}={value}"})

    assert (await status(cookie)).status_code == 200
    longer = f"{key_id}.{int(expires) + 86_400}.{nonce}.{signature}"
    refused(await status(longer), 401, "admin_session_required")
    other = await new_key(db_of(api), await operator_tenant(db_of(api)), "live", ("admin",))
    other_id = await db_of(api).fetch_val("SELECT id FROM api_keys WHERE last4 = :l",
                                          {"l": other[-4:]})  # fmt: skip
    refused(await status(f"{other_id}.{expires}.{nonce}.{signature}"), 401,
            "admin_session_required")  # fmt: skip
    await execute(db_of(api), "UPDATE api_keys SET revoked_at = 1 WHERE id = :id", {"id": key_id})
    refused(await status(cookie), 401, "admin_session_required")
