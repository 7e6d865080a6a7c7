"""Run-config knobs of the archive steps, editable in the launchpad; defaults suit short-form
archives (clips of seconds to minutes, thousands per archive).

Binaries are not run config: which ffmpeg runs is the deployment's choice (FFMPEG_BINARY),
never something a launchpad user can point at an arbitrary program.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from audio_assets.audio.tar_safety import ArchiveLimits

MIB = 1024 * 1024


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


class OpusConversionConfig(ArchiveScanConfig):
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
    reconvert: bool = Field(
        default=False,
        description="Convert again files that already have an Opus object for this archive version "
        "(e.g. after changing the bitrate); by default they are skipped",
    )
