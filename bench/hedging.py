"""Hedged failover: time to first token with hedging on vs off, in the same run.

A lane of two sandbox targets answering after `--latency-ms`; the first stalls for
`--stall-ms` on every `--every`-th request (10% by default). The same requests go through
three lanes of one `toolcallstore serve`: `healthy` (the second target alone: the baseline),
`unhedged` (both targets, no hedge timer: a stalled call waits), `hedged` (both targets,
`hedge_after_ms`). Prints p50/p99 time to first token of each, the extra provider cost hedging
paid (from the operator's receipts), and the target: p99(hedged) <= hedge_after_ms +
1.2 x p99(healthy).

    python bench/hedging.py [--requests 300] [--concurrency 8] [--hedge-after-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import start_server  # noqa: E402

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"
MESSAGES = [{"role": "user", "content": "hedge me"}]


def models_file(workdir: Path, args: argparse.Namespace) -> Path:
    data = orjson.loads((REPO_CONFIG / "models.json").read_bytes())
    shaping = f"latency_ms={args.latency_ms}"
    stall = f"stall_ms={args.stall_ms},every={args.every},{shaping}"
    providers = {
        # Each lane its own stalling spec string, so each counts its own every-Nth request.
        "stalls-h": f"{stall},words=12",
        "stalls-u": f"{stall},words=13",
        "healthy": shaping,
    }
    for name, spec in providers.items():
        data["providers"][name] = {
            "protocol": "openai", "base_url": "{sandbox}/fault/" + spec + "/openai/v1",
            "api_key_env": "UNUSED", "bills_on_cancel": False, "description": name,
        }  # fmt: skip
        data["models"][f"{name}/m"] = {
            "provider": name, "model": "m", "input_usd_per_mtok": "1",
            "output_usd_per_mtok": "2", "context_tokens": 100000, "max_output_tokens": 1000,
            "supports_tools": True,
        }  # fmt: skip
    policy = {"order": "listed", "max_parallel": 2, "resume_mid_stream": False,
              "first_token_timeout_ms": args.stall_ms * 3}  # fmt: skip
    lanes = {
        "healthy": (["healthy/m"], 0),
        "unhedged": (["stalls-u/m", "healthy/m"], 0),
        "hedged": (["stalls-h/m", "healthy/m"], args.hedge_after_ms),
    }
    for lane, (targets, hedge) in lanes.items():
        data["lanes"][lane] = {"description": lane, "targets": targets,
                               "hedge_after_ms": hedge, **policy}  # fmt: skip
    file = workdir / "models.json"
    file.write_bytes(orjson.dumps(data))
    return file


async def agent_key(client: httpx.AsyncClient, admin: str) -> str:
    r = await client.post(
        "/v1/keys",
        json={"scopes": ["llm:chat"], "auto_quote_max_usd": "1.00"},
        headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": secrets.token_hex(8)},
    )
    r.raise_for_status()
    secret: str = r.json()["secret"]
    return secret


async def first_token_ms(client: httpx.AsyncClient, key: str, lane: str) -> tuple[float, str]:
    body = {"model": lane, "messages": MESSAGES, "max_tokens": 20, "stream": True}
    started = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:  # fmt: skip
        if r.status_code != 200:
            raise SystemExit(f"{lane}: HTTP {r.status_code} {await r.aread()!r}")
        receipt = r.headers["ToolCall-Receipt-Id"]
        async for line in r.aiter_lines():
            if ttft is None and '"content"' in line:
                ttft = (time.perf_counter() - started) * 1000
    assert ttft is not None
    return ttft, receipt


async def run_lane(
    client: httpx.AsyncClient, key: str, lane: str, requests: int, concurrency: int
) -> tuple[list[float], list[str]]:
    times: list[float] = []
    receipts: list[str] = []
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            ttft, receipt = await first_token_ms(client, key, lane)
            times.append(ttft)
            receipts.append(receipt)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times, receipts


async def provider_cost(client: httpx.AsyncClient, admin: str, receipts: list[str]) -> Decimal:
    total = Decimal(0)
    for receipt in receipts:
        r = await client.get(f"/v1/receipts/{receipt}",
                             headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
        total += Decimal(r.json()["provider_cost_usd"])
    return total


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def bench(base_url: str, admin: str, args: argparse.Namespace) -> bool:
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        key = await agent_key(client, admin)
        await run_lane(client, key, "healthy", 20, 4)  # warm up
        results = {}
        for lane in ("healthy", "unhedged", "hedged"):
            times, receipts = await run_lane(client, key, lane, args.requests, args.concurrency)
            cost = await provider_cost(client, admin, receipts)
            results[lane] = (times, cost / len(receipts))
    print(f"{'lane':10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cost/call USD':>14}")
    for lane, (times, cost) in results.items():
        print(f"{lane:10} {pct(times, 50):8.1f} {pct(times, 99):8.1f} {max(times):8.1f}"
              f" {cost:14.8f}")  # fmt: skip
    healthy_p99 = pct(results["healthy"][0], 99)
    hedged_p99 = pct(results["hedged"][0], 99)
    bound = args.hedge_after_ms + 1.2 * healthy_p99
    extra = results["hedged"][1] - results["unhedged"][1]
    print(f"extra provider cost of hedging: {extra:.8f} USD per call"
          f" ({extra / results['unhedged'][1] * 100:.1f}% over unhedged)")  # fmt: skip
    met = hedged_p99 <= bound
    print(f"target p99(hedged) {hedged_p99:.1f} ms <= {args.hedge_after_ms} + 1.2 x"
          f" {healthy_p99:.1f} = {bound:.1f} ms: {'MET' if met else 'MISSED'}")  # fmt: skip
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--hedge-after-ms", type=int, default=300)
    parser.add_argument("--stall-ms", type=int, default=5000)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()
    file = models_file(Path(tempfile.mkdtemp(prefix="tcs-hedging-")), args)
    server = start_server(args.port, TOOLCALLSTORE_MODELS_FILE=str(file),
                          TOOLCALLSTORE_ACCESS_LOG="false")  # fmt: skip
    try:
        met = asyncio.run(bench(server.base_url, server.admin_key, args))
    finally:
        server.stop()
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
