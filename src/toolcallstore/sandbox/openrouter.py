"""A fake of OpenRouter's price list, `GET /api/v1/models`, serving a stored snapshot
(`data/openrouter_models.json`) in OpenRouter's own format: USD per token as decimal strings.

The snapshot lists every `openrouter` target of config/models.json under the same ids, plus a
few others: a free model (`"0"`) and the auto router, whose price OpenRouter gives as `"-1"`.
Gemini 3.8 Flash is priced below config/models.json on purpose, so a quote shows which source
it used.

Under `/fault/{spec}/...` the `status` fault (with `latency_ms`, `retry_after`, `fail_first`)
answers an OpenRouter error instead, and `malformed_at` (any value) cuts the body in half.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from toolcallstore.sandbox.endpoint import SandboxState, json_response
from toolcallstore.sandbox.faults import FaultSpecError, parse_faults

SNAPSHOT = Path(__file__).parent / "data" / "openrouter_models.json"


class OpenRouterModels:
    def __init__(self, state: SandboxState, snapshot: Path = SNAPSHOT) -> None:
        self.state = state
        self.body = snapshot.read_bytes()

    async def handle(self, request: Request) -> Response:
        spec = request.path_params.get("spec", "")
        try:
            faults = parse_faults(spec)
        except FaultSpecError as exc:
            return _error(400, str(exc))
        faults = self.state.fail_first.admit(spec, faults)
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.error_status is not None:
            headers = {}
            if faults.retry_after is not None:
                headers["retry-after"] = f"{faults.retry_after:g}"
            return _error(
                faults.error_status, f"Sandbox fault: HTTP {faults.error_status}.", headers
            )
        body = self.body if faults.malformed_at is None else self.body[: len(self.body) // 2]
        return Response(body, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    # OpenRouter's error envelope carries the status as a number in `code`.
    return json_response({"error": {"code": status, "message": message}}, status, headers)
