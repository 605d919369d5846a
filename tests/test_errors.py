"""A sweep of bad input: every answer is a clean 4xx envelope and nothing is written."""

import pytest

from tests.conftest import Api

SQL_METACHARACTERS = [
    "'; DROP TABLE api_keys; --",
    '" OR "1"="1',
    "ten_x' OR '1'='1",
    "%_\\",
    "1; SELECT pg_sleep(5)",
    "$1 :name ? ::text",
    "😀 ünïcödé",
]
POST_ENDPOINTS = ["/v1/keys", "/v1/tenants", "/v1/projects"]


async def _counts(api: Api) -> tuple[int, int, int]:
    db = api.app.state.services.db  # type: ignore[attr-defined]
    return (
        await db.fetch_val("SELECT count(*) FROM tenants"),
        await db.fetch_val("SELECT count(*) FROM projects"),
        await db.fetch_val("SELECT count(*) FROM api_keys"),
    )


def _assert_envelope(r, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) >= {"type", "code", "message", "request_id"}
    assert error["request_id"] == r.headers["ToolCall-Request-Id"]
    assert "Traceback" not in r.text
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("path", POST_ENDPOINTS)
async def test_malformed_and_non_object_json_is_400(api: Api, path: str) -> None:
    before = await _counts(api)
    for raw in (
        b"{",
        b'{"name": }',
        b"\xff\xfe\x00",
        b'{"name": "\xed\xa0\x80"}',
        b"[1, 2]",
        b'"just a string"',
        b"null",
        b"[" * 5000 + b"]" * 5000,
    ):
        headers = {**api.idem(), "Content-Type": "application/json"}
        r = await api.client.post(path, content=raw, headers=headers)
        _assert_envelope(r, 400, "invalid_json")
    assert await _counts(api) == before


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/keys", {"scopes": "admin"}, "scopes"),
        ("/v1/keys", {"scopes": [1]}, "scopes[0]"),
        ("/v1/keys", {"scopes": ["root"]}, "scopes[0]"),
        ("/v1/keys", {}, "scopes"),
        ("/v1/keys", {"scopes": ["jobs:read"], "mode": "prod"}, "mode"),
        ("/v1/keys", {"scopes": ["jobs:read"], "name": 7}, "name"),
        ("/v1/keys", {"scopes": ["jobs:read"], "name": ""}, "name"),
        ("/v1/keys", {"scopes": ["jobs:read"], "name": "x" * 201}, "name"),
        ("/v1/keys", {"scopes": ["jobs:read"], "name": "a\u0000b"}, "name"),
        ("/v1/keys", {"scopes": ["jobs:read"], "auto_quote_max_usd": "abc"}, "auto_quote_max_usd"),
        ("/v1/keys", {"scopes": ["jobs:read"], "auto_quote_max_usd": "-1"}, "auto_quote_max_usd"),
        (
            "/v1/keys",
            {"scopes": ["jobs:read"], "auto_quote_max_usd": "0.0000001"},
            "auto_quote_max_usd",
        ),
        ("/v1/keys", {"scopes": ["jobs:read"], "auto_quote_max_usd": True}, "auto_quote_max_usd"),
        ("/v1/keys", {"scopes": ["jobs:read"], "auto_quote_max_usd": "NaN"}, "auto_quote_max_usd"),
        ("/v1/keys", {"scopes": ["jobs:read"], "admin": True}, "admin"),
        ("/v1/tenants", {"name": ["a"]}, "name"),
        ("/v1/tenants", {"name": 123456789012345678901234567890}, "name"),
        ("/v1/tenants", {"name": "a", "id": "ten_mine"}, "id"),
        ("/v1/projects", {"name": {"x": 1}}, "name"),
        ("/v1/projects", {"name": "p", "tenant_id": 5}, "tenant_id"),
    ],
)
async def test_wrong_types_and_unknown_fields_are_400_naming_the_field(
    api: Api, path: str, body: dict, param: str
) -> None:
    before = await _counts(api)
    r = await api.client.post(path, json=body, headers=api.idem())
    error = _assert_envelope(r, 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert await _counts(api) == before


async def test_sql_metacharacters_are_data_in_every_string_field(api: Api) -> None:
    for text in SQL_METACHARACTERS:
        tenant = await api.client.post("/v1/tenants", json={"name": text}, headers=api.idem())
        assert tenant.status_code == 200 and tenant.json()["name"] == text
        project = await api.client.post("/v1/projects", json={"name": text}, headers=api.idem())
        assert project.status_code == 200 and project.json()["name"] == text
        key = await api.client.post(
            "/v1/keys", json={"scopes": ["jobs:read"], "name": text}, headers=api.idem()
        )
        assert key.status_code == 200 and key.json()["name"] == text
        for body in (
            {"scopes": ["jobs:read"], "project_id": text},
            {"name": "p", "tenant_id": text},
        ):
            path = "/v1/keys" if "scopes" in body else "/v1/projects"
            _assert_envelope(await api.client.post(path, json=body, headers=api.idem()), 404)
        for path in (f"/v1/keys/{text}", f"/v1/tenants/{text}", f"/v1/projects/{text}"):
            r = await api.client.get(
                path.replace("%", "%25").replace("?", "%3F"), headers=api.auth()
            )
            assert r.status_code in (404, 400) and "error" in r.json()
        r = await api.client.get("/v1/keys", params={"starting_after": text}, headers=api.auth())
        assert r.status_code == 200 and isinstance(r.json()["data"], list)
        headers = {**api.auth(), "Idempotency-Key": text.encode()}
        r = await api.client.post("/v1/tenants", json={"name": "x"}, headers=headers)
        if text.isascii():
            assert r.status_code == 200
        else:  # header bytes outside ASCII are not a usable key
            _assert_envelope(r, 400, "idempotency_key_invalid")
    tenants, projects, keys = await _counts(api)
    ascii_keys = sum(t.isascii() for t in SQL_METACHARACTERS)
    assert tenants == 1 + len(SQL_METACHARACTERS) + ascii_keys
    assert projects == len(SQL_METACHARACTERS) and keys == 1 + len(SQL_METACHARACTERS)


async def test_oversized_bodies_are_413_whether_announced_or_streamed(api: Api) -> None:
    before = await _counts(api)
    limit = api.app.state.services.settings.max_body_bytes  # type: ignore[attr-defined]
    big = b'{"name": "' + b"x" * limit + b'"}'
    r = await api.client.post("/v1/tenants", content=big, headers=api.idem())
    _assert_envelope(r, 413, "request_too_large")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = await api.client.post("/v1/tenants", content=chunks(), headers=api.idem())
    _assert_envelope(r, 413, "request_too_large")
    assert await _counts(api) == before


async def test_unknown_routes_and_methods_get_the_envelope(api: Api) -> None:
    _assert_envelope(await api.client.get("/v1/nope", headers=api.auth()), 404, "not_found")
    r = await api.client.delete("/v1/keys", headers=api.auth())
    _assert_envelope(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]
    _assert_envelope(await api.client.get("/nope"), 401, "unauthenticated")


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=abc", "limit=-1", "bogus=1", "limit=1e3",
     "limit=%C2%B2", "limit=%D9%A3"],  # '²' and Arabic-Indic '٣': isdigit() but not 0-9
)  # fmt: skip
async def test_bad_list_parameters_are_400(api: Api, query: str) -> None:
    r = await api.client.get(f"/v1/keys?{query}", headers=api.auth())
    _assert_envelope(r, 400)


