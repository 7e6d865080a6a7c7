"""Read an untrusted tar or tar.gz archive in one streaming pass, in bounded memory.

Archives come from outside, so a member may try to write outside a target directory
(CVE-2007-4559: "../" names, absolute names, links), be a device, be huge, or carry a name that
no filesystem or database column can hold. Such members are yielded as rejected, with a reason.
Nothing is ever written at a path the archive chooses: a caller copies an accepted member's
bytes to a path of its own (ArchiveEntry.copy_to).

A damaged archive (truncated, corrupt compression, not a tar at all) raises ArchiveUnreadable:
nothing in it can be trusted to be complete. One that crosses an archive-wide cap (member count,
inflated size) raises ArchiveRefused as soon as the cap is crossed; the rest is not read.

Memory stays bounded whatever the archive holds:
- tarfile reads a GNU long-name/long-link header body or a PAX header body whole before any
  check, so a small .tar.gz could inflate one into gigabytes; CappedTarInfo discards a body over
  `max_header_bytes` in 1 MiB chunks and rejects the member it belonged to.
- tarfile keeps every TarInfo in TarFile.members; stream mode never looks back, so the list is
  emptied as we go.
- member data moves in 1 MiB chunks.

Why decompress here rather than let tarfile do it: tarfile's streaming mode ("r|gz") neither
checks the gzip CRC nor notices a stream cut short; gzip.GzipFile does both once read to the end.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ClassVar, Literal

MemberKind = Literal["mp3", "parquet", "other"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_CHUNK = MiB  # unit of every read of member data or of a discarded header body
_KIND_BY_SUFFIX: dict[str, MemberKind] = {".mp3": "mp3", ".parquet": "parquet"}
_GZIP_MAGIC = b"\x1f\x8b"
_END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)
_MAX_COMPONENT_BYTES = 255  # NAME_MAX of ext4, XFS, APFS...
_MAX_SHOWN_CHARS = 300  # a longer rejected name is shown abbreviated
_SHOWN_PREFIX_CHARS = 200
# A legitimate member has at most a global PAX, a PAX, a long-name and a long-link header in
# front of it. tarfile processes each chained header by recursion, so an unbounded chain would
# end in RecursionError (and hold every body in memory on the way).
_MAX_CHAINED_HEADERS = 8
_EXTENDED_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)

DUPLICATE = "duplicate member name (an earlier member has the same name)"
SPARSE = "sparse file (not supported)"


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on one archive. Over a member cap (size, header, name) the member is rejected;
    over an archive cap (member count, total bytes) the whole archive is refused."""

    max_member_bytes: int = 200 * MiB
    max_members: int = 20_000  # members other than directories
    max_total_bytes: int = 8 * GiB  # the decompressed tar stream, headers and padding included
    max_header_bytes: int = 64 * KiB  # one GNU long-name/long-link or PAX header body
    max_name_bytes: int = 1024  # UTF-8; names sit in a unique btree index (rows up to ~2.7 KB)


class ArchiveUnreadable(Exception):
    """The archive as a whole cannot be read; the message says how it is damaged."""


class ArchiveRefused(ArchiveUnreadable):
    """The archive crossed an archive-wide cap (member count, total bytes): refused as a whole,
    for good. Reading stopped at the cap."""


@dataclass(frozen=True)
class ArchiveMember:
    name: str  # normalized relative path inside the archive ("./a//b.mp3" -> "a/b.mp3")
    kind: MemberKind
    size: int
    sha256: str | None = None  # hex, when the bytes were read


@dataclass(frozen=True)
class RejectedMember:
    name: str  # printable, valid UTF-8, no control characters, at most ~300 characters
    kind: MemberKind
    reason: str
    # hex, when a member cap alone rejected a regular file (see ArchiveEntry.capped) and it was hashed
    sha256: str | None = None


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
    """Kind by case-insensitive suffix of the last component, which may be the whole component
    (".mp3" is an MP3 named ""). macOS resource forks ("__MACOSX/", "._x.mp3") are metadata
    about files, not audio, whatever their suffix."""
    path = PurePosixPath(name)
    if "__MACOSX" in path.parts or path.name.startswith("._"):
        return "other"
    lowered = path.name.lower()
    return next((kind for suffix, kind in _KIND_BY_SUFFIX.items() if lowered.endswith(suffix)), "other")


