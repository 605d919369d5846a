"""Deliveries end to end: a real receiver on loopback verifies every one with the
`standardwebhooks` library and with the ToolCall-Signature rule; retries keep the event id and
follow the schedule; 410, Retry-After and the 5-day rule act on the endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import Api, running_api
from tests.webhooks.helpers import (
    FAST,
    Receiver,
    create_endpoint,
    delivery_of,
    event_with_deliveries,
    quote,
    toolcall_signature_valid,
    wait_for,
)
from toolcallstore.db import Database
from toolcallstore.ids import now_us
from toolcallstore.settings import Settings

SECOND = 1_000_000


@pytest.fixture
async def hooks_api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings.with_(**FAST)) as api:
        yield api


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver().start()
    try:
        yield found
    finally:
        await found.stop()


def db_of(api: Api) -> Database:
    db: Database = api.app.state.services.db  # type: ignore[attr-defined]
    return db


async def execute(db: Database, sql: str, values: dict[str, object]) -> list[dict[str, object]]:
    async with db.transaction() as tx:
        return await tx.fetch_all(sql, values)


async def run_due_now(db: Database, job_id: str) -> None:
    """The clock reaches the job's next attempt (instead of the test waiting minutes); the job
    is requeued once the worker has recorded its failed run."""

    async def moved() -> bool:
        sql = "UPDATE jobs SET run_at = :now WHERE id = :id AND state = 'queued' RETURNING id"
        return bool(await execute(db, sql, {"now": now_us(), "id": job_id}))

    await wait_for(moved, what=f"job {job_id} requeued")


async def test_every_delivery_verifies_with_standardwebhooks_and_toolcall_signature(
    hooks_api: Api, receiver: Receiver
) -> None:
    endpoint = await create_endpoint(hooks_api, receiver.url)
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    q = await quote(hooks_api)
    execution = await hooks_api.client.post(
        "/v1/executions", json={"quote_id": q["id"]}, headers=hooks_api.idem()
    )
    assert execution.status_code == 200, execution.text
    await wait_for(lambda: len(receiver.received) >= 3, what="three deliveries")

    listed = (await hooks_api.client.get("/v1/events", headers=hooks_api.auth())).json()
    by_id = {e["id"]: e for e in listed["data"]}
    types = set()
    for delivery in receiver.received:
        payload = Webhook(secret).verify(delivery.body, delivery.headers)
        assert toolcall_signature_valid(secret, delivery.headers, delivery.body)
        assert set(payload) == {"id", "type", "created", "data"}
        assert delivery.headers["webhook-id"] == payload["id"]
        assert by_id[payload["id"]]["data"] == payload["data"]
        types.add(payload["type"])
    assert types == {"quote.created", "execution.succeeded", "receipt.created"}

    # The checks can fail: a changed byte or another secret does not verify.
    first = receiver.received[0]
    tampered = first.body.replace(b'"data"', b'"datA"')
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, first.headers)
    assert not toolcall_signature_valid(secret, first.headers, tampered)
    other = await create_endpoint(hooks_api, receiver.url, ["billing.*"])
    with pytest.raises(WebhookVerificationError):
        Webhook(other["secret"]).verify(first.body, first.headers)


async def test_a_flaky_receiver_gets_the_same_event_on_schedule_until_it_answers_2xx(
    hooks_api: Api, receiver: Receiver
) -> None:
    db = db_of(hooks_api)
    receiver.script = [(500, {}, b"boom"), (502, {}, b""), (500, {}, b"x" * 200_000)]
    await create_endpoint(hooks_api, receiver.url, ["quote.created"])
    await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1, what="first attempt")
    event_id = receiver.ids()[0]
    for attempt, delay_s in enumerate((5, 300, 1800), start=1):
        delivery = await wait_for(
            lambda n=attempt: _at_attempt(db, event_id, n), what=f"attempt {attempt} recorded"
        )
        assert delivery["state"] == "pending"
        wait_s = (delivery["next_attempt_at"] - now_us()) / SECOND
        assert delay_s - 5 < wait_s <= delay_s, (attempt, wait_s)
        await run_due_now(db, delivery["job_id"])
        await wait_for(lambda n=attempt: len(receiver.received) == n + 1, what="next attempt")
    delivery = await wait_for(lambda: _at_attempt(db, event_id, 4), what="success recorded")
    assert delivery["state"] == "succeeded"
    assert receiver.ids() == [event_id] * 4
    bodies = {r.body for r in receiver.received}
    assert len(bodies) == 1  # the same payload every time; only the signature time moves

    shown = await event_with_deliveries(hooks_api, event_id)
    (only,) = shown["deliveries"]
    assert [a["status"] for a in only["attempts"]] == [500, 502, 500, 200]
    assert only["state"] == "succeeded"
    assert len(only["attempts"][2]["response_body"]) <= 1024  # a 200 kB answer was cut


async def _at_attempt(db: Database, event_id: str, attempt: int) -> dict[str, object] | None:
    row = await delivery_of(db, event_id)
    return row if row is not None and row["attempts"] == attempt else None


async def test_410_disables_the_endpoint_and_an_event_says_so(
    hooks_api: Api, receiver: Receiver
) -> None:
    db = db_of(hooks_api)
    receiver.script = [(410, {}, b"gone")]
    endpoint = await create_endpoint(hooks_api, receiver.url, ["quote.*"])
    await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1)
    event_id = receiver.ids()[0]
    delivery = await wait_for(lambda: _at_attempt(db, event_id, 1))
    assert delivery["state"] == "failed"
    shown = await hooks_api.client.get(
        f"/v1/webhook_endpoints/{endpoint['id']}", headers=hooks_api.auth()
    )
    assert shown.json()["status"] == "disabled"
    assert shown.json()["disabled_reason"] == "gone"
    events = await hooks_api.client.get(
        "/v1/events?type=webhook_endpoint.disabled", headers=hooks_api.auth()
    )
    (disabled,) = events.json()["data"]
    assert disabled["data"]["endpoint_id"] == endpoint["id"]
    # Nothing more reaches a disabled endpoint.
    await quote(hooks_api)
    await wait_for(lambda: _dispatched_all(db))
    assert len(receiver.received) == 1


async def _dispatched_all(db: Database) -> bool:
    left = await db.fetch_val("SELECT count(*) FROM events WHERE dispatched_at IS NULL")
    return int(left) == 0


async def test_retry_after_on_429_pushes_the_next_attempt_past_the_schedule(
    hooks_api: Api, receiver: Receiver
) -> None:
    db = db_of(hooks_api)
    receiver.script = [(429, {"Retry-After": "120"}, b"")]
    await create_endpoint(hooks_api, receiver.url)
    await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1)
    delivery = await wait_for(lambda: _at_attempt(db, receiver.ids()[0], 1))
    wait_s = (delivery["next_attempt_at"] - now_us()) / SECOND
    assert 110 < wait_s <= 120  # not the schedule's 5 s

    async def requeued() -> dict[str, object] | None:
        sql = "SELECT run_at FROM jobs WHERE id = :id AND state = 'queued'"
        return await db.fetch_one(sql, {"id": delivery["job_id"]})

    job = await wait_for(requeued, what="the job requeued")
    assert job["run_at"] == delivery["next_attempt_at"]


async def test_an_endpoint_failing_for_five_days_is_disabled(
    hooks_api: Api, receiver: Receiver
) -> None:
    db = db_of(hooks_api)
    receiver.script = [(500, {}, b"")]
    endpoint = await create_endpoint(hooks_api, receiver.url, ["quote.created"])
    five_days_ago = now_us() - 5 * 86_400 * SECOND - SECOND
    await execute(
        db,
        "UPDATE webhook_endpoints SET failing_since = :t WHERE id = :id",
        {"t": five_days_ago, "id": endpoint["id"]},
    )
    await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1)
    delivery = await wait_for(lambda: _at_attempt(db, receiver.ids()[0], 1))
    assert delivery["state"] == "failed"
    shown = (
        await hooks_api.client.get(
            f"/v1/webhook_endpoints/{endpoint['id']}", headers=hooks_api.auth()
        )
    ).json()
    assert (shown["status"], shown["disabled_reason"]) == ("disabled", "failing_for_5_days")
    events = await hooks_api.client.get(
        "/v1/events?type=webhook_endpoint.disabled", headers=hooks_api.auth()
    )
    assert [e["data"]["reason"] for e in events.json()["data"]] == ["failing_for_5_days"]


async def test_a_success_clears_the_failing_clock(hooks_api: Api, receiver: Receiver) -> None:
    db = db_of(hooks_api)
    endpoint = await create_endpoint(hooks_api, receiver.url, ["quote.created"])
    await execute(
        db,
        "UPDATE webhook_endpoints SET failing_since = :t WHERE id = :id",
        {"t": now_us() - 86_400 * SECOND, "id": endpoint["id"]},
    )
    await quote(hooks_api)
    await wait_for(lambda: _at_attempt(db, receiver.ids()[0], 1) if receiver.received else None)
    shown = await hooks_api.client.get(
        f"/v1/webhook_endpoints/{endpoint['id']}", headers=hooks_api.auth()
    )
    assert shown.json()["failing_since"] is None


async def test_redeliver_sends_the_event_again_with_its_id(
    hooks_api: Api, receiver: Receiver
) -> None:
    await create_endpoint(hooks_api, receiver.url, ["quote.created"])
    await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1)
    event_id = receiver.ids()[0]
    response = await hooks_api.client.post(
        f"/v1/events/{event_id}/redeliver", json={}, headers=hooks_api.idem()
    )
    assert response.status_code == 202, response.text
    (delivery_id,) = response.json()["delivery_ids"]
    await wait_for(lambda: len(receiver.received) == 2)
    assert receiver.ids() == [event_id, event_id]
    shown = await event_with_deliveries(hooks_api, event_id)
    assert [d["kind"] for d in shown["deliveries"]] == ["event", "redelivery"]
    assert delivery_id in {d["id"] for d in shown["deliveries"]}
    missing = await hooks_api.client.post(
        "/v1/events/evt_nope/redeliver", json={}, headers=hooks_api.idem()
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_the_test_endpoint_sends_a_signed_test_event_to_that_endpoint_only(
    hooks_api: Api, receiver: Receiver
) -> None:
    other = await Receiver().start()
    try:
        endpoint = await create_endpoint(hooks_api, receiver.url)
        await create_endpoint(hooks_api, other.url)
        response = await hooks_api.client.post(
            f"/v1/webhook_endpoints/{endpoint['id']}/test", json={}, headers=hooks_api.idem()
        )
        assert response.status_code == 202, response.text
        await wait_for(lambda: len(receiver.received) == 1)
        payload = Webhook(endpoint["secret"]).verify(
            receiver.received[0].body, receiver.received[0].headers
        )
        assert payload["type"] == "webhook_endpoint.test"
        assert payload["id"] == response.json()["event_id"]
        assert other.received == []
    finally:
        await other.stop()


async def test_deliveries_carry_the_body_of_the_stored_event(
    hooks_api: Api, receiver: Receiver
) -> None:
    await create_endpoint(hooks_api, receiver.url, ["quote.created"])
    q = await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1)
    payload = orjson.loads(receiver.received[0].body)
    assert payload["data"]["quote_id"] == q["id"]
    assert payload["type"] == "quote.created"


async def test_slow_receivers_get_at_most_half_the_workers(hooks_api: Api) -> None:
    slow = await Receiver(delay_s=0.5).start()
    try:
        await create_endpoint(hooks_api, slow.url, ["quote.created"])
        for i in range(6):
            await quote(hooks_api, f"m{i}")
        await wait_for(lambda: len(slow.received) == 6, timeout=30)
        # The pool has 4 workers: deliveries take at most 2, the rest stay for other jobs.
        assert slow.most_in_flight == 2
    finally:
        await slow.stop()


async def test_a_receiver_that_does_not_answer_in_time_counts_as_a_failure(
    hooks_api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 15 s limit, shortened so the test need not wait for it; the receiver would answer 200
    # after 2 s, too late: the attempt fails and the event is scheduled again.
    from toolcallstore.webhooks import http

    monkeypatch.setattr(http, "TIMEOUT_S", 0.3)
    db = db_of(hooks_api)
    receiver.delay_s = 2.0
    await create_endpoint(hooks_api, receiver.url, ["quote.created"])
    await quote(hooks_api)
    await wait_for(lambda: len(receiver.received) == 1, what="first attempt")
    event_id = receiver.ids()[0]
    delivery = await wait_for(lambda: _at_attempt(db, event_id, 1), what="attempt recorded")
    assert delivery["state"] == "pending"  # another attempt is scheduled
    shown = await event_with_deliveries(hooks_api, event_id)
    (attempt,) = shown["deliveries"][0]["attempts"]
    assert attempt["status"] is None and "no answer within 0.3 s" in attempt["error"]
