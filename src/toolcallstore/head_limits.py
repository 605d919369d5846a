"""Caps on a request's head: one header over `MAX_HEADER_BYTES`, or all of them over
`MAX_HEAD_BYTES`, is refused with 431 in the error envelope.

uvicorn's httptools protocol sets no limit of its own (a 32 MB header was taken whole), so
`HeadLimitProtocol` counts the bytes of a head still being received and answers 431 once they
pass the cap, before more is buffered; `head_refusal` checks each header of a head that
arrived at once, for the ASGI middleware (in-process clients included).
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from toolcallstore.errors import APIError, InvalidRequest
from toolcallstore.ids import new_request_id

MAX_HEADER_BYTES = 16 * 1024
MAX_HEAD_BYTES = 64 * 1024
STATUS = 431


def _too_large(message: str) -> APIError:
    return InvalidRequest(message, code="request_header_too_large", status=STATUS)


def head_refusal(headers: list[tuple[bytes, bytes]]) -> APIError | None:
    """431 if one header, or all of them together, pass the caps."""
    total = 0
    for name, value in headers:
        size = len(name) + len(value)
        if size > MAX_HEADER_BYTES:
            header = name.decode("latin-1")[:100]
            return _too_large(f"The header '{header}' exceeds {MAX_HEADER_BYTES} bytes.")
        total += size
    if total > MAX_HEAD_BYTES:
        return _too_large(f"The request's headers exceed {MAX_HEAD_BYTES} bytes together.")
    return None


class HeadLimitProtocol(HttpToolsProtocol):
    """httptools, with the bytes of a head received over several reads capped."""

    _in_head = False
    _began = False
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._in_head, self._began, self._head_bytes = True, True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        # A read in which a message began may hold the end of the previous one: not counted,
        # so a head is refused at most one read (256 KiB) past the cap, and no body ever is.
        if not self._in_head or self._began or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    def _refuse(self) -> None:
        request_id = new_request_id()
        error = _too_large(f"The request's headers exceed {MAX_HEAD_BYTES} bytes.")
        body = orjson.dumps(error.envelope(request_id))
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"toolcall-request-id: " + request_id.encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