class ArchiveEntry:
    """One regular-file member met while streaming; valid only until the next one is requested.

    The archive is a stream: an entry's bytes can be read once, while it is the current entry.
    Bytes nobody reads are skipped when the next entry is requested."""

    def __init__(
        self,
        tar: tarfile.TarFile,
        info: tarfile.TarInfo,
        name: str,
        kind: MemberKind,
        rejection: str | None,
        capped: bool = False,
    ):
        self.name = name
        self.kind: MemberKind = kind
        self.size = info.size
        self.rejection = rejection  # None when accepted
        # Rejected by a member cap alone (size, name length: run config) on a regular file: its
        # bytes may be hashed, so a caller can tell the member from the one a row was made of.
        self.capped = capped
        self._tar = tar
        self._info = info
        self._state = "current"  # -> "read" once its bytes were read, "expired" once passed

    def __repr__(self) -> str:
        return f"ArchiveEntry({self.name!r}, kind={self.kind!r}, size={self.size}, rejection={self.rejection!r})"

    def copy_to(self, target: Path) -> ArchiveMember:
        """Write the member's bytes to `target` (the caller's path, never the archive's) and
        return it with its SHA-256. A failed copy leaves no partial file behind."""
        self._claim()
        with open(target, "wb") as out:
            try:
                return self._read(out.write)
            except BaseException:
                out.close()
                target.unlink(missing_ok=True)
                raise

    def hash(self) -> ArchiveMember:
        """Read the member's bytes, keeping nothing but their SHA-256 (also of a capped member)."""
        self._claim(hash_only=True)
        return self._read(None)

    def _read(self, sink: Callable[[bytes], object] | None) -> ArchiveMember:
        digest = hashlib.sha256()
        copied = 0
        try:
            with self._tar.extractfile(self._info) as data:  # type: ignore[union-attr]  # a file member: never None
                while chunk := data.read(_CHUNK):
                    digest.update(chunk)
                    if sink is not None:
                        sink(chunk)
                    copied += len(chunk)
        except tarfile.TarError as exc:
            raise ArchiveUnreadable(f"truncated or corrupt tar: {exc} in {self.name!r}") from None
        if copied != self.size:
            raise ArchiveUnreadable(
                f"truncated or corrupt tar: {self.name!r} ended after {copied} of {self.size} bytes"
            )
        return ArchiveMember(self.name, self.kind, self.size, digest.hexdigest())

    def _claim(self, hash_only: bool = False) -> None:
        if self.rejection is not None and not (hash_only and self.capped):
            raise ValueError(f"{self.name!r} was rejected ({self.rejection}): its bytes are not read")
        if self._state == "expired":
            raise RuntimeError(f"{self.name!r} is no longer the current entry: the stream has moved past it")
        if self._state == "read":
            raise RuntimeError(f"the bytes of {self.name!r} were already read: a stream is read once")
        self._state = "read"

    def _expire(self) -> None:
        self._state = "expired"


