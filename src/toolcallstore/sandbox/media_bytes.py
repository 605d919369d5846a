"""The media fakes' outputs: real, valid files, the same bytes for the same (prompt, seed, size).

`png` draws a full-size RGB colour gradient whose colours come from a hash of the inputs. Each
row is the first row shifted by a per-row offset (`bytes.translate`), so a 1024x1024 image costs
a few milliseconds, most of it zlib.

`video` is an MP4 (ISO BMFF, brand `isom`) with one video track whose samples are PNG frames
(the QuickTime `png ` codec), one frame a second, lasting `seconds`. ffmpeg and Pillow-free
parsers read it; browsers, which want H.264, may not play it: it is a placeholder that a client
can store, serve with `video/mp4` and check the length of, not a film.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

MAX_SIDE = 8192
MAX_SECONDS = 600.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIMESCALE = 1000  # the video's time unit: milliseconds


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A width x height RGB PNG, deterministic per (prompt, seed, width, height)."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"image size {width}x{height} is outside 1..{MAX_SIDE}")
    h = _digest(prompt, seed, width, height)
    base, span = h[0:3], h[3:6]
    # One row: each channel runs from its base colour across `span` levels, left to right.
    first = bytearray(width * 3)
    for x in range(width):
        for c in range(3):
            first[3 * x + c] = (base[c] + (span[c] * x) // width) & 0xFF
    row = b"\x00" + bytes(first)  # filter type 0 (None) before each row
    vertical = h[6] | 1
    raw = bytearray()
    for y in range(height):
        shift = (vertical * y) // height
        table = bytes((v + shift) & 0xFF for v in range(256)) if shift else None
        raw += row.translate(table) if table else row
        if table:
            raw[-3 * width - 1] = 0  # translate shifted the filter byte too
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    text = b"Software\x00toolcallstore sandbox " + h[:8].hex().encode()
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", text)
        + _chunk(b"IDAT", zlib.compress(bytes(raw), 1))
        + _chunk(b"IEND", b"")
    )


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full(kind: bytes, version_flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", version_flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def video(prompt: str, seed: int, seconds: float, width: int = 160, height: int = 90) -> bytes:
    """An MP4 of PNG frames, one a second, `seconds` long, deterministic per its arguments."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"video length {seconds} s is outside (0, {MAX_SECONDS}]")
    duration = max(1, round(seconds * _TIMESCALE))
    count = max(1, math.ceil(duration / _TIMESCALE))
    frames = [png(f"{prompt}\x00frame {i}", seed, width, height) for i in range(count)]
    deltas = [_TIMESCALE] * (count - 1) + [duration - _TIMESCALE * (count - 1)]

    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2mp41")
    mdat = _box(b"mdat", *frames)
    first_offset = len(ftyp) + 8
    mvhd = _full(
        b"mvhd", 0, struct.pack(">IIII", 0, 0, _TIMESCALE, duration),
        struct.pack(">IH", 0x10000, 0x100), bytes(10), _MATRIX, bytes(24), struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = _full(
        b"tkhd", 3, struct.pack(">IIIII", 0, 0, 1, 0, duration), bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX, struct.pack(">II", width << 16, height << 16),
    )  # fmt: skip
    mdhd = _full(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, _TIMESCALE, duration, 0x55C4, 0))
    hdlr = _full(b"hdlr", 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
    entry = _box(
        b"png ", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", width, height),
        struct.pack(">III", 0x480000, 0x480000, 0), struct.pack(">H", 1), bytes(32),
        struct.pack(">Hh", 24, -1),
    )  # fmt: skip
    stts = _full(b"stts", 0, struct.pack(">I", len(deltas)),
                 *(struct.pack(">II", 1, d) for d in deltas))  # fmt: skip
    sizes = (struct.pack(">I", len(f)) for f in frames)
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, struct.pack(">I", 1), entry),
        stts,
        _full(b"stsc", 0, struct.pack(">IIII", 1, 1, count, 1)),
        _full(b"stsz", 0, struct.pack(">II", 0, count), *sizes),
        _full(b"stco", 0, struct.pack(">II", 1, first_offset)),
    )
    dinf = _box(b"dinf", _full(b"dref", 0, struct.pack(">I", 1), _full(b"url ", 1)))
    minf = _box(b"minf", _full(b"vmhd", 1, bytes(8)), dinf, stbl)
    moov = _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))
    return ftyp + mdat + moov
