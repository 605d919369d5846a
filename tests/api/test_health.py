from tests.conftest import Api, running_api
from toolcallstore.settings import Settings


async def test_healthz_and_readyz_answer_without_a_key(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["database"] == "ok"


async def test_readyz_is_503_with_reasons_when_migrations_are_behind(api: Api) -> None:
    db = api.app.state.services.db  # type: ignore[attr-defined]
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM schema_migrations")
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "unavailable" and "migrations" in error["message"]
    assert error["checks"]["migrations"].startswith("at 0")


async def test_readyz_is_503_when_a_background_task_died(api: Api) -> None:
    svc = api.app.state.services  # type: ignore[attr-defined]
    task = svc.tasks["maintenance"]
    task.cancel()
    import asyncio

    # It stops once its current step ends (a busy machine may take more than a loop turn).
    await asyncio.wait({task}, timeout=10)
    r = await api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["checks"]["task:maintenance"] == "stopped"


async def test_metrics_count_requests_by_route_and_status(api: Api) -> None:
    await api.client.get("/v1/me", headers=api.auth())
    await api.client.get("/v1/keys/key_missing", headers=api.auth())
    text = (await api.client.get("/metrics")).text
    assert 'toolcallstore_http_requests_total{method="GET",route="/v1/me",status="200"} 1.0' in text
    assert 'route="/v1/keys/{key_id}",status="404"' in text
    assert "toolcallstore_http_request_duration_seconds_bucket" in text


async def test_metrics_refuse_remote_clients_without_an_admin_key(settings: Settings) -> None:
    async with running_api(settings, client_addr="203.0.113.9") as remote:
        r = await remote.client.get("/metrics")
        assert r.status_code == 403 and r.json()["error"]["required_scope"] == "admin"
        weak = await remote.client.post(
            "/v1/keys", json={"scopes": ["jobs:read"]}, headers=remote.idem()
        )
        r = await remote.client.get("/metrics", headers=remote.auth(weak.json()["secret"]))
        assert r.status_code == 403
        assert (await remote.client.get("/metrics", headers=remote.auth())).status_code == 200
