"""resolve_ffmpeg: explicit configuration wins and must be usable; otherwise a working default."""

from __future__ import annotations

import os
import stat

import imageio_ffmpeg
import pytest

from media.ffmpeg_binary import FFmpegNotFound, has_libopus, resolve_ffmpeg

BUNDLED = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture
def ffmpeg_without_opus(tmp_path):
    """A script that behaves like an ffmpeg built without libopus."""
    script = tmp_path / "ffmpeg"
    script.write_text("#!/bin/sh\necho ' V....D libx264   H.264'\necho ' A....D aac       AAC'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_bundled_ffmpeg_has_libopus():
    assert has_libopus(BUNDLED)


def test_binary_without_libopus_or_missing_is_detected(ffmpeg_without_opus, tmp_path):
    assert not has_libopus(ffmpeg_without_opus)
    assert not has_libopus(str(tmp_path / "no-such-ffmpeg"))
    assert not has_libopus("/bin/false")


def test_configured_path_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FFMPEG_BINARY", str(tmp_path / "ignored"))
    assert resolve_ffmpeg(BUNDLED) == BUNDLED


def test_environment_variable_is_used(monkeypatch):
    monkeypatch.setenv("FFMPEG_BINARY", BUNDLED)
    assert resolve_ffmpeg() == BUNDLED


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_unusable_explicit_choice_fails_loudly(monkeypatch, tmp_path, ffmpeg_without_opus, how):
    for bad, reason in ((str(tmp_path / "nope"), "does not exist"), (ffmpeg_without_opus, "has no libopus")):
        monkeypatch.setenv("FFMPEG_BINARY", bad if how == "environment" else "")
        with pytest.raises(FFmpegNotFound, match=reason):
            resolve_ffmpeg(bad if how == "argument" else None)


def test_default_is_an_ffmpeg_with_libopus(monkeypatch, tmp_path, ffmpeg_without_opus):
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    # An ffmpeg on PATH without libopus is skipped in favour of the bundled one.
    monkeypatch.setenv("PATH", f"{os.path.dirname(ffmpeg_without_opus)}{os.pathsep}{os.environ['PATH']}")
    resolved = resolve_ffmpeg()
    assert resolved != ffmpeg_without_opus and has_libopus(resolved)
