"""Find an ffmpeg that can encode Opus.

Production hosts usually have a system ffmpeg; test machines and the demo rely on the static
build in the `imageio-ffmpeg` wheel. Distribution builds of ffmpeg sometimes lack libopus,
so every candidate is checked for the encoder rather than trusted by name.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

FFMPEG_ENV_VAR = "FFMPEG_BINARY"


class FFmpegNotFound(RuntimeError):
    """No usable ffmpeg (one with the libopus encoder) could be found."""


def resolve_ffmpeg(configured: str | None = None) -> str:
    """Path of the ffmpeg to use: `configured` > $FFMPEG_BINARY > ffmpeg on PATH with libopus
    > the imageio-ffmpeg bundled binary.

    An explicitly configured binary (argument or environment) that is missing or lacks libopus
    raises instead of falling back silently: a typo in configuration should be loud.
    """
    for origin, explicit in (("configured", configured), (f"${FFMPEG_ENV_VAR}", os.environ.get(FFMPEG_ENV_VAR))):
        if explicit:
            return _checked(explicit, origin)
    on_path = shutil.which("ffmpeg")
    if on_path and has_libopus(on_path):
        return on_path
    return _bundled_ffmpeg()


def _checked(candidate: str, origin: str) -> str:
    # A bare name such as "ffmpeg" is looked up on PATH; a path must exist as given.
    path = shutil.which(candidate) if os.sep not in candidate else candidate
    if not path or not Path(path).is_file():
        raise FFmpegNotFound(f"{origin} ffmpeg {candidate!r} does not exist")
    if not has_libopus(path):
        raise FFmpegNotFound(f"{origin} ffmpeg {candidate!r} has no libopus encoder")
    return path


def _bundled_ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise FFmpegNotFound("no ffmpeg with libopus on PATH and imageio-ffmpeg is not installed") from exc
    try:
        bundled = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise FFmpegNotFound(f"imageio-ffmpeg has no binary for this platform: {exc}") from exc
    if not has_libopus(bundled):
        raise FFmpegNotFound(f"bundled ffmpeg {bundled} has no libopus encoder")
    return bundled


@functools.cache
def has_libopus(ffmpeg: str) -> bool:
    """Whether `ffmpeg -encoders` lists libopus. Cached: the answer cannot change while the
    process runs, and the check costs a process start per call otherwise."""
    try:
        listing = subprocess.run(
            [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if listing.returncode != 0:
        return False
    # Rows look like " A....D libopus   libopus Opus (codec opus)"; the name is the 2nd field.
    return any(line.split()[1:2] == ["libopus"] for line in listing.stdout.splitlines())
