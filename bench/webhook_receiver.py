"""A webhook receiver for bench/webhooks.py, in its own process: answers 200 to every POST and
counts distinct `webhook-id`s per path (`GET /stats?path=/queue`)."""

from __future__ import annotations

import sys
from collections import defaultdict

from aiohttp import web

seen: dict[str, set[str]] = defaultdict(set)
posts: dict[str, int] = defaultdict(int)


async def receive(request: web.Request) -> web.Response:
    await request.read()
    seen[request.path].add(request.headers.get("webhook-id", ""))
    posts[request.path] += 1
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    path = request.query["path"]
    return web.json_response({"distinct": len(seen[path]), "posts": posts[path]})


def main() -> None:
    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", receive)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