def iter_archive(archive_path: Path, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[ArchiveEntry]:
    """Every regular-file member once, in archive order (directories skipped), accepted or rejected;
    after the last one it verifies the archive is complete (end-of-archive marker, gzip CRC) and raises
    ArchiveUnreadable if not. Raises ArchiveRefused when a cap is crossed.

    Stop early only by raising: the completeness check runs when the iterator is exhausted."""
    seen: set[bytes] = set()
    count = 0
    with open(archive_path, "rb") as raw, _decompressed(raw, limits.max_total_bytes) as stream:
        with _open_tar(stream, limits.max_header_bytes) as tar:
            for info in _members(tar):
                if info.isdir():
                    continue
                count += 1
                if count > limits.max_members:
                    raise ArchiveRefused(f"more than {limits.max_members} members (the limit; directories not counted)")
                entry = _entry(tar, info, limits, seen)
                try:
                    yield entry
                finally:
                    entry._expire()
            stream.check_complete(tar.offset)


def scan_archive(
    archive_path: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    hash_kinds: frozenset[str] = frozenset({"mp3"}),
) -> ArchiveListing:
    """The listing, hashing the members of hash_kinds that are accepted or rejected by a member
    cap alone (the stream passes over their bytes anyway); writes nothing."""
    accepted: list[ArchiveMember] = []
    rejected: list[RejectedMember] = []
    for entry in iter_archive(archive_path, limits):
        if entry.rejection is not None:
            sha256 = entry.hash().sha256 if entry.capped and entry.kind in hash_kinds else None
            rejected.append(RejectedMember(entry.name, entry.kind, entry.rejection, sha256))
        elif entry.kind in hash_kinds:
            accepted.append(entry.hash())
        else:
            accepted.append(ArchiveMember(entry.name, entry.kind, entry.size))
    return ArchiveListing(members=tuple(accepted), rejected=tuple(rejected))


# --- vetting one member ------------------------------------------------------------------


def _entry(tar: tarfile.TarFile, info: tarfile.TarInfo, limits: ArchiveLimits, seen: set[bytes]) -> ArchiveEntry:
    normalized = str(PurePosixPath(info.name))  # "./a//b.mp3" -> "a/b.mp3"; may hold surrogates
    raw = normalized.encode("utf-8", "surrogateescape")
    reason = _rejection(info, normalized, raw, limits)
    capped = reason is not None and _rejection(info, normalized, raw, _member_caps_lifted(limits)) is None
    # Names are remembered by digest: a rejected name may be as long as a header body.
    key = hashlib.sha256(raw).digest()
    if reason is None and key in seen:
        reason = DUPLICATE
    seen.add(key)  # a rejected first copy still makes a second one a duplicate
    name = normalized if reason is None else _shown(normalized)
    return ArchiveEntry(tar, info, name, member_kind(normalized), reason, capped)


def _member_caps_lifted(limits: ArchiveLimits) -> ArchiveLimits:
    """`limits` without the member caps a run may lower (size, name length)."""
    return replace(limits, max_member_bytes=sys.maxsize, max_name_bytes=sys.maxsize)


def _rejection(info: tarfile.TarInfo, name: str, raw: bytes, limits: ArchiveLimits) -> str | None:
    header_problem = getattr(info, "rejection", None)  # set while parsing its headers
    if header_problem is not None:
        return header_problem
    if any(keyword.startswith("GNU.sparse.") for keyword in info.pax_headers):
        return SPARSE  # its map was not parsed: see CappedTarInfo
    return _name_problem(name, raw, limits) or _type_problem(info, name, limits)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _name_problem(name: str, raw: bytes, limits: ArchiveLimits) -> str | None:
    """Why a filesystem or a PostgreSQL text column could not hold the name, if it cannot."""
    if raw.decode("utf-8", "replace") != name:  # surrogates stand for bytes that are not UTF-8
        return "member name is not valid UTF-8"
    if control := _CONTROL.search(name):
        if control.group() == "\x00":
            return "member name contains a NUL byte"
        return f"member name contains a control character ({_escaped(control.group())})"
    if len(raw) > limits.max_name_bytes:
        return f"member name is longer than the {limits.max_name_bytes}-byte limit ({len(raw)} bytes)"
    longest = max(len(part.encode("utf-8")) for part in name.split("/"))
    if longest > _MAX_COMPONENT_BYTES:
        return f"a path component is longer than {_MAX_COMPONENT_BYTES} bytes ({longest} bytes)"
    return None


def _type_problem(info: tarfile.TarInfo, name: str, limits: ArchiveLimits) -> str | None:
    if name.startswith("/"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path contains '..'"
    if info.issym() or info.islnk():
        return f"{'symbolic' if info.issym() else 'hard'} link to '{_shown(info.linkname)}'"
    if not info.isfile():
        return f"not a regular file ({_TYPE_NAMES.get(info.type, 'unknown type')})"
    if name == ".":
        return "empty member name"
    if info.size > limits.max_member_bytes:
        return f"larger than the {limits.max_member_bytes} byte limit ({info.size} bytes)"
    return None


_TYPE_NAMES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}

_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}


def _escaped(text: str) -> str:
    """Valid UTF-8 with no control characters: bytes that are not UTF-8 (surrogates) and
    control characters become \\xNN."""
    raw = text.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPES)


def _shown(text: str) -> str:
    """`text` as a rejected member's name or in a reason: escaped, and abbreviated when long.
    The abbreviation ends with the full length and a digest of the raw name, so two long names
    that share their beginning stay distinct."""
    shown = _escaped(text)
    if len(shown) <= _MAX_SHOWN_CHARS:
        return shown
    raw = text.encode("utf-8", "surrogateescape")
    digest = hashlib.sha1(raw).hexdigest()[:10]
    return f"{shown[:_SHOWN_PREFIX_CHARS]}… [{len(raw)} bytes, sha1 {digest}]"


# --- tar parsing with bounded headers -----------------------------------------------------


