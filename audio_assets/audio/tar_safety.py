"""List, and optionally extract, an untrusted tar or tar.gz archive in one streaming pass.

Archives come from outside, so a member may try to write outside the extraction directory
(CVE-2007-4559: "../" names, absolute names, links), be a device, be huge, or carry a name that
is not text. Such members are recorded as rejected and never written. A damaged archive
(truncated, corrupt compression, not a tar at all) raises ArchiveUnreadable: nothing in it can
be trusted to be complete.

Why decompress here rather than let tarfile do it: tarfile's streaming mode ("r|gz") neither
checks the gzip CRC nor notices a stream cut short; gzip.GzipFile does both once read to the end.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

MemberKind = Literal["mp3", "parquet", "other"]

_KIND_BY_SUFFIX: dict[str, MemberKind] = {".mp3": "mp3", ".parquet": "parquet"}
_GZIP_MAGIC = b"\x1f\x8b"
_END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)


class ArchiveUnreadable(Exception):
    """The archive as a whole cannot be read; the message says how it is damaged."""


@dataclass(frozen=True)
class ArchiveMember:
    name: str  # normalized relative path inside the archive
    kind: MemberKind
    size: int
    path: Path | None  # where it was extracted, None when it was not


@dataclass(frozen=True)
class RejectedMember:
    name: str  # printable, valid UTF-8 (undecodable bytes shown as \xNN)
    kind: MemberKind
    reason: str


@dataclass(frozen=True)
class ArchiveListing:
    members: tuple[ArchiveMember, ...]
    rejected: tuple[RejectedMember, ...]

    @property
    def mp3s(self) -> tuple[ArchiveMember, ...]:
        return tuple(m for m in self.members if m.kind == "mp3")

    @property
    def parquets(self) -> tuple[ArchiveMember, ...]:
        return tuple(m for m in self.members if m.kind == "parquet")

    @property
    def others(self) -> tuple[ArchiveMember, ...]:
        return tuple(m for m in self.members if m.kind == "other")

    @property
    def rejected_mp3s(self) -> tuple[RejectedMember, ...]:
        return tuple(r for r in self.rejected if r.kind == "mp3")


def member_kind(name: str) -> MemberKind:
    """Kind by case-insensitive suffix; macOS resource forks ("__MACOSX/", "._x.mp3") are
    metadata about files, not audio, whatever their suffix."""
    path = PurePosixPath(name)
    if "__MACOSX" in path.parts or path.name.startswith("._"):
        return "other"
    return _KIND_BY_SUFFIX.get(path.suffix.lower(), "other")


def scan_archive(
    archive_path: Path,
    *,
    max_member_bytes: int,
    extract_to: Path | None = None,
    extract_kinds: frozenset[str] = frozenset(),
) -> ArchiveListing:
    """Read the whole archive once: every regular file is listed as accepted or rejected, and
    accepted members of `extract_kinds` are written under `extract_to` at their relative path.
    Directories are skipped. Raises ArchiveUnreadable for a damaged archive."""
    if extract_kinds and extract_to is None:
        raise ValueError("extract_kinds needs extract_to")
    accepted: list[ArchiveMember] = []
    rejected: list[RejectedMember] = []
    seen: set[str] = set()
    with open(archive_path, "rb") as raw, _decompressed(raw) as stream, _open_tar(stream) as tar:
        for info in _members(tar):
            if info.isdir():
                continue
            name, kind, reason = _vet(info, max_member_bytes)
            if reason is None and name in seen:
                reason = "duplicate member name (an earlier member has the same name)"
            seen.add(name)  # a rejected first copy still makes a second one a duplicate
            path = None
            if reason is None and kind in extract_kinds:
                path, reason = _extract(tar, info, name, extract_to)
            if reason is None:
                accepted.append(ArchiveMember(name, kind, info.size, path))
            else:
                rejected.append(RejectedMember(name, kind, reason))
        stream.check_complete(tar.offset)
    return ArchiveListing(members=tuple(accepted), rejected=tuple(rejected))


def _vet(info: tarfile.TarInfo, max_member_bytes: int) -> tuple[str, MemberKind, str | None]:
    """(name, kind, reason to reject or None). The name is normalized ("./a//b.mp3" ->
    "a/b.mp3") and storable as text even when rejected: bytes that are not UTF-8 become \\xNN."""
    printable = info.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    name = str(PurePosixPath(printable))
    return name, member_kind(name), _rejection(info, name, printable != info.name, max_member_bytes)


def _rejection(info: tarfile.TarInfo, name: str, undecodable: bool, max_member_bytes: int) -> str | None:
    if undecodable:
        return "member name is not valid UTF-8"
    if name.startswith("/"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path contains '..'"
    if info.issym() or info.islnk():
        return f"{'symbolic' if info.issym() else 'hard'} link to {info.linkname!r}"
    if not info.isfile():
        return f"not a regular file ({_TYPE_NAMES.get(info.type, 'unknown type')})"
    if name == ".":
        return "empty member name"
    if info.size > max_member_bytes:
        return f"larger than the {max_member_bytes} byte limit ({info.size} bytes)"
    return None


_TYPE_NAMES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


def _extract(
    tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, extract_to: Path
) -> tuple[Path | None, str | None]:
    """Write one vetted member; (path, None) or (None, reason) when the path is taken by
    another member, e.g. a file "a" and a member "a/b.mp3"."""
    info.name = name  # extract at the normalized path that the listing reports
    try:
        tar.extract(info, extract_to, filter="data")  # a second line of defence after _vet
    except tarfile.ReadError as exc:
        raise ArchiveUnreadable(f"truncated or corrupt tar: {exc} in {name!r}") from None
    except (tarfile.FilterError, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        return None, f"could not be extracted: {exc}"
    return extract_to / name, None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Iterate members, turning read failures into ArchiveUnreadable."""
    while True:
        try:
            info = tar.next()
        except tarfile.ReadError as exc:
            raise ArchiveUnreadable(f"truncated or corrupt tar: {exc}") from None
        if info is None:
            return
        yield info


