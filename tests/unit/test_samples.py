"""The bundled demo archives are what references.json says they are, and pass the pipeline's
own pure checks (safe members, convertible clips, metadata joined)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from media.metadata_rows import join_metadata, read_metadata_table
from media.opus_convert import convert_to_opus
from media.tar_safety import ArchiveLimits, iter_archive, scan_archive
from testing.archive_factory import ffmpeg_exe

SAMPLES = Path(__file__).resolve().parents[2] / "operations" / "samples"
REFERENCES = json.loads((SAMPLES / "references.json").read_text())
LIMITS = ArchiveLimits(max_member_bytes=1 << 20)


def copy_out(archive: Path, kinds: set[str], to: Path) -> dict[str, Path]:
    """Accepted members of `kinds`, copied to paths of our own choosing: name -> path."""
    copies = {}
    for number, entry in enumerate(iter_archive(archive, LIMITS)):
        if entry.rejection is None and entry.kind in kinds:
            path = to / f"{number}.{entry.kind}"
            entry.copy_to(path)
            copies[entry.name] = path
    return copies


@pytest.mark.parametrize("archive_name", sorted(REFERENCES))
def test_sample_archive_matches_its_references(tmp_path, archive_name):
    listing = scan_archive(SAMPLES / archive_name, LIMITS)
    assert listing.rejected == ()
    assert sorted(m.name for m in listing.mp3s) == sorted(REFERENCES[archive_name])
    assert all(m.sha256 is not None for m in listing.mp3s)
    copies = copy_out(SAMPLES / archive_name, {"mp3", "parquet"}, tmp_path)
    for member in listing.mp3s:
        target = tmp_path / f"{copies[member.name].stem}.opus"
        result = convert_to_opus(copies[member.name], target, ffmpeg=ffmpeg_exe())
        assert 2.0 <= result.source_duration_s <= 5.0
    tables = [(p.name, read_metadata_table(copies[p.name])) for p in listing.parquets]
    join = join_metadata([m.name for m in listing.mp3s], tables)
    assert join.mp3s_without_row == [] and join.duplicate_meta_ids == [] and join.ambiguous_stems == []


def test_first_batch_has_a_human_voice_an_insult_and_an_orphan_row(tmp_path):
    archive = "batch_2026_11_01.tar.gz"
    assert REFERENCES[archive]["clips/goforward.mp3"] == "go forward ten meters"
    assert any("stupid idiot" in text for text in REFERENCES[archive].values())
    listing = scan_archive(SAMPLES / archive, LIMITS)
    ((parquet_name, parquet_path),) = copy_out(SAMPLES / archive, {"parquet"}, tmp_path).items()
    join = join_metadata([m.name for m in listing.mp3s], [(parquet_name, read_metadata_table(parquet_path))])
    assert join.rows_without_mp3 == [("metadata.parquet", "clip_0099")]
    values = join.matched["clips/goforward.mp3"].values
    assert set(values) == {"meta_id", "posted_at", "creator", "hashtags", "like_ratio"}
    assert values["posted_at"].endswith("+00:00") and values["like_ratio"] == "0.7500"


def test_committed_binaries_stay_small():
    files = [*SAMPLES.glob("*.tar*"), *SAMPLES.glob("parts/*")]
    assert sum(f.stat().st_size for f in files) < 400_000
