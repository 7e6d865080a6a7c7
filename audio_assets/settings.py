"""Run-config knobs of the archive steps, editable in the launchpad; defaults suit short-form
archives (clips of seconds to minutes, thousands per archive).

Binaries are not run config: which ffmpeg runs is the deployment's choice (FFMPEG_BINARY),
never something a launchpad user can point at an arbitrary program.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from media.metadata_rows import MetadataLimits
from media.tar_safety import ArchiveLimits

MIB = 1024 * 1024


def env_default(name: str, default: float) -> float:
    """A cap's default: the environment variable `name` when set, else `default`. Read by the
    process that runs the step when it builds the step's config (a Celery worker's own
    environment), so an operator changes a default without a launchpad edit."""
    value = os.environ.get(name)
    return type(default)(value) if value else default


# Short-form video: clips of seconds to a few minutes. 20 minutes is four times the longest
# clip such platforms take and costs one worker seconds of ffmpeg (5 s measured on 2 cores) and
# of Whisper on a GPU; a longer file is not a clip and would hold its archive's clips back.
DEFAULT_MAX_AUDIO_MINUTES = 20


class FileAttemptsConfig(dg.Config):
    """What the per-file steps (opus_files, transcripts, classifications) share."""

    max_file_attempts: int = Field(
        default_factory=lambda: int(env_default("FILE_MAX_ATTEMPTS", 3)),
        description="A file whose tool crashes, times out or throws is tried this many times, counted "
        "across step retries and runs (default $FILE_MAX_ATTEMPTS or 3), then recorded failed with its "
        "last reason while the others go on; `audio-pipeline requeue` tries it again",
    )


class ArchiveScanConfig(dg.Config):
    """Caps on untrusted archives. A member over a member cap is rejected on its own; an
    archive over an archive cap is refused as a whole (recorded, not retried)."""

    max_member_mb: int = Field(default=200, description="A bigger member is rejected (a 60-min 320 kbps MP3 is 144 MB)")
    max_members: int = Field(default=20_000, description="Regular-file members per archive; more refuses the archive")
    max_total_gb: float = Field(default=8.0, description="Inflated size of the whole tar; more refuses the archive")
    max_header_kb: int = Field(
        default=64, description="One GNU long-name or PAX header; a bigger one rejects its member"
    )
    max_name_bytes: int = Field(default=1024, description="A member path longer than this (UTF-8) is rejected")

    @property
    def limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_member_bytes=self.max_member_mb * MIB,
            max_members=self.max_members,
            max_total_bytes=int(self.max_total_gb * 1024 * MIB),
            max_header_bytes=self.max_header_kb * 1024,
            max_name_bytes=self.max_name_bytes,
        )


class MetadataConfig(ArchiveScanConfig):
    """Caps on each parquet member; one over a cap is refused and recorded, the others go on."""

    max_metadata_rows: int = Field(
        default_factory=lambda: int(env_default("METADATA_MAX_ROWS", 100_000)),
        description="Rows per parquet file (default $METADATA_MAX_ROWS or 100,000: one row per clip, "
        "five times the member cap); more refuses the file from its footer, before decoding",
    )
    max_metadata_inflated_mb: int = Field(
        default_factory=lambda: int(env_default("METADATA_MAX_INFLATED_MB", 256)),
        description="Uncompressed column data per parquet file (default $METADATA_MAX_INFLATED_MB or 256)",
    )
    max_metadata_archive_mb: int = Field(
        default_factory=lambda: int(env_default("METADATA_MAX_ARCHIVE_MB", 512)),
        description="The same, for all of an archive's parquet files together (default $METADATA_MAX_ARCHIVE_MB "
        "or 512); the file that crosses it and every file after it are refused",
    )
    max_metadata_row_kb: int = Field(
        default_factory=lambda: int(env_default("METADATA_MAX_ROW_KB", 64)),
        description="One row as stored, an MP3's metadata document in JSON, and so any one value in it "
        "(default $METADATA_MAX_ROW_KB or 64); a file with a longer one is refused",
    )

    @property
    def metadata_limits(self) -> MetadataLimits:
        return MetadataLimits(
            max_rows=self.max_metadata_rows,
            max_inflated_bytes=self.max_metadata_inflated_mb * MIB,
            max_row_bytes=self.max_metadata_row_kb * 1024,
        )


class OpusConversionConfig(ArchiveScanConfig, FileAttemptsConfig):
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Parallel ffmpeg conversions (one core each)",
    )
    upload_workers: int = Field(default=8, description="Parallel uploads to the object store")
    bitrate_kbps: int = Field(default=32, description="Opus bitrate; 32 kbps mono loses no ASR accuracy")
    duration_tolerance_s: float = Field(
        default=0.25, description="Allowed |opus - source| duration difference before a file fails"
    )
    files_per_commit: int = Field(
        default=64, description="Results are committed every this many files: a lost worker redoes at most these"
    )
    max_audio_minutes: float = Field(
        default_factory=lambda: env_default("AUDIO_MAX_MINUTES", float(DEFAULT_MAX_AUDIO_MINUTES)),
        description="A longer file fails before it is decoded (default $AUDIO_MAX_MINUTES or 20)",
    )
    ffmpeg_timeout_s: float = Field(
        default_factory=lambda: env_default("FFMPEG_TIMEOUT_S", 300.0),
        description="Wall time of one file's ffmpeg (default $FFMPEG_TIMEOUT_S or 300); "
        "past it the file is tried again, up to max_file_attempts",
    )
    reconvert: bool = Field(
        default=False,
        description="Convert again files that already have an Opus object for this archive version "
        "(e.g. after changing the bitrate); by default they are skipped",
    )
