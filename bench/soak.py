"""Soak (issue 22): mixed load against a real server subprocess (the sandbox providers behind it)
for a long time, with kill -9s and restarts, sampling RSS, open fds and p99 over time, then
checking that nothing was lost: every answered receipt exists, receipts = ledger = spend
counters (the reconciliation report is balanced, no hold left open) and the audit chain
verifies.

Load (one thread each, closed loop, small pauses):
  chat      POST /v1/chat/completions stream=true (auto-quoted), read to the end
  execute   POST /v1/quotes + POST /v1/executions (sandbox.echo, billable)
  quote     POST /v1/quotes
  job       a sandbox.irreversible quote, approval, grant by a human key, execution (202),
            then GET /v1/jobs/{id}?wait=5 long-polls until it ends
  read      GET /v1/receipts, GET /v1/me

    flock -s /tmp/bench.lock nice -n 10 python bench/soak.py --minutes 30 --kill-every 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer, start_server  # noqa: E402

PORT = 25230
SAMPLE_SECONDS = 30.0


class Soak:
    def __init__(self, server: BenchServer, env: dict[str, str]) -> None:
        self.server = server
        self.env = env
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)
        self.receipts: set[str] = set()
        self.stop = threading.Event()
        self.restarting = threading.Event()
        self.samples: list[str] = []

    def note(self, kind: str, seconds: float, status: int) -> None:
        with self.lock:
            self.latencies[kind].append(seconds * 1000)
            self.counts[f"{kind}:{status}"] += 1

    # --- the load ---------------------------------------------------------------
    def run_loop(self, kind: str, keys: dict[str, str]) -> None:
        step = getattr(self, f"_{kind}")
        with httpx.Client(base_url=self.server.base_url, timeout=30) as client:
            while not self.stop.is_set():
                if self.restarting.is_set():
                    time.sleep(0.2)
                    continue
                started = time.perf_counter()
                try:
                    status = step(client, keys)
                except (httpx.TransportError, KeyError, ValueError):
                    status = 0  # a kill -9 cut it, or it answered a refusal we do not parse
                self.note(kind, time.perf_counter() - started, status)
                time.sleep(0.02)

    @staticmethod
    def _idem(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}", "Idempotency-Key": secrets.token_hex(8)}

    def _chat(self, client: httpx.Client, keys: dict[str, str]) -> int:
        body = {"model": "cheap", "stream": True, "max_tokens": 40,
                "messages": [{"role": "user", "content": "tell me a story"}]}  # fmt: skip
        headers = {"Authorization": f"Bearer {keys['chat']}"}
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            for _ in r.iter_bytes():
                pass
            receipt = r.headers.get("ToolCall-Receipt-Id")
        if r.status_code == 200 and receipt:
            with self.lock:
                self.receipts.add(receipt)
        return r.status_code

    def _execute(self, client: httpx.Client, keys: dict[str, str]) -> int:
        q = client.post("/v1/quotes", json={"tool": "sandbox.echo", "params": {"message": "s"}},
                        headers=self._idem(keys["agent"]))  # fmt: skip
        if q.status_code != 200:
            return q.status_code
        e = client.post("/v1/executions", json={"quote_id": q.json()["id"]},
                        headers=self._idem(keys["agent"]))  # fmt: skip
        if e.status_code == 200:
            with self.lock:
                self.receipts.add(e.json()["receipt_id"])
        return e.status_code

    def _quote(self, client: httpx.Client, keys: dict[str, str]) -> int:
        body = {"tool": "sandbox.echo", "params": {"message": "q"}}
        return client.post("/v1/quotes", json=body, headers=self._idem(keys["agent"])).status_code

    def _job(self, client: httpx.Client, keys: dict[str, str]) -> int:
        agent = keys["agent"]
        body = {"tool": "sandbox.irreversible", "params": {"action": "buy", "delay_ms": 200}}
        q = client.post("/v1/quotes", json=body, headers=self._idem(agent))
        if q.status_code != 200:
            return q.status_code
        a = client.post("/v1/approvals", json={"quote_id": q.json()["id"]},
                        headers=self._idem(agent))  # fmt: skip
        if a.status_code != 200:
            return a.status_code
        approval = a.json()["id"]
        g = client.post(f"/v1/approvals/{approval}/grant", headers=self._idem(keys["human"]))
        if g.status_code != 200:
            return g.status_code
        e = client.post("/v1/executions", json={"quote_id": q.json()["id"],
                        "approval_id": approval}, headers=self._idem(agent))  # fmt: skip
        if e.status_code != 202:
            return e.status_code
        job_id = e.json()["job_id"]
        auth = {"Authorization": f"Bearer {agent}"}
        for _ in range(20):  # long-polls of up to 5 s each
            j = client.get(f"/v1/jobs/{job_id}?wait=5", headers=auth)
            if j.status_code != 200:
                return j.status_code
            if j.json()["state"] in ("succeeded", "failed", "cancelled", "dead"):
                receipt = client.get(f"/v1/executions/{e.json()['id']}", headers=auth)
                if receipt.status_code == 200 and receipt.json().get("receipt_id"):
                    with self.lock:
                        self.receipts.add(receipt.json()["receipt_id"])
                return 200
        return 599

    def _read(self, client: httpx.Client, keys: dict[str, str]) -> int:
        auth = {"Authorization": f"Bearer {keys['agent']}"}
        client.get("/v1/me", headers=auth)
        return client.get("/v1/receipts?limit=20", headers=auth).status_code

    # --- sampling ----------------------------------------------------------------
    def sample(self, elapsed: float) -> None:
        pid = self.server.process.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss_mb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            rss = f"{rss_mb / 1024:.0f} MB"
            fds = str(len(os.listdir(f"/proc/{pid}/fd")))
        except (OSError, StopIteration):
            rss, fds = "-", "-"
        with self.lock:
            window = {k: sorted(v) for k, v in self.latencies.items()}
            self.latencies.clear()
        p99s = " ".join(
            f"{k} {v[max(0, int(len(v) * 0.99) - 1)]:.0f}ms/{len(v)}"
            for k, v in sorted(window.items())
        )
        line = f"t={elapsed / 60:5.1f} min  rss {rss:>6}  fds {fds:>4}  p99/n: {p99s}"
        print(line, flush=True)
        self.samples.append(line)

    def kill_and_restart(self) -> None:
        # The kill lands among requests in flight: they fail (status 0), and the threads wait.
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.restarting.set()
        self.server.process.wait()
        print("  kill -9; restarting", flush=True)
        log = (self.server.workdir / "server.log").open("ab")
        self.server.process = subprocess.Popen(
            [sys.executable, "-m", "toolcallstore", "serve", "--port", str(PORT)],
            cwd=self.server.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.server.base_url}/readyz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.restarting.clear()


def make_keys(server: BenchServer) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    keys = {}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for name, body in (
            ("agent", {"scopes": ["quotes:create", "llm:chat", "domains:register",
                                  "receipts:read", "jobs:read"]}),
            ("chat", {"scopes": ["llm:chat", "receipts:read"], "auto_quote_max_usd": "0.50"}),
            ("human", {"scopes": ["approvals:grant"]}),
        ):  # fmt: skip
            r = client.post("/v1/keys", json=body,
                            headers={**admin, "Idempotency-Key": secrets.token_hex(8)})  # fmt: skip
            r.raise_for_status()
            keys[name] = r.json()["secret"]
    return keys


async def final_checks(database_url: str, receipts: set[str]) -> list[str]:
    from toolcallstore.audit import AuditWriter, verify_chain
    from toolcallstore.controls.reconciliation import reconcile
    from toolcallstore.controls.spend import period_of
    from toolcallstore.db import Database
    from toolcallstore.ids import now_us

    db = Database(database_url)
    await db.connect()
    problems = []
    try:
        stored = {r["id"] for r in await db.fetch_all("SELECT id FROM receipts")}
        lost = receipts - stored
        print(f"answered receipts {len(receipts)}, stored {len(stored)}, lost {len(lost)}")
        if lost:
            problems.append(f"{len(lost)} answered receipts missing, e.g. {sorted(lost)[:3]}")
        report = await reconcile(db, period_of(now_us()), False)
        print(f"reconciliation: balanced {report['balanced']}, total {report['total']}")
        if not report["balanced"]:
            problems.append(f"reconciliation mismatches: {report['mismatches'][:3]}")
        # A hold a kill left open is released by the sweep once past its expiry (its tool's
        # timeout plus the grace); one not yet expired is still counted in `held`, as it should.
        open_holds = await db.fetch_val("SELECT count(*) FROM holds WHERE state = 'open'")
        overdue = await db.fetch_val(
            "SELECT count(*) FROM holds WHERE state = 'open' AND expires_at < :t",
            {"t": now_us() - 30_000_000},
        )
        print(f"open holds: {open_holds} (past their expiry by 30 s or more: {overdue})")
        if overdue:
            problems.append(f"{overdue} holds left open past their expiry")
        await AuditWriter(db, flush_ms=50, batch_size=100).seal()
        chain = await verify_chain(db)
        print(f"audit chain: ok {chain.ok}, rows {chain.rows_checked}, unsealed {chain.unsealed}")
        if not chain.ok:
            problems.append(f"audit chain broken at {chain.broken_at}: {chain.problem}")
    finally:
        await db.disconnect()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--database-url", default=None, help="default: an SQLite file")
    args = parser.parse_args()
    env = {
        # Crash-orphaned holds are released soon after their tool's timeout.
        "TOOLCALLSTORE_HOLD_GRACE_SECONDS": "5",
        "TOOLCALLSTORE_HOLD_SWEEP_SECONDS": "5",
        "TOOLCALLSTORE_ACCESS_LOG": "false",
        "TOOLCALLSTORE_LOG_LEVEL": "warning",
    }
    server = start_server(PORT, args.database_url, **env)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    full_env.update(env)
    full_env["TOOLCALLSTORE_DATABASE_URL"] = server.database_url
    full_env["TOOLCALLSTORE_ADMIN_KEY_FILE"] = str(server.workdir / "admin-key")
    print(f"soak: {args.minutes:g} min, kill -9 every {args.kill_every:g} s, {server.database_url}")
    soak = Soak(server, full_env)
    keys = make_keys(server)
    kinds = ("chat", "chat", "execute", "execute", "quote", "job", "read")
    threads = [
        threading.Thread(target=soak.run_loop, args=(kind, keys), daemon=True) for kind in kinds
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    next_sample, next_kill, kills = SAMPLE_SECONDS, args.kill_every, 0
    while (elapsed := time.monotonic() - started) < args.minutes * 60:
        time.sleep(1.0)
        if elapsed >= next_sample:
            soak.sample(elapsed)
            next_sample += SAMPLE_SECONDS
        if elapsed >= next_kill and args.minutes * 60 - elapsed > 60:
            soak.kill_and_restart()
            kills += 1
            next_kill += args.kill_every
    soak.stop.set()
    for thread in threads:
        thread.join(60)
    soak.sample(time.monotonic() - started)
    time.sleep(12)  # the sweep releases what the last kill left (grace 5 s, every 5 s)
    server.stop()
    with soak.lock:
        counts = dict(sorted(soak.counts.items()))
    print(f"kills: {kills}; answers by kind:status: {counts}")
    problems = asyncio.run(final_checks(server.database_url, soak.receipts))
    print("NOTHING LOST" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
