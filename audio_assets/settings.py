"""Run-config knobs of the archive steps, editable in the launchpad; defaults suit production."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field


class ArchiveScanConfig(dg.Config):
    max_member_mb: int = Field(default=512, description="Members larger than this are rejected")

    @property
    def max_member_bytes(self) -> int:
        return self.max_member_mb * 1024 * 1024


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
    ffmpeg_path: str | None = Field(default=None, description="ffmpeg binary; default: system or bundled")
