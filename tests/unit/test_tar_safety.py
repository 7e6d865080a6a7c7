"""iter_archive and scan_archive on real hostile and damaged archives built by archive_factory."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import media.tar_safety as tar_safety
from media.tar_safety import (
    DUPLICATE,
    SPARSE,
    ArchiveEntry,
    ArchiveLimits,
    ArchiveMember,
    ArchiveRefused,
    ArchiveUnreadable,
    iter_archive,
    member_kind,
    scan_archive,
)
from testing.archive_factory import (
    DeviceEntry,
    DirectoryEntry,
    HardlinkEntry,
    RegularEntry,
    SymlinkEntry,
    build_tar,
    corrupt_gzip,
    entry_blocks,
    gnu_long_name_bomb,
    make_tone_mp3,
    many_members,
    pax_header_blocks,
    pax_header_bomb,
    raw_header,
    truncate_file,
    write_raw_tar,
)

LIMITS = ArchiveLimits(max_member_bytes=10_000)
MiB = 1 << 20


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    return make_tone_mp3(tmp_path_factory.mktemp("tone") / "tone.mp3", seconds=0.5)


def scan(path: Path, limits: ArchiveLimits = LIMITS, **kwargs):
    return scan_archive(path, limits, **kwargs)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def accepted_and_rejected(listing) -> tuple[list, list]:
    return [m.name for m in listing.members], [(r.name, r.kind, r.reason) for r in listing.rejected]


# --- good archives ---------------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [False, True], ids=["tar", "tar.gz"])
def test_good_archive_is_listed_and_its_mp3s_hashed(tmp_path, tone, gzip):
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
    listing = scan(archive, ArchiveLimits())
    assert listing.rejected == ()
    assert listing.members == (
        ArchiveMember("clips/a.mp3", "mp3", tone.stat().st_size, sha256(tone.read_bytes())),
        ArchiveMember("b.MP3", "mp3", 14, sha256(b"fake mp3 bytes")),
        ArchiveMember("meta/metadata.Parquet", "parquet", 9, None),  # not a hash kind
        ArchiveMember("README.txt", "other", 5, None),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.tar"]  # scanning writes nothing


def test_hash_kinds_choose_which_bytes_are_read(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"mp3"), ("m.parquet", b"par"), ("x.txt", b"x")])
    assert [m.sha256 for m in scan(archive, hash_kinds=frozenset()).members] == [None, None, None]
    everything = frozenset({"mp3", "parquet", "other"})
    assert [m.sha256 for m in scan(archive, hash_kinds=everything).members] == [
        sha256(b"mp3"),
        sha256(b"par"),
        sha256(b"x"),
    ]


def test_copy_to_writes_at_the_callers_path_only(tmp_path, tone, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("members are never extracted at paths the archive chooses")

    monkeypatch.setattr(tarfile.TarFile, "extract", never)
    monkeypatch.setattr(tarfile.TarFile, "extractall", never)
    archive = build_tar(
        tmp_path / "batch.tar.gz",
        [("clips/a.mp3", tone), RegularEntry("../evil.mp3", b"x"), ("m.parquet", b"PAR1")],
        gzip=True,
    )
    out = tmp_path / "out"
    out.mkdir()
    copied = []
    for number, entry in enumerate(iter_archive(archive, LIMITS)):
        if entry.rejection is None:
            copied.append(entry.copy_to(out / f"{number}.bin"))
    assert copied == [
        ArchiveMember("clips/a.mp3", "mp3", tone.stat().st_size, sha256(tone.read_bytes())),
        ArchiveMember("m.parquet", "parquet", 4, sha256(b"PAR1")),
    ]
    assert (out / "0.bin").read_bytes() == tone.read_bytes() and (out / "2.bin").read_bytes() == b"PAR1"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "batch.tar.gz",
        "out",
        "out/0.bin",
        "out/2.bin",
    ]


def test_a_rejected_entry_cannot_be_read(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [SymlinkEntry("link.mp3", "/etc/passwd")])
    for entry in iter_archive(archive, LIMITS):
        assert isinstance(entry, ArchiveEntry) and (entry.name, entry.kind, entry.size) == ("link.mp3", "mp3", 0)
        assert entry.rejection == "symbolic link to '/etc/passwd'"
        with pytest.raises(ValueError, match="was rejected"):
            entry.copy_to(tmp_path / "target")
        with pytest.raises(ValueError, match="was rejected"):
            entry.hash()
    assert not (tmp_path / "target").exists()


def test_an_entry_is_read_once_and_only_while_current(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"a"), ("b.mp3", b"b")])
    entries = iter_archive(archive, LIMITS)
    first = next(entries)
    second = next(entries)
    with pytest.raises(RuntimeError, match="no longer the current entry"):
        first.hash()
    assert second.hash().sha256 == sha256(b"b")
    with pytest.raises(RuntimeError, match="already read"):
        second.copy_to(tmp_path / "again.mp3")
    assert list(entries) == []  # exhausting it runs the completeness check


def test_unread_members_are_skipped(tmp_path):
    big = random.Random(3).randbytes(300_000)
    archive = build_tar(tmp_path / "batch.tar.gz", [("big.mp3", big), ("small.mp3", b"small")], gzip=True)
    entries = list(iter_archive(archive, ArchiveLimits()))  # nobody reads big.mp3
    assert [(e.name, e.size, e.rejection) for e in entries] == [("big.mp3", 300_000, None), ("small.mp3", 5, None)]
    for entry in iter_archive(archive, ArchiveLimits()):
        if entry.name == "small.mp3":
            assert entry.copy_to(tmp_path / "small").sha256 == sha256(b"small")
    assert (tmp_path / "small").read_bytes() == b"small"


def test_a_failed_copy_leaves_no_partial_file(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"x" * 5000)])
    archive.write_bytes(archive.read_bytes()[: 512 + 2048])  # cut inside a.mp3's data
    target = tmp_path / "a.mp3"
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt tar"):
        for entry in iter_archive(archive, LIMITS):
            entry.copy_to(target)
    assert not target.exists()


def test_archives_written_by_tarfile_default_format_are_read(tmp_path, tone):
    # build_tar writes GNU headers; PAX (Python's default) and ustar archives must read the same.
    for fmt in (tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"fmt{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            tar.add(tone, arcname="clips/é.mp3" if fmt == tarfile.PAX_FORMAT else "clips/a.mp3")
        assert [m.kind for m in scan(path).members] == ["mp3"]


def test_empty_archive_gives_empty_listing(tmp_path):
    listing = scan(build_tar(tmp_path / "empty.tar", [DirectoryEntry("only-a-folder")]))
    assert listing.members == () and listing.rejected == ()


def test_gzip_is_recognised_by_content_not_name(tmp_path, tone):
    archive = build_tar(tmp_path / "archive.tar", [("a.mp3", tone)], gzip=True)
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    assert [m.name for m in scan(archive).members] == ["a.mp3"]


# --- kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("c.mp3", "mp3"),
        ("X.MP3", "mp3"),
        (".mp3", "mp3"),
        ("dir/.mp3", "mp3"),
        ("dir/.MP3", "mp3"),
        ("A/B.PARQUET", "parquet"),
        (".parquet", "parquet"),
        ("a.mp3.txt", "other"),
        ("mp3", "other"),
        ("clips/._b.mp3", "other"),
        ("._.mp3", "other"),
        ("__MACOSX/clips/._a.mp3", "other"),
        ("__MACOSX/a.mp3", "other"),
    ],
)
def test_member_kind(name, kind):
    assert member_kind(name) == kind


def test_a_member_named_dot_mp3_is_an_mp3(tmp_path):
    names = [".mp3", "dir/.mp3", "X.MP3", "__MACOSX/clips/._a.mp3", "clips/._b.mp3"]
    listing = scan(build_tar(tmp_path / "batch.tar", [(name, b"x") for name in names]))
    assert [(m.name, m.kind) for m in listing.members] == [
        (".mp3", "mp3"),
        ("dir/.mp3", "mp3"),
        ("X.MP3", "mp3"),
        ("__MACOSX/clips/._a.mp3", "other"),
        ("clips/._b.mp3", "other"),
    ]


# --- unsafe members: rejected, the archive goes on --------------------------------------------


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
        (
            RegularEntry("esc\x1b[2J.mp3", b"x"),
            "esc\\x1b[2J.mp3",
            "mp3",
            "member name contains a control character (\\x1b)",
        ),
        (RegularEntry("del\x7f.mp3", b"x"), "del\\x7f.mp3", "mp3", "member name contains a control character (\\x7f)"),
        (RegularEntry("tab\t.mp3", b"x"), "tab\\x09.mp3", "mp3", "member name contains a control character (\\x09)"),
        (
            RegularEntry("d/" + "c" * 252 + ".mp3", b"x"),
            "d/" + "c" * 252 + ".mp3",
            "mp3",
            "a path component is longer than 255 bytes (256 bytes)",
        ),
        (
            RegularEntry("d/" + "é" * 126 + ".mp3", b"x"),
            "d/" + "é" * 126 + ".mp3",
            "mp3",
            "a path component is longer than 255 bytes (256 bytes)",  # 130 characters, 256 bytes
        ),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "char-device",
        "block-device",
        "fifo",
        "oversized",
        "non-utf8-name",
        "duplicate",
        "duplicate-after-normalizing",
        "escape",
        "del",
        "tab",
        "long-component",
        "long-component-in-utf8",
    ],
)
def test_unsafe_member_is_rejected(tmp_path, entry, name, kind, reason):
    archive = build_tar(tmp_path / "batch.tar", [("ok.mp3", b"first"), entry])
    listing = scan(archive)
    assert [(m.name, m.sha256) for m in listing.members] == [("ok.mp3", sha256(b"first"))]
    assert [(r.name, r.kind, r.reason) for r in listing.rejected] == [(name, kind, reason)]


def test_names_up_to_the_limits_are_accepted(tmp_path):
    name = "/".join(["c" * 255] * 3 + ["d", "c" * 250 + ".mp3"])
    assert len(name.encode()) == 1024 and max(map(len, name.split("/"))) == 255
    listing = scan(build_tar(tmp_path / "batch.tar", [(name, b"x")]))
    assert [m.name for m in listing.members] == [name] and listing.rejected == ()


def test_a_nul_byte_in_a_pax_path_is_rejected(tmp_path):
    archive = write_raw_tar(
        tmp_path / "batch.tar",
        [
            pax_header_blocks({"path": b"evil\x00.mp3"}),
            entry_blocks(("placeholder", b"x")),
            pax_header_blocks({"path": b"bell\x07.mp3"}),
            entry_blocks(("placeholder", b"x")),
            entry_blocks(("good.mp3", b"good")),
        ],
    )
    listing = scan(archive)
    assert accepted_and_rejected(listing) == (
        ["good.mp3"],
        [
            ("evil\\x00.mp3", "mp3", "member name contains a NUL byte"),
            ("bell\\x07.mp3", "mp3", "member name contains a control character (\\x07)"),
        ],
    )


def test_a_name_over_max_name_bytes_is_rejected_and_shown_abbreviated(tmp_path):
    # Two 2000-byte names that differ only at the end: both rejected, shown short and distinct.
    stem = "/".join(["d" * 200] * 9)
    names = [f"{stem}/{tail}.mp3" for tail in ("a" * 187, "b" * 187)]
    assert all(len(n.encode()) == 2000 for n in names)
    listing = scan(build_tar(tmp_path / "batch.tar", [(name, b"x") for name in names]))
    assert listing.members == ()
    shown = [r.name for r in listing.rejected]
    for name, text in zip(names, shown):
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        assert text == f"{name[:200]}… [2000 bytes, sha1 {digest}]"
        assert len(text) <= 300
    assert shown[0] != shown[1]
    assert {(r.kind, r.reason) for r in listing.rejected} == {
        ("mp3", "member name is longer than the 1024-byte limit (2000 bytes)"),
    }


def test_rejected_names_are_storable_text(tmp_path):
    long_bad = b"\xff" * 400 + b"\x00" + b".mp3"
    archive = write_raw_tar(
        tmp_path / "batch.tar",
        [
            entry_blocks(RegularEntry(b"\xff\xfe/\x80clip.mp3", b"x")),
            pax_header_blocks({"path": long_bad, "hdrcharset": "BINARY"}),
            entry_blocks(("p", b"x")),
        ],
    )
    first, second = scan(archive).rejected
    assert first.name == "\\xff\\xfe/\\x80clip.mp3"
    assert second.name.startswith("\\xff" * 50) and "bytes, sha1" in second.name and len(second.name) <= 300
    for rejected in (first, second):
        rejected.name.encode("utf-8")  # no surrogates left: PostgreSQL text accepts it
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in rejected.name)


def test_a_long_link_target_is_shown_abbreviated(tmp_path):
    target = "/" + "t" * 5000
    (rejected,) = scan(build_tar(tmp_path / "batch.tar", [SymlinkEntry("l.mp3", target)])).rejected
    assert rejected.reason.startswith("symbolic link to '/ttt") and len(rejected.reason) < 300


def test_rejected_mp3s_lists_only_mp3s(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [SymlinkEntry("a.mp3", "x"), SymlinkEntry("b.parquet", "x")])
    listing = scan(archive)
    assert [r.name for r in listing.rejected_mp3s] == ["a.mp3"]
    assert len(listing.rejected) == 2


def test_a_rejected_first_copy_still_makes_the_second_a_duplicate(tmp_path):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"x" * 10_001), ("a.mp3", b"small")])
    listing = scan(archive)
    assert listing.members == ()
    reasons = [r.reason.split(" (")[0] for r in listing.rejected]
    assert reasons == ["larger than the 10000 byte limit", "duplicate member name"]


@pytest.mark.parametrize("pax", [False, True], ids=["gnu-sparse", "pax-sparse"])
def test_sparse_members_are_rejected(tmp_path, pax):
    if pax:
        sparse = pax_header_blocks({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "9"})
        sparse += entry_blocks(("s.mp3", b"1\n0\n9\n".ljust(512, b"\0")))
    else:
        sparse = raw_header("s.mp3", tarfile.GNUTYPE_SPARSE, 0)
    archive = write_raw_tar(tmp_path / "batch.tar", [sparse, entry_blocks(("good.mp3", b"good"))])
    assert accepted_and_rejected(scan(archive)) == (["good.mp3"], [("s.mp3", "mp3", SPARSE)])


# --- oversized extended headers: discarded in bounded memory, the member rejected -------------


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda path, then: gnu_long_name_bomb(path, MiB, then), "member name header of 1048576 bytes"),
        (lambda path, then: gnu_long_name_bomb(path, MiB, then, link=True), "link target header of 1048576 bytes"),
        (lambda path, then: pax_header_bomb(path, MiB, then), "PAX header of 1048576 bytes"),
        (lambda path, then: pax_header_bomb(path, MiB, then, global_header=True), "global PAX header of 1048576 bytes"),
    ],
    ids=["gnu-long-name", "gnu-long-link", "pax", "pax-global"],
)
def test_an_oversized_extended_header_rejects_its_member(tmp_path, tone, build, reason):
    archive = build(tmp_path / "bomb.tar.gz", [("victim.mp3", b"victim"), ("good.mp3", tone)])
    listing = scan(archive, ArchiveLimits())
    assert [(m.name, m.sha256) for m in listing.members] == [("good.mp3", sha256(tone.read_bytes()))]
    assert [(r.name, r.kind, r.reason) for r in listing.rejected] == [
        ("victim.mp3", "mp3", f"{reason} exceeds the 65536-byte limit"),
    ]


def test_headers_under_the_cap_are_applied(tmp_path):
    archive = write_raw_tar(
        tmp_path / "batch.tar",
        [
            pax_header_blocks({"comment": "c" * 60_000, "path": "clips/from-pax.mp3"}),
            entry_blocks(("x", b"1")),
            entry_blocks(("clips/" + "n" * 200 + ".mp3", b"2")),  # build_tar's GNU 'L' header
        ],
    )
    assert [m.name for m in scan(archive).members] == ["clips/from-pax.mp3", "clips/" + "n" * 200 + ".mp3"]


def test_pax_records_are_parsed_in_linear_time(tmp_path):
    # 60 KiB of digits: CPython 3.11.7's own parser backtracks quadratically on it (~10 s).
    digits = raw_header("././@PaxHeader", tarfile.XHDTYPE, 60_000) + b"1" * 60_000 + bytes(-60_000 % 512)
    archive = write_raw_tar(tmp_path / "batch.tar", [entry_blocks(("a.mp3", b"a")), digits, entry_blocks(("b", b""))])
    started = time.monotonic()
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt tar"):
        scan(archive)
    assert time.monotonic() - started < 2


def test_a_chain_of_extended_headers_is_unreadable_not_a_recursion_error(tmp_path):
    chain = [pax_header_blocks({"comment": str(n)}) for n in range(2000)]
    archive = write_raw_tar(tmp_path / "batch.tar", [entry_blocks(("a.mp3", b"a")), *chain, entry_blocks(("b", b""))])
    with pytest.raises(ArchiveUnreadable, match="more than 8 extended headers in a row"):
        scan(archive)


def test_global_pax_headers_may_not_add_up_past_the_cap(tmp_path):
    headers = [pax_header_blocks({f"key{n}": "v" * 30_000}, global_header=True) for n in range(3)]
    members = [entry_blocks((f"{n}.mp3", b"x")) for n in range(3)]
    archive = write_raw_tar(tmp_path / "batch.tar", [x for pair in zip(headers, members) for x in pair])
    with pytest.raises(ArchiveRefused, match="global PAX headers add up to more than the 65536-byte limit"):
        scan(archive, ArchiveLimits())


# --- archive-wide caps: refused as soon as crossed --------------------------------------------


def test_more_members_than_max_members_is_refused(tmp_path):
    archive = many_members(tmp_path / "many.tar.gz", 30)
    seen = []
    with pytest.raises(ArchiveRefused, match="more than 10 members"):
        for entry in iter_archive(archive, ArchiveLimits(max_members=10)):
            seen.append(entry.name)
    assert len(seen) == 10
    assert len(scan(archive, ArchiveLimits(max_members=30)).members) == 30


def test_directories_do_not_count_as_members(tmp_path):
    entries = [DirectoryEntry(f"dir{n}") for n in range(20)] + [(f"dir{n}/a.mp3", b"x") for n in range(10)]
    listing = scan(build_tar(tmp_path / "batch.tar", entries), ArchiveLimits(max_members=10))
    assert len(listing.members) == 10


def test_reading_stops_at_the_member_cap(tmp_path):
    # Damage after the cap is never reached: refused (not "unreadable" for the damage).
    archive = truncate_file(many_members(tmp_path / "many.tar", 100, gzip=False), keep_fraction=0.5)
    with pytest.raises(ArchiveRefused):
        scan(archive, ArchiveLimits(max_members=10))


@pytest.mark.parametrize("gzip", [False, True], ids=["tar", "tar.gz"])
def test_max_total_bytes_counts_the_whole_inflated_stream(tmp_path, gzip):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", b"x" * 3000)], gzip=gzip)
    size = len(build_tar(tmp_path / "plain.tar", [("a.mp3", b"x" * 3000)]).read_bytes())  # headers, padding
    assert len(scan(archive, ArchiveLimits(max_total_bytes=size)).members) == 1
    with pytest.raises(ArchiveRefused, match=f"the tar stream is larger than the {size - 1}-byte limit"):
        scan(archive, ArchiveLimits(max_total_bytes=size - 1))


def test_reading_stops_at_the_total_bytes_cap(tmp_path):
    archive = many_members(tmp_path / "fill.tar.gz", 4, member_bytes=MiB, name_format="f{}.bin")
    corrupt_gzip(archive, where="crc")  # only reading to the end would reveal it
    with pytest.raises(ArchiveRefused, match="larger than the 2097152-byte limit"):
        scan(archive, ArchiveLimits(max_total_bytes=2 * MiB))
    with pytest.raises(ArchiveUnreadable, match="corrupt gzip"):
        scan(archive, ArchiveLimits())


def test_tarfile_keeps_no_list_of_members(tmp_path, monkeypatch):
    original_next = tarfile.TarFile.next
    kept = []

    def next_recording(self):
        kept.append(len(self.members))
        return original_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", next_recording)
    scan(many_members(tmp_path / "many.tar", 50, gzip=False))
    # 50 members, the end, and the first member read again from tarfile.open's look-ahead.
    assert len(kept) == 52 and max(kept) <= 1  # 1: that first member


# --- damaged archives: nothing in them can be trusted, so the whole archive fails -------------


def test_truncated_tar_inside_a_member_is_unreadable(tmp_path, tone):
    archive = build_tar(tmp_path / "batch.tar", [("a.mp3", tone), ("b.mp3", tone)])
    truncate_file(archive, keep_fraction=0.5)
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt tar"):
        scan(archive, ArchiveLimits())


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


def test_a_negative_size_is_unreadable(tmp_path):
    header = bytearray(raw_header("a.mp3", tarfile.REGTYPE, 0))
    header[124:136] = b"-0000001000\0"  # octal, as tarfile parses it
    archive = write_raw_tar(tmp_path / "batch.tar", [entry_blocks(("ok.mp3", b"x")), bytes(_with_checksum(header))])
    with pytest.raises(ArchiveUnreadable, match="negative size"):
        scan(archive)


@pytest.mark.parametrize("where", ["crc", "body"])
def test_corrupt_gzip_is_unreadable(tmp_path, tone, where):
    archive = corrupt_gzip(build_tar(tmp_path / "batch.tar.gz", [("a.mp3", tone)], gzip=True), where=where)
    with pytest.raises(ArchiveUnreadable, match="corrupt gzip"):
        scan(archive, ArchiveLimits())


def test_truncated_gzip_is_unreadable(tmp_path, tone):
    archive = truncate_file(build_tar(tmp_path / "batch.tar.gz", [("a.mp3", tone)], gzip=True), 0.9)
    with pytest.raises(ArchiveUnreadable, match="truncated or corrupt gzip data: Compressed file ended"):
        scan(archive, ArchiveLimits())


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


def test_an_mp3_is_not_a_tar(tone):
    with pytest.raises(ArchiveUnreadable, match="not a tar archive"):
        scan(tone)


def _with_checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[148:156] = b"%06o\0 " % sum(header)
    return header


def test_a_forged_huge_size_is_unreadable_at_once(tmp_path):
    # tarfile's own skip over the data of a member claiming 2**80 bytes would spin for ever.
    header = bytearray(raw_header("huge.mp3", tarfile.REGTYPE, 0))
    header[124:136] = b"\x80" + (1 << 80).to_bytes(11, "big")  # base-256 size field
    archive = write_raw_tar(tmp_path / "batch.tar", [entry_blocks(("ok.mp3", b"x")), bytes(_with_checksum(header))])
    started = time.monotonic()
    with pytest.raises(ArchiveUnreadable, match="unexpected end of data"):
        scan(archive)
    assert time.monotonic() - started < 2


# sizes and numbers tarfile reads as negative, huge or base-256; type flags of every kind
_FORGED_VALUES = [b"-1", b"77777777777", b"\xff" * 12, b"\x80" + b"\xff" * 11, *(bytes([t]) for t in b"0SLKxg257Z")]
_HEADER_FIELDS = [(0, 100), (100, 8), (124, 12), (136, 12), (156, 1), (157, 100), (345, 155), (482, 1), (483, 12)]


def test_damaged_headers_give_a_listing_or_archive_unreadable_never_another_error(tmp_path):
    # Random values in every header field (checksums repaired, so tarfile believes them) and in
    # PAX records: whatever tarfile makes of it, callers see a listing or ArchiveUnreadable. A
    # crash would be a retried step, not a recorded bad archive; a hang would hold a worker.
    pieces = [
        pax_header_blocks({"path": "clips/p.mp3", "size": "5", "mtime": "1.5"}),
        entry_blocks(("x", b"12345")),
        pax_header_blocks({"GNU.sparse.major": "1", "GNU.sparse.realsize": "9"}),
        entry_blocks(("s.mp3", b"1\n")),
        entry_blocks(("clips/" + "l" * 150 + ".mp3", b"long")),
        entry_blocks(SymlinkEntry("s.mp3", "t" * 120)),
        raw_header("sparse.mp3", tarfile.GNUTYPE_SPARSE, 0),
        entry_blocks(("ok.mp3", b"ok" * 300)),
    ]
    original = write_raw_tar(tmp_path / "original.tar", pieces).read_bytes()
    headers = [start for start in range(0, len(original), 512) if original[start + 257 : start + 262] == b"ustar"]
    rng = random.Random(11)
    damaged = tmp_path / "damaged.tar"
    outcomes = set()
    for _ in range(500):
        data = bytearray(original)
        header = rng.choice(headers)
        if rng.random() < 0.3:  # the block after a header: a PAX body, a long name, data
            data[header + 512 + rng.randrange(512)] = rng.choice([*b"0123456789 =\n", 0, 0xFF, rng.randrange(256)])
        else:
            offset, length = rng.choice(_HEADER_FIELDS)
            value = rng.choice([*_FORGED_VALUES, rng.randbytes(rng.randint(1, length))])[:length]
            data[header + offset : header + offset + len(value)] = value
            data[header : header + 512] = _with_checksum(data[header : header + 512])
        damaged.write_bytes(bytes(data))
        try:
            scan(damaged, ArchiveLimits(max_member_bytes=10_000, max_header_bytes=4096))
            outcomes.add("listing")
        except ArchiveUnreadable:
            outcomes.add("unreadable")
    assert outcomes == {"listing", "unreadable"}


# --- memory: hostile archives are read in bounded memory ---------------------------------------

_MEASURE = """
import json, sys
from pathlib import Path
from media.tar_safety import ArchiveLimits, ArchiveRefused, scan_archive

