"""Build real test inputs, good and bad: MP3s, parquet files and tar archives.

One place for every kind of hostile archive, so tests of bad input stay a few lines long:

    build_tar(tmp_path / "a.tar.gz", [
        RegularEntry("clips/a.mp3", source=make_tone_mp3(tmp_path / "a.mp3")),
        SymlinkEntry("evil.mp3", "/etc/passwd"),
        RegularEntry(b"caf\\xe9.mp3", b"..."),  # a name that is not UTF-8
    ], gzip=True)

Audio is made by the bundled imageio-ffmpeg (libmp3lame) and espeak-ng, both required in CI.
"""

from __future__ import annotations

import gzip as gzip_module
import io
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import imageio_ffmpeg
import pyarrow as pa
import pyarrow.parquet as pq

FIXED_MTIME = 1_767_225_600  # 2026-01-01 UTC: archives built twice are byte-identical

Name = str | bytes  # bytes: raw header bytes, e.g. a name that is not valid UTF-8


def ffmpeg_exe() -> str:
    """The bundled ffmpeg: unlike a system one it always has libmp3lame and libopus."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def make_tone_mp3(path: Path, seconds: float = 1.0, freq: int = 440) -> Path:
    """A sine tone as mono 64 kbps MP3 (with the LAME header that states its length)."""
    _run_ffmpeg(["-f", "lavfi", "-i", f"sine=frequency={freq}:duration={seconds}:sample_rate=22050"], path)
    return path


def make_speech_mp3(path: Path, text: str) -> Path:
    """`text` spoken by espeak-ng, as mono 64 kbps MP3."""
    speech = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    _run_ffmpeg(["-f", "wav", "-i", "pipe:0"], path, stdin=speech)
    return path


def version_clips(folder: Path) -> dict[str, Path]:
    """Two speech clips (one an insult, so it is flagged) and two tones: the members the
    archive-version tests build their archives from."""
    return {
        "insult": make_speech_mp3(folder / "insult.mp3", "you are a stupid idiot and everyone hates you"),
        "weather": make_speech_mp3(folder / "weather.mp3", "the weather is lovely today in the park"),
        "tone": make_tone_mp3(folder / "tone.mp3", seconds=1.5),
        "other_tone": make_tone_mp3(folder / "tone2.mp3", seconds=2.5, freq=660),
    }


def _run_ffmpeg(input_args: list[str], target: Path, stdin: bytes | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *input_args]
    command += ["-ac", "1", "-c:a", "libmp3lame", "-b:a", "64k", str(target)]
    subprocess.run(command, input=stdin, check=True, capture_output=True)


def make_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    """A parquet file of `rows`; types are inferred unless `schema` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@dataclass(frozen=True)
class RegularEntry:
    name: Name
    data: bytes = b""
    source: Path | None = None  # when set, the member's bytes are this file's


@dataclass(frozen=True)
class SymlinkEntry:
    name: Name
    target: str


@dataclass(frozen=True)
class HardlinkEntry:
    name: Name
    target: str


@dataclass(frozen=True)
class DeviceEntry:
    name: Name
    kind: str = "char"  # "char", "block" or "fifo"


@dataclass(frozen=True)
class DirectoryEntry:
    name: Name


Entry = RegularEntry | SymlinkEntry | HardlinkEntry | DeviceEntry | DirectoryEntry