def _open_tar(stream: BinaryIO) -> tarfile.TarFile:
    try:
        # surrogateescape keeps undecodable name bytes so _vet can reject them by name.
        return tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        raise ArchiveUnreadable(f"not a tar archive: {exc}") from None


class _CheckedStream:
    """Read-only file object over the (decompressed) archive bytes. It turns decompression
    errors into ArchiveUnreadable and remembers the latest bytes read, so that once tarfile
    stops we can tell a real end-of-archive block from a stream that merely ran out."""

    def __init__(self, source: BinaryIO, compression: str):
        self._source = source
        self._compression = compression
        self._recent: deque[bytes] = deque(maxlen=3)  # tarfile reads 10 KiB records
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._source.read(size)
        except (EOFError, OSError, zlib.error) as exc:
            raise ArchiveUnreadable(f"truncated or corrupt {self._compression} data: {exc}") from None
        self._recent.append(data)
        self._position += len(data)
        return data

    def check_complete(self, end_offset: int) -> None:
        """Raise unless the archive ends with an end-of-archive block at `end_offset`, and read
        the rest of the stream so the decompressor verifies its checksum.

        tarfile treats a stream that ends between members, or a garbled header after the
        first, as a normal end: without this check such an archive would look whole."""
        recent = b"".join(self._recent)
        start = end_offset - (self._position - len(recent))
        if start < 0 or recent[start : start + tarfile.BLOCKSIZE] != _END_OF_ARCHIVE:
            raise ArchiveUnreadable("truncated or corrupt tar: no end-of-archive marker after the last member")
        while self.read(1 << 20):
            pass


@contextmanager
def _decompressed(raw: BinaryIO) -> Iterator[_CheckedStream]:
    """The archive's tar bytes: gunzipped when the file starts with the gzip magic number
    (the name cannot be trusted: callers may store a .tar.gz as "archive.tar")."""
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield _CheckedStream(unzipped, "gzip")
    else:
        raw.seek(0)
        yield _CheckedStream(raw, "tar")
