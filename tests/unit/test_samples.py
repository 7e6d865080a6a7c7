"""The bundled demo archives are what references.json says they are, and pass the pipeline's
own pure checks (safe members, convertible clips, metadata joined)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from archive_factory import ffmpeg_exe

from audio_assets.audio.metadata_rows import join_metadata, read_metadata_table
from audio_assets.audio.opus_convert import convert_to_opus
from audio_assets.audio.tar_safety import scan_archive

SAMPLES = Path(__file__).resolve().parents[2] / "audio_assets" / "samples"
REFERENCES = json.loads((SAMPLES / "references.json").read_text())


def extracting(*kinds: str, to: Path) -> dict:
    return dict(max_member_bytes=1 << 20, extract_to=to, extract_kinds=frozenset(kinds))


@pytest.mark.parametrize("archive_name", sorted(REFERENCES))
def test_sample_archive_matches_its_references(tmp_path, archive_name):
    listing = scan_archive(SAMPLES / archive_name, **extracting("mp3", "parquet", to=tmp_path))
    assert listing.rejected == ()
    assert sorted(m.name for m in listing.mp3s) == sorted(REFERENCES[archive_name])
    for member in listing.mp3s:
        result = convert_to_opus(member.path, tmp_path / f"{member.path.stem}.opus", ffmpeg=ffmpeg_exe())
        assert 2.0 <= result.source_duration_s <= 5.0
    tables = [(p.name, read_metadata_table(p.path)) for p in listing.parquets]
    join = join_metadata([m.name for m in listing.mp3s], tables)
    assert join.mp3s_without_row == [] and join.duplicate_meta_ids == [] and join.ambiguous_stems == []


def test_first_batch_has_a_human_voice_an_insult_and_an_orphan_row(tmp_path):
    archive = "batch_2026_11_01.tar.gz"
    assert REFERENCES[archive]["clips/goforward.mp3"] == "go forward ten meters"
    assert any("stupid idiot" in text for text in REFERENCES[archive].values())
    listing = scan_archive(SAMPLES / archive, **extracting("parquet", to=tmp_path))
    (parquet,) = listing.parquets
    join = join_metadata([m.name for m in listing.mp3s], [(parquet.name, read_metadata_table(parquet.path))])
    assert join.rows_without_mp3 == [("metadata.parquet", "clip_0099")]
    values = join.matched["clips/goforward.mp3"].values
    assert set(values) == {"meta_id", "posted_at", "creator", "hashtags", "like_ratio"}
    assert values["posted_at"].endswith("+00:00") and values["like_ratio"] == "0.7500"


def test_committed_binaries_stay_small():
    files = [*SAMPLES.glob("*.tar*"), *SAMPLES.glob("parts/*")]
    assert sum(f.stat().st_size for f in files) < 400_000