_DEVICE_TYPES = {"char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def build_tar(path: Path, entries: Iterable[Entry | tuple[Name, bytes | Path]], gzip: bool = False) -> Path:
    """Write `entries` in order, exactly as given: absolute and "../" names, links, devices,
    duplicates and undecodable names are written, not cleaned up. A (name, bytes|Path) tuple
    is shorthand for a RegularEntry."""
    buffer = io.BytesIO()
    # GNU format stores names as raw bytes; surrogateescape turns bytes names back into them.
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for entry in entries:
            info, data = _tar_entry(_as_entry(entry))
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    payload = buffer.getvalue()
    if gzip:
        payload = gzip_module.compress(payload, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _as_entry(entry) -> Entry:
    if isinstance(entry, tuple):
        name, content = entry
        return RegularEntry(name, source=content) if isinstance(content, Path) else RegularEntry(name, content)
    return entry


def _tar_entry(entry: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    name = entry.name.decode("utf-8", "surrogateescape") if isinstance(entry.name, bytes) else entry.name
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0o644, 0, 0, "", ""
    data = None
    if isinstance(entry, RegularEntry):
        data = entry.source.read_bytes() if entry.source is not None else entry.data
        info.size = len(data)
    elif isinstance(entry, SymlinkEntry | HardlinkEntry):
        info.type = tarfile.SYMTYPE if isinstance(entry, SymlinkEntry) else tarfile.LNKTYPE
        info.linkname = entry.target
    elif isinstance(entry, DeviceEntry):
        info.type, info.devmajor, info.devminor = _DEVICE_TYPES[entry.kind], 1, 3
    elif isinstance(entry, DirectoryEntry):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, data


def truncate_file(path: Path, keep_fraction: float) -> Path:
    """Cut the file to `keep_fraction` of its bytes, as an interrupted transfer would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def corrupt_gzip(path: Path, where: str = "crc") -> Path:
    """Damage a gzip file. "crc": flip the stored CRC-32, so the data inflates cleanly and only
    the checksum reveals the damage (what tarfile's "r|gz" alone would miss). "body": flip
    bytes in the middle of the deflate stream."""
    data = bytearray(path.read_bytes())
    if where == "crc":
        data[-8] ^= 0xFF  # trailer: CRC-32 (4 bytes) then length (4 bytes)
    elif where == "body":
        middle = len(data) // 2
        for offset in range(middle, middle + 16):
            data[offset] ^= 0x5A
    else:
        raise ValueError(f"where must be 'crc' or 'body', not {where!r}")
    path.write_bytes(bytes(data))
    return path


# --- raw archives: headers written block by block, streamed ---------------------------------
#
# Hostile archives whose headers tarfile would never write (a 200 MiB long-name header, a PAX
# record with a NUL in the path), streamed to disk (and through gzip) so that building a
# 200 MiB header takes no more memory than reading it should.

_BLOCK = tarfile.BLOCKSIZE
_STREAM_CHUNK = 1 << 20


def write_raw_tar(path: Path, pieces: Iterable[bytes], gzip: bool = False) -> Path:
    """Write `pieces` (together a whole number of 512-byte blocks, each piece of any length)
    then the end-of-archive blocks, one piece at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        out = gzip_module.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) if gzip else raw
        written = 0
        pending = bytearray()  # many small writes into gzip cost seconds: write 1 MiB at a time
        for piece in pieces:
            pending += piece
            written += len(piece)
            if len(pending) >= _STREAM_CHUNK:
                out.write(pending)
                pending.clear()
        if written % _BLOCK:
            raise ValueError(f"pieces add up to {written} bytes, not a whole number of {_BLOCK}-byte blocks")
        out.write(pending + bytes(2 * _BLOCK))
        if gzip:
            out.close()
    return path


def raw_header(name: Name, typeflag: bytes, size: int) -> bytes:
    """One 512-byte GNU header of any type (tarfile.GNUTYPE_LONGNAME, XHDTYPE...) and size."""
    info, _ = _tar_entry(RegularEntry(name))
    info.type, info.size = typeflag, size
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    if len(header) != _BLOCK:
        raise ValueError(f"name {name!r} needs more than one header block")
    return header


def entry_blocks(entry: Entry | tuple[Name, bytes | Path]) -> bytes:
    """An entry as build_tar writes it: its GNU header(s) and its data padded to whole blocks."""
    info, data = _tar_entry(_as_entry(entry))
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape") + _padded(data or b"")


def pax_header_blocks(records: dict[str, str | bytes], global_header: bool = False) -> bytes:
    """A PAX extended ('x') or global ('g') header holding `records`, written as given: a bytes
    value may hold anything, a NUL included."""
    body = b"".join(_pax_record(keyword, value) for keyword, value in records.items())
    kind = tarfile.XGLTYPE if global_header else tarfile.XHDTYPE
    return raw_header("././@PaxHeader", kind, len(body)) + _padded(body)


def _pax_record(keyword: str, value: str | bytes) -> bytes:
    """'<length> <keyword>=<value>\\n', where length counts the whole record, its own digits too."""
    text = keyword.encode() + b"=" + (value if isinstance(value, bytes) else value.encode()) + b"\n"
    length = len(text) + 1
    while len(str(length)) + 1 + len(text) != length:
        length = len(str(length)) + 1 + len(text)
    return b"%d %s" % (length, text)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % _BLOCK)


def _repeated(size: int, byte: bytes) -> Iterable[bytes]:
    """`size` copies of `byte`, in 1 MiB pieces."""
    chunk = byte * min(size, _STREAM_CHUNK)
    for start in range(0, size, _STREAM_CHUNK):
        yield chunk[: min(size - start, _STREAM_CHUNK)]


def gnu_long_name_bomb(
    path: Path, header_bytes: int, then: Iterable = (), link: bool = False, gzip: bool = True
) -> Path:
    """A GNU long-name ('L', or long-link 'K' when `link`) header whose body is `header_bytes`
    long, then the `then` entries: the first of them is the member the header names."""
    kind = tarfile.GNUTYPE_LONGLINK if link else tarfile.GNUTYPE_LONGNAME
    header = raw_header("././@LongLink", kind, header_bytes)
    body = chain(_repeated(header_bytes, b"a"), [bytes(-header_bytes % _BLOCK)])
    return write_raw_tar(path, chain([header], body, map(entry_blocks, then)), gzip=gzip)


def pax_header_bomb(
    path: Path, header_bytes: int, then: Iterable = (), global_header: bool = False, gzip: bool = True
) -> Path:
    """A PAX header whose body is one well-formed "comment" record `header_bytes` long, then
    the `then` entries: the first of them is the member the header describes."""
    start = b"%d comment=" % header_bytes
    value_bytes = header_bytes - len(start) - 1  # the record ends with a newline
    kind = tarfile.XGLTYPE if global_header else tarfile.XHDTYPE
    header = raw_header("././@PaxHeader", kind, header_bytes)
    body = chain([start], _repeated(value_bytes, b"c"), [b"\n", bytes(-header_bytes % _BLOCK)])
    return write_raw_tar(path, chain([header], body, map(entry_blocks, then)), gzip=gzip)


def many_members(
    path: Path, count: int, member_bytes: int = 0, name_format: str = "clip{:06d}.mp3", gzip: bool = True
) -> Path:
    """`count` regular members named by `name_format` (under 100 bytes), each `member_bytes`
    of zeros. Headers are patched from one template: tobuf for each of 100,000 takes seconds."""
    info, _ = _tar_entry(RegularEntry("x"))
    info.size = member_bytes
    template = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    padding = bytes(-member_bytes % _BLOCK)

    def pieces() -> Iterable[bytes]:
        for number in range(count):
            yield _renamed(template, name_format.format(number).encode())
            yield from _repeated(member_bytes, b"\0")
            yield padding

    return write_raw_tar(path, pieces(), gzip=gzip)


def _renamed(header: bytearray, name: bytes) -> bytes:
    """`header` with another name (the 100-byte field at 0) and the checksum to match."""
    if len(name) > 100:
        raise ValueError(f"{name!r} does not fit a ustar name field")
    header[0:100] = name.ljust(100, b"\0")
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def patch_total_byte_size(path: Path, value: int = 1) -> Path:
    """The row group's total_byte_size in the footer (Thrift compact: field 2 of RowGroup, an
    i64 after the columns list) set to `value`; the footer length at the end fixed up."""
    data = path.read_bytes()
    footer_length = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - footer_length : -8]
    stated = pq.ParquetFile(path).metadata.row_group(0).total_byte_size

    def varint(n: int) -> bytes:
        n, out = (n << 1) ^ (n >> 63), bytearray()  # zigzag
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    old, new = b"\x16" + varint(stated), b"\x16" + varint(value)
    assert footer.count(old) == 1
    patched = footer.replace(old, new)
    path.write_bytes(data[: -8 - footer_length] + patched + len(patched).to_bytes(4, "little") + b"PAR1")
    assert pq.ParquetFile(path).metadata.row_group(0).total_byte_size == value
    return path
