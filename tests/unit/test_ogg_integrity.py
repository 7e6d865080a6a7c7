"""verified_opus_duration: intact Ogg Opus files pass with their exact length; any damaged,
missing or extra byte range is caught."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from media.ogg_integrity import DamagedOggFile, ogg_crc, verified_opus_duration
from media.opus_convert import convert_to_opus, decoded_duration_seconds
from testing.archive_factory import ffmpeg_exe, make_speech_mp3


@pytest.fixture(scope="module")
def opus_bytes(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("ogg")
    mp3 = make_speech_mp3(tmp / "s.mp3", "Here are three quick tips for studying before exams, starting with sleep.")
    return convert_to_opus(mp3, tmp / "s.opus", ffmpeg=ffmpeg_exe()).opus_path.read_bytes()


def page_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each page, from the headers' segment tables."""
    spans, offset = [], 0
    while offset < len(data):
        segments = data[offset + 26]
        end = offset + 27 + segments + sum(data[offset + 27 : offset + 27 + segments])
        spans.append((offset, end))
        offset = end
    return spans


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.opus"
    path.write_bytes(data)
    return path


def test_intact_file_gives_the_decoded_duration(tmp_path, opus_bytes):
    path = write(tmp_path, opus_bytes)
    assert verified_opus_duration(path) == pytest.approx(decoded_duration_seconds(path), abs=1e-6)
    assert len(page_spans(opus_bytes)) >= 4  # the damage tests below need several pages


def test_crc_matches_the_one_the_muxer_stored(opus_bytes):
    start, end = page_spans(opus_bytes)[0]
    page = opus_bytes[start:end]
    assert ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) == struct.unpack_from("<I", page, 22)[0]


def test_flipped_byte_fails_the_crc(tmp_path, opus_bytes):
    data = bytearray(opus_bytes)
    start, end = page_spans(opus_bytes)[2]
    data[(start + end) // 2] ^= 0x01
    with pytest.raises(DamagedOggFile, match=f"CRC mismatch in the page at byte {start}"):
        verified_opus_duration(write(tmp_path, bytes(data)))


def test_missing_page_is_detected(tmp_path, opus_bytes):
    start, end = page_spans(opus_bytes)[2]
    with pytest.raises(DamagedOggFile, match="page 2 is missing"):
        verified_opus_duration(write(tmp_path, opus_bytes[:start] + opus_bytes[end:]))


def test_file_cut_inside_a_page_is_detected(tmp_path, opus_bytes):
    with pytest.raises(DamagedOggFile, match="cut short|truncated page header"):
        verified_opus_duration(write(tmp_path, opus_bytes[: len(opus_bytes) * 2 // 3]))


def test_file_cut_between_pages_lacks_end_of_stream(tmp_path, opus_bytes):
    last_start, _ = page_spans(opus_bytes)[-1]
    with pytest.raises(DamagedOggFile, match="no end-of-stream page"):
        verified_opus_duration(write(tmp_path, opus_bytes[:last_start]))


def test_trailing_garbage_is_detected(tmp_path, opus_bytes):
    with pytest.raises(DamagedOggFile, match=f"data after the end-of-stream page, at byte {len(opus_bytes)}"):
        verified_opus_duration(write(tmp_path, opus_bytes + b"junk after the end" * 4))


def test_second_stream_is_rejected(tmp_path, opus_bytes):
    with pytest.raises(DamagedOggFile, match="data after the end-of-stream page"):
        verified_opus_duration(write(tmp_path, opus_bytes + opus_bytes))


@pytest.mark.parametrize("data", [b"", b"not an ogg file at all, just text" * 3], ids=["empty", "text"])
def test_non_ogg_input_is_rejected(tmp_path, data):
    with pytest.raises(DamagedOggFile):
        verified_opus_duration(write(tmp_path, data))
