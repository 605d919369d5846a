"""The public files served by the app itself, without auth, at the paths Caddy serves them from
public/ (so a store started without Caddy can be discovered the same way). Built from the
running app on first request, so they always describe the code and config it runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from starlette.types import ASGIApp, Receive, Scope, Send

from toolcallstore.site.build import CONTENT_TYPES, PUBLIC_FILES

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"public, max-age=300"),
]


def request_paths() -> dict[str, str]:
    """Request path -> public file: /name, and /dir/ and /dir for dir/index.html."""
    paths = {"/" + name: name for name in PUBLIC_FILES}
    for name in PUBLIC_FILES:
        if name.endswith("index.html"):
            folder = "/" + name.removesuffix("index.html")
            paths[folder] = paths[folder.rstrip("/") or "/"] = name
    return paths


class PublicFiles:
    """Pure ASGI: GET/HEAD of a public file is answered here; anything else goes on."""

    def __init__(self, app: ASGIApp, build: Callable[[], dict[str, bytes]]) -> None:
        self.app = app
        self._build = build
        self._files: dict[str, bytes] | None = None
        self._paths = request_paths()

    def files(self) -> dict[str, bytes]:
        if self._files is None:
            self._files = self._build()
        return self._files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        name = self._paths.get(scope["path"])  # one lookup: this runs for every request
        if name is None:  # the API's (a 404 there), never a reason to build
            await self.app(scope, receive, send)
            return
        content = self.files()[name]
        media = CONTENT_TYPES[PurePosixPath(name).suffix]
        headers = [
            (b"content-type", media.encode()),
            (b"content-length", str(len(content)).encode()),
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else content
        await send({"type": "http.response.body", "body": body})
