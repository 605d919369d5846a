"""Assets as files under one directory: written atomically, read by range, served by sendfile.

A put streams into a temporary file beside its destination (same filesystem), fsyncs it,
renames it into place and fsyncs the directory, so a reader sees either nothing or the whole
object, and a crash or a failing stream leaves at most a `.tmp-*` file, never a partial object.
Keys are made by us from ids (`keys.py` checks them); files are 0600 and directories 0700.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread

from toolcallstore.storage.base import StoredObject
from toolcallstore.storage.keys import ObjectDigest, check_key

READ_CHUNK = 256 * 1024
# Chunks are gathered to this size before each write: one thread hop per MiB, not per chunk.
WRITE_BUFFER = 1024 * 1024
TEMP_PREFIX = ".tmp-"


class LocalDiskStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def path_of(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def local_path(self, key: str) -> Path | None:
        return self.path_of(key)

    async def put(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> StoredObject:
        path = self.path_of(key)
        await anyio.to_thread.run_sync(_make_dirs, self.root, path.parent)
        temp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
        fd = await anyio.to_thread.run_sync(_open_new, temp)
        digest = ObjectDigest(content_type)
        try:
            buffer = bytearray()
            async for chunk in chunks:
                digest.update(chunk)
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER:
                    await anyio.to_thread.run_sync(_write_all, fd, bytes(buffer))
                    buffer.clear()
            if buffer:
                await anyio.to_thread.run_sync(_write_all, fd, bytes(buffer))
            closing, fd = fd, -1
            await anyio.to_thread.run_sync(_sync_and_close, closing)
            await anyio.to_thread.run_sync(_move_into_place, temp, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_discard, fd, temp)
            raise
        return digest.stored(key)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        try:
            file = await anyio.open_file(path, "rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            await file.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = await file.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await file.aclose()

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        await anyio.to_thread.run_sync(_unlink, path)


def _make_dirs(root: Path, directory: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    current = root
    for part in directory.relative_to(root).parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir(mode=0o700)


def _open_new(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _discard(fd: int, temp: Path) -> None:
    if fd >= 0:  # -1 once _sync_and_close has closed it
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