@pytest.mark.parametrize("query", ["from=%C2%B2", "to=%C2%B9", "from=%D9%A3", "limit=%C2%B2"])
async def test_non_ascii_digits_in_receipt_filters_are_400(api: Api, query: str) -> None:
    r = await api.client.get(f"/v1/receipts?{query}", headers=api.auth())
    _assert_envelope(r, 400)


async def test_every_response_carries_a_request_id(api: Api) -> None:
    responses = [
        await api.client.get("/healthz"),
        await api.client.get("/readyz"),
        await api.client.get("/v1/me", headers=api.auth()),
        await api.client.get("/v1/me"),
        await api.client.get("/metrics"),
    ]
    ids = [r.headers["ToolCall-Request-Id"] for r in responses]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "path", ["/v1/quotes/q_%00x", "/v1/executions/exe_%00x", "/v1/receipts/rcpt_%00x"]
)
async def test_a_nul_in_an_id_is_404(api: Api, path: str) -> None:
    # Postgres text cannot hold a NUL: passed on to a query, it was a 500 there.
    _assert_envelope(await api.client.get(path, headers=api.auth()), 404, "not_found")


async def test_a_nul_in_a_query_or_a_body_id_is_400_naming_it(api: Api) -> None:
    r = await api.client.get("/v1/receipts?project_id=proj_%00x", headers=api.auth())
    assert _assert_envelope(r, 400)["param"] == "project_id"
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "quote_id": "q_\0x"}
    r = await api.client.post("/v1/chat/completions", json=body, headers=api.auth())
    assert _assert_envelope(r, 400)["param"] == "quote_id"


async def test_a_nul_in_a_path_is_audited_and_the_audit_log_goes_on(api: Api) -> None:
    # The refused request's audit row reaches audit_log (its NUL replaced), and so do the rows
    # after it: a row Postgres refused used to be retried forever, holding back every other.
    db = api.app.state.services.db  # type: ignore[attr-defined]
    audit = api.app.state.services.audit  # type: ignore[attr-defined]
    refused = await api.client.get("/v1/nothing%00here", headers=api.auth())
    _assert_envelope(refused, 404)
    after = await api.client.get("/v1/me", headers=api.auth())
    assert after.status_code == 200
    await audit.flush()
    rows = await db.fetch_all(
        "SELECT request_id, path, status FROM audit_log WHERE request_id IN (:a, :b)",
        {"a": refused.headers["ToolCall-Request-Id"], "b": after.headers["ToolCall-Request-Id"]},
    )
    assert {(r["path"], r["status"]) for r in rows} == {
        ("/v1/nothing\ufffdhere", 404),
        ("/v1/me", 200),
    }
