"""A fixed-latency OpenAI-compatible upstream for bench/gateway_overhead.py.

    python bench/gateway_stub.py --port PORT [--latency-ms 20] [--chunk-gap-ms 0] [--chunks 5]

`POST /v1/chat/completions` waits `--latency-ms`, then answers: with `"stream": true` an SSE
body (role chunk, `--chunks` content chunks, finish chunk, usage chunk, `data: [DONE]`; each event
its own HTTP chunk and its own write, `--chunk-gap-ms` apart), else one `chat.completion` JSON
object. Both answers are fixed bytes built at start-up, so the usage is deterministic
(10 prompt + 5 completion tokens, whatever `--chunks`) and a request costs the stub next to
nothing: a raw asyncio protocol on uvloop with httptools' parser, no framework. Keep-alive; no
pipelining.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools
import orjson
import uvloop

PATH = b"/v1/chat/completions"
WORDS = ["Hello", " from", " the", " stub", "."]
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
ID, CREATED, MODEL = "chatcmpl-stub", 1700000000, "stub-model"


def _chunk(choices: list[dict[str, object]], **extra: object) -> bytes:
    event = {"id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
             "choices": choices, **extra}  # fmt: skip
    data = b"data: " + orjson.dumps(event) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _delta(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
STREAM_EVENTS: list[bytes] = []
PLAIN = b""


def build(chunks: int) -> None:
    """The fixed answers, with `chunks` content chunks (the words repeated as needed)."""
    global PLAIN
    words = [WORDS[i % len(WORDS)] for i in range(chunks)]
    STREAM_EVENTS[:] = [
        _chunk([_delta({"role": "assistant", "content": ""})]),
        *(_chunk([_delta({"content": word})]) for word in words),
        _chunk([_delta({}, "stop")]),
        _chunk([], usage=USAGE),
        b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
    ]
    message = {"role": "assistant", "content": "".join(words)}
    completion = orjson.dumps({
        "id": ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": USAGE,
    })  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    PLAIN = head % len(completion) + completion


build(len(WORDS))
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class Stub(asyncio.Protocol):
    latency = 0.02
    gap = 0.0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        if self.url != PATH:
            self._send([NOT_FOUND], keep_alive)
            return
        stream = orjson.loads(b"".join(self.body)).get("stream") is True
        answer = [STREAM_HEAD, *STREAM_EVENTS] if stream else [PLAIN]
        asyncio.get_running_loop().create_task(self._answer(answer, keep_alive))

    async def _answer(self, parts: list[bytes], keep_alive: bool) -> None:
        await asyncio.sleep(self.latency)
        if self.gap and len(parts) > 1:
            for part in parts[:-1]:
                if self.transport is None or self.transport.is_closing():
                    return
                self.transport.write(part)
                await asyncio.sleep(self.gap)
            parts = parts[-1:]
        self._send(parts, keep_alive)

    def _send(self, parts: list[bytes], keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for part in parts:
            self.transport.write(part)
        if not keep_alive:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Stub, "127.0.0.1", port, backlog=1024)
    print(f"stub listening on http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--chunk-gap-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=len(WORDS), help="content chunks")
    args = parser.parse_args()
    build(args.chunks)
    Stub.latency, Stub.gap = args.latency_ms / 1000, args.chunk_gap_ms / 1000
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
