"""The media fakes' bytes: real files (Pillow decodes the PNG; the MP4's boxes are well formed and
its frames are PNGs), the same for the same inputs and different otherwise; and their fault
grammar."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from toolcallstore.sandbox.faults import FaultSpecError
from toolcallstore.sandbox.media_bytes import png, video
from toolcallstore.sandbox.media_faults import parse_media_faults


def test_png_decodes_at_full_size_and_is_deterministic() -> None:
    data = png("a lighthouse at dusk", 7, 1024, 768)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.size == (1024, 768)
    assert image.mode == "RGB"
    assert len(set(image.getchannel(0).tobytes())) > 100  # a gradient, not a flat colour
    assert png("a lighthouse at dusk", 7, 1024, 768) == data
    assert png("a lighthouse at dusk", 8, 1024, 768) != data
    assert png("a lighthouse at noon", 7, 1024, 768) != data


def test_png_refuses_an_impossible_size() -> None:
    with pytest.raises(ValueError, match="outside"):
        png("x", 1, 0, 10)


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, bytes]:
    found, at, end = {}, start, len(data) if end is None else end
    while at < end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        assert size >= 8 and at + size <= end, f"box {kind!r} overruns its parent"
        found[kind] = data[at + 8 : at + size]
        at += size
    assert at == end
    return found


def test_video_is_an_mp4_of_png_frames_lasting_the_seconds_asked() -> None:
    data = video("waves", 3, 2.5)
    top = _boxes(data)
    assert list(top) == [b"ftyp", b"mdat", b"moov"]
    assert top[b"ftyp"][:4] == b"isom"
    mvhd = _boxes(top[b"moov"])[b"mvhd"]
    timescale, duration = struct.unpack(">II", mvhd[12:20])
    assert duration / timescale == 2.5
    frames = top[b"mdat"]
    first = Image.open(io.BytesIO(frames))
    first.load()
    assert first.size == (160, 90)
    assert video("waves", 3, 2.5) == data
    assert video("waves", 4, 2.5) != data


def test_media_fault_spec_parses_and_names_a_bad_key() -> None:
    faults = parse_media_faults("status=503,retry_after=2,polls=4,nsfw=1,cut_download=10")
    assert (faults.status, faults.retry_after, faults.polls) == (503, 2.0, 4)
    assert faults.nsfw and faults.cut_download == 10
    with pytest.raises(FaultSpecError, match="'nsfw_level'"):
        parse_media_faults("nsfw_level=3")
    with pytest.raises(FaultSpecError, match="'polls'"):
        parse_media_faults("polls=0")