try:
    listing = scan_archive(Path(sys.argv[1]), ArchiveLimits(**json.loads(sys.argv[2])))
    outcome = f"{len(listing.members)} accepted, {len(listing.rejected)} rejected"
except ArchiveRefused as exc:
    outcome = f"refused: {exc}"
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_kib": peak_kib, "outcome": outcome}))
"""

PEAK_RSS_BOUND_MIB = 64  # measured: 18-30 MiB for every archive below, 10 MiB for a bare interpreter


def _peak_rss(archive: Path, limits: dict) -> tuple[float, str]:
    """Peak RSS (MiB) of a fresh interpreter scanning `archive`, importing the same copy of
    the package as this test.

    The peak is VmHWM, the high-water mark of the process's own memory since exec: ru_maxrss
    would not do, as Linux carries the parent's (pytest's) peak over into a child across exec."""
    package_root = str(Path(tar_safety.__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(archive), json.dumps(limits)],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)
    return report["peak_kib"] / 1024, report["outcome"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from Linux's /proc")
def test_hostile_archives_are_read_in_bounded_memory(tmp_path):
    then = [("victim.mp3", b"victim"), ("good.mp3", b"good")]
    cases = {
        "200 MiB GNU long-name header": (gnu_long_name_bomb(tmp_path / "gnu.tar.gz", 200 * MiB, then), {}),
        "200 MiB PAX header": (pax_header_bomb(tmp_path / "pax.tar.gz", 200 * MiB, then), {}),
        "100,000 empty .mp3 members": (many_members(tmp_path / "many.tar.gz", 100_000), {}),
        "96 MiB inflated, 64 MiB cap": (
            many_members(tmp_path / "fill.tar.gz", 3, member_bytes=32 * MiB, name_format="f{}.mp3"),
            {"max_total_bytes": 64 * MiB},
        ),
        "baseline: a 3-member archive": (build_tar(tmp_path / "small.tar", then + [("x.mp3", b"x")]), {}),
    }
    expected = {
        "200 MiB GNU long-name header": "1 accepted, 1 rejected",
        "200 MiB PAX header": "1 accepted, 1 rejected",
        "100,000 empty .mp3 members": "refused: more than 20000 members (the limit; directories not counted)",
        "96 MiB inflated, 64 MiB cap": "refused: the tar stream is larger than the 67108864-byte limit",
        "baseline: a 3-member archive": "3 accepted, 0 rejected",
    }
    for label, (archive, limits) in cases.items():
        peak_mib, outcome = _peak_rss(archive, limits)
        print(f"\npeak RSS {peak_mib:6.1f} MiB  {label} ({archive.stat().st_size} bytes on disk): {outcome}")
        assert outcome == expected[label]
        assert peak_mib < PEAK_RSS_BOUND_MIB, label