class CappedTarInfo(tarfile.TarInfo):
    """TarInfo whose extended headers are read in bounded memory and time.

    Mirrors CPython 3.11's _proc_gnulong and _proc_pax with three changes: a header body over
    `max_header_bytes` is discarded in chunks and the member it belongs to is rejected (its data
    is then skipped like any rejected member's); PAX records are parsed in linear time (3.11.7's
    regular expressions backtrack quadratically: 13 s for one 64 KiB header, CVE-2024-6232); and
    sparse members are rejected without reading their maps, which may run on for the whole
    archive (they are rejected by their PAX keywords or here, in _proc_sparse). Use `capped_at`
    for a subclass with a given cap."""

    max_header_bytes: ClassVar[int] = 64 * KiB
    rejection: str | None = None  # why the member is rejected, when its headers tell

    @classmethod
    def capped_at(cls, max_header_bytes: int) -> type[CappedTarInfo]:
        # tarfile.open takes a class, and builds the first member before returning, so the
        # cap has to live on the class.
        return type(cls.__name__, (cls,), {"max_header_bytes": max_header_bytes})

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type not in _EXTENDED_TYPES:
            return super()._proc_member(tar)
        chained = getattr(tar, "_chained_headers", 0)
        if chained >= _MAX_CHAINED_HEADERS:
            raise tarfile.ReadError(f"more than {_MAX_CHAINED_HEADERS} extended headers in a row")
        tar._chained_headers = chained + 1
        try:
            return super()._proc_member(tar)
        finally:
            tar._chained_headers = chained

    def _proc_gnulong(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > self.max_header_bytes:
            what = "member name" if self.type == tarfile.GNUTYPE_LONGNAME else "link target"
            return self._skip_oversized(tar, f"{what} header")
        return super()._proc_gnulong(tar)

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > self.max_header_bytes:
            return self._skip_oversized(tar, "global PAX header" if self.type == tarfile.XGLTYPE else "PAX header")
        records = _pax_records(tar.fileobj.read(self._block(self.size)))
        # A global header applies to every later member; an extended one to the next only.
        pax_headers: dict = tar.pax_headers if self.type == tarfile.XGLTYPE else dict(tar.pax_headers)  # type: ignore[assignment]
        self._decode_pax_records(records, pax_headers, tar)
        if self.type == tarfile.XGLTYPE and _pax_bytes(pax_headers) > self.max_header_bytes:
            # Each global header is under the cap, but they add up for the rest of the archive.
            raise ArchiveRefused(f"global PAX headers add up to more than the {self.max_header_bytes}-byte limit")

        next_info = self._next_header(tar)
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            next_info._apply_pax_info(pax_headers, tar.encoding, tar.errors)
            next_info.offset = self.offset
            if "size" in pax_headers:
                # The extended header replaces the size: the next header starts elsewhere.
                offset = next_info.offset_data
                if next_info.isreg() or next_info.type not in tarfile.SUPPORTED_TYPES:
                    offset += next_info._block(next_info.size)
                tar.offset = offset
        return next_info

    def _decode_pax_records(self, records: list[tuple[bytes, bytes]], pax_headers: dict, tar: tarfile.TarFile) -> None:
        """As CPython: names are UTF-8 unless hdrcharset=BINARY says they are raw bytes; either
        way undecodable bytes fall back to the archive's encoding and error handler."""
        charset = next((value for keyword, value in records if keyword == b"hdrcharset"), None)
        if charset is not None:
            pax_headers["hdrcharset"] = charset.decode("utf-8", "surrogateescape")
        encoding = tar.encoding if pax_headers.get("hdrcharset") == "BINARY" else "utf-8"
        for raw_keyword, raw_value in records:
            keyword = self._decode_pax_field(raw_keyword, "utf-8", "utf-8", tar.errors)
            if keyword in tarfile.PAX_NAME_FIELDS:
                value = self._decode_pax_field(raw_value, encoding, tar.encoding, tar.errors)
            else:
                value = self._decode_pax_field(raw_value, "utf-8", "utf-8", tar.errors)
            pax_headers[keyword] = value

    def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        """Old GNU sparse member: skip its extension blocks without keeping the map."""
        _structs, isextended, origsize = self._sparse_structs
        del self._sparse_structs
        while isextended:
            block = tar.fileobj.read(tarfile.BLOCKSIZE)
            if len(block) < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("unexpected end of data")
            isextended = bool(block[504])
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)
        self.size = origsize
        self.rejection = SPARSE
        return self

    def _skip_oversized(self, tar: tarfile.TarFile, what: str) -> tarfile.TarInfo:
        """Discard this header's body in chunks, and reject the member it belongs to."""
        remaining = self._block(self.size)
        while remaining:
            chunk = tar.fileobj.read(min(remaining, _CHUNK))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            remaining -= len(chunk)
        next_info = self._next_header(tar)
        next_info.offset = self.offset
        next_info.rejection = next_info.rejection or (
            f"{what} of {self.size} bytes exceeds the {self.max_header_bytes}-byte limit"
        )
        return next_info

    def _next_header(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return self.fromtarfile(tar)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None


_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")


def _pax_records(buf: bytes) -> list[tuple[bytes, bytes]]:
    """(keyword, value) of each "<length> <keyword>=<value>\\n" record, in one linear pass (as
    CPython's fix for CVE-2024-6232). Framing errors raise InvalidHeaderError, as there."""
    records = []
    pos = 0
    while pos < len(buf) and buf[pos] != 0:  # the body is padded with NULs to a whole block
        match = _PAX_LENGTH.match(buf, pos)
        length = int(match.group(1)) if match else 0
        end = pos + length  # just past the record's newline
        if match is None or length < 5 or end > len(buf) or buf[end - 1] != 0x0A:  # shortest: "5 x=\n"
            raise tarfile.InvalidHeaderError("invalid header")
        keyword, equals, value = buf[match.end() : end - 1].partition(b"=")
        if not keyword or not equals:
            raise tarfile.InvalidHeaderError("invalid header")
        records.append((keyword, value))
        pos = end
    return records


def _pax_bytes(pax_headers: dict[str, str]) -> int:
    return sum(len(keyword) + len(value) for keyword, value in pax_headers.items())


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Iterate members, turning read failures into ArchiveUnreadable."""
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, ValueError) as exc:  # ValueError: numbers in PAX records
            raise ArchiveUnreadable(f"truncated or corrupt tar: {exc}") from None
        tar.members.clear()  # tarfile keeps every TarInfo; a stream never looks back
        if info is None:
            return
        if info.size < 0:  # possible in octal, base-256 and PAX; the framing is broken
            raise ArchiveUnreadable(f"truncated or corrupt tar: negative size in the header at byte {info.offset}")
        yield info
        _skip_to_next_header(tar)


def _skip_to_next_header(tar: tarfile.TarFile) -> None:
    """Read past what is left of the member's data. tarfile would skip it itself, but its
    forward seek does not notice the end of the stream and goes on reading nothing as many
    times as the header's size says: a forged size of 2**90 bytes would spin for ever."""
    left = tar.offset - tar.fileobj.tell()
    while left > 0:
        chunk = tar.fileobj.read(min(left, _CHUNK))
        if not chunk:
            raise ArchiveUnreadable("truncated or corrupt tar: unexpected end of data")
        left -= len(chunk)


def _open_tar(stream: _CheckedStream, max_header_bytes: int) -> tarfile.TarFile:
    try:
        # surrogateescape keeps undecodable name bytes so they can be rejected by name.
        return tarfile.open(  # type: ignore[call-overload]  # a file-like object is what "r|" reads
            fileobj=stream,
            mode="r|",
            tarinfo=CappedTarInfo.capped_at(max_header_bytes),
            encoding="utf-8",
            errors="surrogateescape",
        )
    except (tarfile.TarError, ValueError) as exc:
        raise ArchiveUnreadable(f"not a tar archive: {exc}") from None


# --- the byte stream under tarfile --------------------------------------------------------


class _CheckedStream:
    """Read-only file object over the (decompressed) archive bytes. It turns decompression
    errors into ArchiveUnreadable, refuses the archive once more than `max_total_bytes` came
    out, and remembers the latest bytes read, so that once tarfile stops we can tell a real
    end-of-archive block from a stream that merely ran out."""

    def __init__(self, source: BinaryIO, compression: str, max_total_bytes: int):
        self._source = source
        self._compression = compression
        self._max_total_bytes = max_total_bytes
        self._recent: deque[bytes] = deque(maxlen=3)  # tarfile reads 10 KiB records
        self._position = 0

    def read(self, size: int) -> bytes:
        try:
            data = self._source.read(size)
        except (EOFError, OSError, zlib.error) as exc:
            raise ArchiveUnreadable(f"truncated or corrupt {self._compression} data: {exc}") from None
        self._recent.append(data)
        self._position += len(data)
        if self._position > self._max_total_bytes:
            raise ArchiveRefused(f"the tar stream is larger than the {self._max_total_bytes}-byte limit")
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
        while self.read(_CHUNK):
            pass


@contextmanager
def _decompressed(raw: BinaryIO, max_total_bytes: int) -> Iterator[_CheckedStream]:
    """The archive's tar bytes: gunzipped when the file starts with the gzip magic number
    (the name cannot be trusted: callers may store a .tar.gz as "archive.tar")."""
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield _CheckedStream(unzipped, "gzip", max_total_bytes)  # type: ignore[arg-type]
    else:
        raw.seek(0)
        yield _CheckedStream(raw, "tar", max_total_bytes)
