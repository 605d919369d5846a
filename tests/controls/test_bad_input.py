"""Bad input to the money endpoints: always a clean 4xx envelope, never a 500, nothing written."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Api
from tests.controls.helpers import make_key

MONEY_POSTS = ["/v1/quotes", "/v1/executions", "/v1/approvals", "/v1/spend_caps"]
TABLES = ("quotes", "approvals", "executions", "holds", "receipts", "ledger_entries")
SCOPES = ["quotes:create", "llm:chat", "domains:register", "receipts:read", "billing:manage"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "tool": st.sampled_from(["sandbox.echo", "sandbox.irreversible", "x"]) | json_values,
        "params": st.fixed_dictionaries({}, optional={"message": json_values,
                                                      "delay_ms": json_values}) | json_values,
        "quote_id": json_values,
        "approval_id": json_values,
        "project_id": json_values,
        "monthly_cap_usd": json_values,
    },
)  # fmt: skip


async def _counts(api: Api) -> list[int]:
    db = api.app.state.services.db  # type: ignore[attr-defined]
    return [await db.fetch_val(f"SELECT COUNT(*) FROM {t}") for t in TABLES]


def _envelope_4xx(r) -> dict:  # type: ignore[no-untyped-def]
    assert 400 <= r.status_code < 500, r.text
    error: dict = r.json()["error"]
    assert {"type", "code", "message", "request_id"} <= error.keys()
    assert "Traceback" not in r.text
    return error


@pytest.mark.parametrize("path", MONEY_POSTS)
async def test_malformed_json_is_400_invalid_json(api: Api, path: str) -> None:
    for raw in (b"{", b"[1]", b"null", b'"s"', b"\xff"):
        headers = {**api.idem(), "Content-Type": "application/json"}
        r = await api.client.post(path, content=raw, headers=headers)
        assert _envelope_4xx(r)["code"] == "invalid_json"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, path=st.sampled_from(MONEY_POSTS))
async def test_random_bodies_never_500_and_a_refusal_writes_nothing(
    api: Api, body: dict, path: str
) -> None:
    agent = getattr(api, "_fuzz_key", None) or await make_key(api, SCOPES, auto_quote_max_usd="0")
    api._fuzz_key = agent  # type: ignore[attr-defined]
    before = await _counts(api)
    r = await api.client.post(path, json=body, headers=api.idem(agent))
    if r.status_code >= 400:
        _envelope_4xx(r)
        if path != "/v1/spend_caps":
            assert await _counts(api) == before
    else:
        assert r.status_code == 200


async def test_ids_with_sql_metacharacters_are_just_unknown_ids(api: Api) -> None:
    agent = await make_key(api, SCOPES + ["approvals:grant"])
    for text in ("'; DROP TABLE holds; --", "q_x' OR '1'='1", "%_\\", "😀"):
        for path in ("/v1/quotes/", "/v1/receipts/", "/v1/executions/", "/v1/approvals/"):
            r = await api.client.get(path + text.replace("%", "%25"), headers=api.auth(agent))
            assert _envelope_4xx(r)["code"] == "not_found"
        r = await api.client.post(
            "/v1/executions", json={"quote_id": text}, headers=api.idem(agent)
        )
        assert _envelope_4xx(r)["code"] == "not_found"
        r = await api.client.get(
            "/v1/receipts", params={"project_id": text}, headers=api.auth(agent)
        )
        assert r.status_code == 200 and r.json()["data"] == []
    assert await _counts(api) == [0] * len(TABLES)
