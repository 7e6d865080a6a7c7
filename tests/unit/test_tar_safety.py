"""scan_archive on real hostile and damaged archives built by archive_factory."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

import pytest
from archive_factory import (
    DeviceEntry,
    DirectoryEntry,
    HardlinkEntry,
    RegularEntry,
    SymlinkEntry,
    build_tar,
    corrupt_gzip,
    make_tone_mp3,
    truncate_file,
)

from audio_assets.audio.tar_safety import ArchiveUnreadable, member_kind, scan_archive

LIMIT = 10_000  # max_member_bytes for these tests
DUPLICATE = "duplicate member name (an earlier member has the same name)"


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    return make_tone_mp3(tmp_path_factory.mktemp("tone") / "tone.mp3", seconds=0.5)


def scan(path: Path, extract_to: Path | None = None, kinds=("mp3", "parquet")):
    kinds = frozenset(kinds) if extract_to else frozenset()
    return scan_archive(path, max_member_bytes=LIMIT, extract_to=extract_to, extract_kinds=kinds)


@pytest.mark.parametrize("gzip", [False, True], ids=["tar", "tar.gz"])
def test_good_archive_is_listed_and_extracted(tmp_path, tone, gzip):
    archive = build_tar(
        tmp_path / "batch.tar",
        [
            DirectoryEntry("clips"),
            RegularEntry("./clips/a.mp3", source=tone),
            ("b.MP3", b"fake mp3 bytes"),
            ("meta/metadata.Parquet", b"PAR1 fake"),
            ("README.txt", b"hello"),
        ],
        gzip=gzip,
    )
    out = tmp_path / "out"
    listing = scan(archive, extract_to=out)
    assert listing.rejected == ()
    assert [(m.name, m.kind) for m in listing.members] == [
        ("clips/a.mp3", "mp3"),
        ("b.MP3", "mp3"),
        ("meta/metadata.Parquet", "parquet"),
        ("README.txt", "other"),
    ]
    a_mp3 = listing.mp3s[0]
    assert a_mp3.size == tone.stat().st_size
    assert a_mp3.path == out / "clips" / "a.mp3" and a_mp3.path.read_bytes() == tone.read_bytes()
    assert listing.parquets[0].path.read_bytes() == b"PAR1 fake"
    assert listing.others[0].path is None  # "other" was not asked for
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "b.MP3", "clips/a.mp3", "meta/metadata.Parquet",
    ]


def test_listing_without_extraction_writes_nothing(tmp_path, tone):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", tone)])
    listing = scan(archive)
    assert [(m.name, m.size, m.path) for m in listing.members] == [("a.mp3", tone.stat().st_size, None)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.tar"]


def test_only_requested_kinds_are_extracted(tmp_path, tone):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", tone), ("m.parquet", b"x")])
    listing = scan(archive, extract_to=tmp_path / "out", kinds=("parquet",))
    assert listing.mp3s[0].path is None
    assert listing.parquets[0].path == tmp_path / "out" / "m.parquet"
    assert not (tmp_path / "out" / "a.mp3").exists()


@pytest.mark.parametrize(
    ("entry", "name", "kind", "reason"),
    [
        (RegularEntry("../evil.mp3", b"x"), "../evil.mp3", "mp3", "path contains '..'"),
        (RegularEntry("clips/../../evil.mp3", b"x"), "clips/../../evil.mp3", "mp3", "path contains '..'"),
        (RegularEntry("/etc/cron.d/evil.mp3", b"x"), "/etc/cron.d/evil.mp3", "mp3", "absolute path"),
        (SymlinkEntry("link.mp3", "/etc/passwd"), "link.mp3", "mp3", "symbolic link to '/etc/passwd'"),
        (HardlinkEntry("hard.mp3", "ok.mp3"), "hard.mp3", "mp3", "hard link to 'ok.mp3'"),
        (DeviceEntry("dev.mp3", "char"), "dev.mp3", "mp3", "not a regular file (character device)"),
        (DeviceEntry("disk", "block"), "disk", "other", "not a regular file (block device)"),
        (DeviceEntry("pipe.parquet", "fifo"), "pipe.parquet", "parquet", "not a regular file (FIFO)"),
        (RegularEntry("big.mp3", b"x" * 10_001), "big.mp3", "mp3", "larger than the 10000 byte limit (10001 bytes)"),
        (RegularEntry(b"caf\xe9.mp3", b"x"), "caf\\xe9.mp3", "mp3", "member name is not valid UTF-8"),
        (RegularEntry("ok.mp3", b"second"), "ok.mp3", "mp3", DUPLICATE),
        (RegularEntry("./ok.mp3", b"second"), "ok.mp3", "mp3", DUPLICATE),
    ],
    ids=[
        "dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "char-device", "block-device", "fifo",
        "oversized", "non-utf8-name", "duplicate", "duplicate-after-normalizing",
    ],
)
def test_unsafe_member_is_rejected_and_not_written(tmp_path, entry, name, kind, reason):
    archive = build_tar(tmp_path / "batch.tar", [("ok.mp3", b"first"), entry])
    out = tmp_path / "out"
    listing = scan(archive, extract_to=out, kinds=("mp3", "parquet", "other"))
    assert [(m.name, m.path.read_bytes()) for m in listing.members] == [("ok.mp3", b"first")]
    assert [(r.name, r.kind, r.reason) for r in listing.rejected] == [(name, kind, reason)]
    assert [p.name for p in out.rglob("*")] == ["ok.mp3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.tar", "out"]  # nothing escaped


def test_rejected_names_are_storable_text(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [RegularEntry(b"\xff\xfe/\x80clip.mp3", b"x")])
    (rejected,) = scan(archive).rejected
    assert rejected.name == "\\xff\\xfe/\\x80clip.mp3"
    rejected.name.encode("utf-8")  # no surrogates left: PostgreSQL text accepts it


def test_rejected_mp3s_lists_only_mp3s(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [SymlinkEntry("a.mp3", "x"), SymlinkEntry("b.parquet", "x")])
    listing = scan(archive)
    assert [r.name for r in listing.rejected_mp3s] == ["a.mp3"]
    assert len(listing.rejected) == 2


def test_a_rejected_first_copy_still_makes_the_second_a_duplicate(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"x" * (LIMIT + 1)), ("a.mp3", b"small")])
    listing = scan(archive)
    assert listing.members == ()
    reasons = [r.reason.split(" (")[0] for r in listing.rejected]
    assert reasons == ["larger than the 10000 byte limit", "duplicate member name"]


def test_member_whose_path_is_taken_by_a_file_is_rejected(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("clips", b"a file, not a folder"), ("clips/a.mp3", b"x")])
    listing = scan(archive, extract_to=tmp_path / "out", kinds=("mp3", "other"))
    assert [m.name for m in listing.members] == ["clips"]
    assert [(r.name, r.reason.split(":")[0]) for r in listing.rejected] == [("clips/a.mp3", "could not be extracted")]


def test_macos_junk_is_other(tmp_path):
    names = ["__MACOSX/clips/._a.mp3", "clips/._b.mp3", "c.mp3"]
    archive = build_tar(tmp_path / "batch.tar", [(name, b"x") for name in names])
    listing = scan(archive)
    assert [(m.name, m.kind) for m in listing.members] == [
        ("__MACOSX/clips/._a.mp3", "other"), ("clips/._b.mp3", "other"), ("c.mp3", "mp3"),
    ]
    assert member_kind("A/B.PARQUET") == "parquet"


def test_empty_archive_gives_empty_listing(tmp_path):
    listing = scan(build_tar(tmp_path / "empty.tar", [DirectoryEntry("only-a-folder")]))
    assert listing.members == () and listing.rejected == ()


def test_gzip_is_recognised_by_content_not_name(tmp_path, tone):
    archive = build_tar(tmp_path / "archive.tar", [("a.mp3", tone)], gzip=True)
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    assert [m.name for m in scan(archive).members] == ["a.mp3"]


def test_extract_kinds_without_target_is_a_caller_error(tmp_path):
    with pytest.raises(ValueError):
        scan_archive(build_tar(tmp_path / "a.tar", []), max_member_bytes=1, extract_kinds=frozenset({"mp3"}))


# --- damaged archives: nothing in them can be trusted, so the whole archive fails ---------


def test_truncated_tar_inside_a_member_is_unreadable(tmp_path, tone):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", tone), ("b.mp3", tone)])
    truncate_file(archive, keep_fraction=0.5)
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt tar"):
        scan(archive, extract_to=tmp_path / "out")


def test_tar_cut_between_members_is_unreadable(tmp_path):
    # Cut right after the first member's padded data: tarfile alone would call this the end.
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"x" * 1000), ("b.mp3", b"y" * 1000)])
    archive.write_bytes(archive.read_bytes()[: 512 + 1024])
    with pytest.raises(ArchiveUnreadable, match="no end-of-archive marker"):
        scan(archive)


def test_garbled_header_after_the_first_member_is_unreadable(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"x" * 1000), ("b.mp3", b"y" * 1000)])
    data = bytearray(archive.read_bytes())
    data[1536:2048] = random.Random(7).randbytes(512)  # b.mp3's header
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt tar"):
        scan(archive)


@pytest.mark.parametrize("where", ["crc", "body"])
def test_corrupt_gzip_is_unreadable(tmp_path, tone, where):
    archive = corrupt_gzip(build_tar(tmp_path / "batch.tar.gz", [("a.mp3", tone)], gzip=True), where=where)
    with pytest.raises(ArchiveUnreadable, match="corrupt gzip"):
        scan(archive, extract_to=tmp_path / "out")


def test_truncated_gzip_is_unreadable(tmp_path, tone):
    archive = truncate_file(build_tar(tmp_path / "batch.tar.gz", [("a.mp3", tone)] * 1, gzip=True), 0.9)
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt gzip data: Compressed file ended"):
        scan(archive)


@pytest.mark.parametrize(
    "content",
    [b"", random.Random(1).randbytes(20_000), b"just some text\n" * 100],
    ids=["empty-file", "random-bytes", "text"],
)
def test_file_that_is_not_a_tar_is_unreadable(tmp_path, content):
    path = tmp_path / "batch.tar"
    path.write_bytes(content)
    with pytest.raises(ArchiveUnreadable, match="not a tar archive"):
        scan(path)


def test_an_mp3_is_not_a_tar(tmp_path, tone):
    with pytest.raises(ArchiveUnreadable, match="not a tar archive"):
        scan(tone)


def test_archives_written_by_tarfile_default_format_are_read(tmp_path, tone):
    # build_tar writes GNU headers; PAX (Python's default) and ustar archives must read the same.
    for fmt in (tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"fmt{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            tar.add(tone, arcname="clips/é.mp3" if fmt == tarfile.PAX_FORMAT else "clips/a.mp3")
        assert [m.kind for m in scan(path).members] == ["mp3"]
