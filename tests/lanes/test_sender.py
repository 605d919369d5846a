import asyncio

from toolcallstore.lanes.sender import upstream_client


async def test_the_shared_client_never_sends_back_a_cookie_an_upstream_set() -> None:
    # One client carries every tenant's calls: a provider's Set-Cookie from one call must not
    # come back on the next (someone else's) call to the same host.
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=tenant-a; Path=/\r\n"
                         b"Content-Length: 2\r\n\r\nok")  # fmt: skip
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = upstream_client()
    try:
        for _ in range(2):
            response = await client.get(f"http://127.0.0.1:{port}/v1/models")
            assert response.status_code == 200
            assert response.headers["set-cookie"] == "session=tenant-a; Path=/"
    finally:
        await client.aclose()
        server.close()
    assert len(seen) == 2
    assert all(b"cookie:" not in head.lower() for head in seen)
    assert len(client.cookies) == 0
