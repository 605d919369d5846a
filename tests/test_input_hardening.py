"""Issue 22's smaller holes: input the README promises to refuse, and a probe across modes."""

from __future__ import annotations

import socket

import httpx
import orjson

from tests.conftest import Api, Server
from tests.controls.helpers import make_key, quote
from toolcallstore.db.keys import insert_key


async def _key_count(api: Api) -> int:
    db = api.app.state.services.db  # type: ignore[attr-defined]
    count: int = await db.fetch_val("SELECT count(*) FROM api_keys")
    return count


async def test_a_non_ascii_idempotency_key_is_400_and_nothing_is_made(api: Api) -> None:
    before = await _key_count(api)
    for raw in ("clé-1".encode(), "ключ".encode(), "naïve".encode("latin-1")):
        headers = {**api.auth(), "Idempotency-Key": raw}
        r = await api.client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "idempotency_key_invalid"
    assert await _key_count(api) == before


async def test_a_key_of_the_other_mode_probing_a_decided_approval_gets_404(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "domains:register"])
    human = await make_key(api, ["approvals:grant"])
    q = (await quote(api, agent, "sandbox.irreversible", {"action": "buy"})).json()
    made = await api.client.post(
        "/v1/approvals", json={"quote_id": q["id"]}, headers=api.idem(agent)
    )
    approval_id = made.json()["id"]
    granted = await api.client.post(f"/v1/approvals/{approval_id}/grant", headers=api.auth(human))
    assert granted.status_code == 200
    db = api.app.state.services.db  # type: ignore[attr-defined]
    tenant_id = await db.fetch_val("SELECT tenant_id FROM api_keys LIMIT 1")
    async with db.transaction() as tx:
        _, other_mode = await insert_key(tx, tenant_id=tenant_id, project_id=None, name="live",
                                         mode="live", scopes=("approvals:grant",))  # fmt: skip
    for verb in ("grant", "deny"):
        r = await api.client.post(
            f"/v1/approvals/{approval_id}/{verb}", headers=api.auth(other_mode)
        )
        assert r.status_code == 404, r.text  # not 409: its state stays unknown
        assert r.json()["error"]["code"] == "not_found"
    shown = await api.client.get(f"/v1/approvals/{approval_id}", headers=api.auth(other_mode))
    assert shown.status_code == 404


async def test_an_empty_reconciliation_or_usage_period_is_400(api: Api) -> None:
    for path in ("/v1/admin/reconciliation?period=&livemode=false", "/v1/usage?period="):
        r = await api.client.get(path, headers=api.auth())
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["param"] == "period"


async def test_a_duplicated_json_key_is_400_invalid_json(api: Api) -> None:
    bodies = {
        "/v1/keys": b'{"scopes": ["jobs:read"], "scopes": ["keys:manage"]}',
        "/v1/quotes": b'{"tool": "sandbox.echo", "params": {"message": "a", "message": "b"}}',
    }
    before = await _key_count(api)
    for path, body in bodies.items():
        headers = {**api.idem(), "Content-Type": "application/json"}
        r = await api.client.post(path, content=body, headers=headers)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_json" and "repeats the key" in error["message"]
    assert await _key_count(api) == before
    fine = await api.client.post(
        "/v1/quotes",
        content=b'{"tool": "sandbox.echo", "params": {"message": "a"}}',
        headers=api.idem(),
    )
    assert fine.status_code == 200, fine.text


async def test_oversized_headers_are_431_in_the_envelope(api: Api) -> None:
    one_big = {**api.auth(), "X-Big": "a" * 20_000}
    many = {**api.auth(), **{f"X-Part-{i}": "b" * 2_000 for i in range(40)}}
    for headers in (one_big, many):
        r = await api.client.get("/v1/me", headers=headers)
        assert r.status_code == 431, r.text
        assert r.json()["error"]["code"] == "request_header_too_large"
        assert r.headers["toolcall-request-id"] == r.json()["error"]["request_id"]
    fine = await api.client.get("/v1/me", headers={**api.auth(), "X-Ok": "c" * 8_000})
    assert fine.status_code == 200


def _raw_exchange(server: Server, head: bytes, chunks: int) -> bytes:
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        step = len(head) // chunks + 1
        try:
            for start in range(0, len(head), step):
                sock.sendall(head[start : start + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer is already waiting
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_huge_header_to_the_real_server_is_refused_before_its_end(server: Server) -> None:
    # Never finished: the server must answer on the bytes so far, not wait for the end.
    huge = b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 8_000_000
    answer = _raw_exchange(server, huge, chunks=200)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431"), answer[:300]
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_header_too_large"
    big_at_once = {"Authorization": f"Bearer {server.admin_key}", "X-Big": "a" * 30_000}
    r = httpx.get(f"{server.base_url}/v1/me", headers=big_at_once)
    assert r.status_code == 431 and r.json()["error"]["code"] == "request_header_too_large"
    # Bodies are not heads: a large body in few reads is still read, and refused only for size.
    body_bytes = orjson.dumps({"name": "x" * 900_000, "scopes": ["jobs:read"]})
    headers = {"Authorization": f"Bearer {server.admin_key}", "Idempotency-Key": "big-body"}
    r = httpx.post(f"{server.base_url}/v1/keys", content=body_bytes, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
