"""schemathesis over the served openapi.json against a running `toolcallstore serve` with an
admin test key: no server errors, no answer the description does not document. The same run
over a description missing one documented answer fails, so the check can fail."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import Server, free_port, start_server, stop_server

# A few minutes at most in CI: the fuzzing and stateful phases share this budget.
SECONDS = os.environ.get("TOOLCALLSTORE_SCHEMATHESIS_SECONDS", "45")
MASTER = "k1:" + base64.b64encode(b"schemathesis-master-key-32bytes!").decode()
# What an answer is checked for. positive_data_acceptance and negative_data_rejection judge
# the request schemas' precision (e.g. a 'period' only the server knows is YYYY-MM), not the
# answers; a self-revocation would leave the run keyless, so revoke is left to its own tests.
EXCLUDED_CHECKS = "positive_data_acceptance,negative_data_rejection"
REVOKE = "/v1/keys/{key_id}/revoke"


def schemathesis(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """The CLI, run in `cwd` (where it keeps its example database)."""
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary is not None, "schemathesis is a test dependency (pip install -e '.[test]')"
    return subprocess.run([binary, *args, "--no-color", "--seed", "18"], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)  # fmt: skip


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Server]:
    # Billing on, against the server's own Stripe fake, so checkout runs rather than being 503.
    port = free_port()
    stripe_fake = f"http://127.0.0.1:{port}/sandbox/stripe"
    server = start_server(database_url, tmp_path, port, TOOLCALLSTORE_MASTER_KEY=MASTER,
                          TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0",
                          TOOLCALLSTORE_ACCESS_LOG="false",
                          TOOLCALLSTORE_STRIPE_API_KEY="sk_test_sandbox",
                          TOOLCALLSTORE_STRIPE_API_BASE=stripe_fake)  # fmt: skip
    try:
        yield server
    finally:
        stop_server(server)


@pytest.mark.timeout(600)
def test_every_answer_is_documented_and_none_is_a_server_error(
    served: Server, tmp_path: Path
) -> None:
    common = (
        "run",
        f"{served.base_url}/openapi.json",
        "-H",
        f"Authorization: Bearer {served.admin_key}",
        "--checks",
        "all",
        "--exclude-checks",
        EXCLUDED_CHECKS,
        "--exclude-path",
        REVOKE,
    )
    # The coverage phase (boundary values of every parameter) runs on one worker: with two,
    # Hypothesis' lambda introspection crashes inside it on CPython 3.11 (a tool error).
    coverage = schemathesis(
        *common, "--phases", "coverage", "--workers", "1", cwd=tmp_path, timeout=240
    )
    assert coverage.returncode == 0, coverage.stdout[-6000:] + coverage.stderr[-2000:]
    done = schemathesis(
        *common,
        "--phases",
        "examples,fuzzing,stateful",
        "--workers",
        "2",
        "--max-examples",
        "25",
        "--max-time",
        SECONDS,
        cwd=tmp_path,
        timeout=float(SECONDS) * 4 + 60,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Tested: 65" in done.stdout  # every operation but revoke was exercised
    me = httpx.get(f"{served.base_url}/v1/me", timeout=5,
                   headers={"Authorization": f"Bearer {served.admin_key}"})  # fmt: skip
    assert me.status_code == 200  # the key stayed valid: the run was authenticated throughout


@pytest.mark.timeout(300)
def test_an_undocumented_answer_is_found(served: Server, tmp_path: Path) -> None:
    spec = orjson.loads(httpx.get(f"{served.base_url}/openapi.json", timeout=5).content)
    operation = spec["paths"]["/v1/quotes/{quote_id}"]["get"]
    del operation["responses"]["404"]  # the route still answers 404 for an unknown quote
    doctored = tmp_path / "openapi.json"
    doctored.write_bytes(orjson.dumps(spec))
    done = schemathesis(
        "run", str(doctored), "--url", served.base_url,
        "-H", f"Authorization: Bearer {served.admin_key}",
        "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
        "--include-path", "/v1/quotes/{quote_id}", "--include-method", "GET",
        "--phases", "fuzzing", "--max-examples", "20",
        cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout[-4000:]
    assert "Undocumented status code" in done.stdout
    assert "Received: 404" in done.stdout
