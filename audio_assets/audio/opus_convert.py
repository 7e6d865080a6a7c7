"""Convert one audio file (normally an MP3) to Ogg Opus with ffmpeg, and prove the result whole.

Cost matters: this runs once per file on millions of files and must stay within 10 % of a bare
`ffmpeg -i x.mp3 -c:a libopus y.opus`. Measured here (2 cores), the encode costs 4-12 ms per
second of audio plus ~16 ms to start ffmpeg; decoding the Opus output with PyAV would add
~1.4 ms per second (ratio ~0.88, too much), so the checks below avoid decoding:

* How long the source *should* be comes from its header (a PyAV probe, ~0.3 ms). Only the
  header can reveal a file cut short: decoding a truncated MP3 just stops early, silently.
  When ffmpeg warns that the header held no duration and it guessed one from the bitrate (VBR
  MP3 without a Xing/VBRI tag, concatenated MP3s, ADTS), the guess can be off by seconds, so
  the source is decoded instead: exact, slower, and only for those files.
* The output is checked page by page (ogg_integrity): every page's CRC, the page sequence and
  the end-of-stream flag prove the bytes on disk are complete and intact, and the last granule
  position is the exact number of samples libopus produced (~0.01 ms per second of audio).
  The packets inside come straight from libopus, so decoding them again would only re-prove
  the encoder.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg as ffmpeg_cli

from audio_assets.audio.ogg_integrity import DamagedOggFile, verified_opus_duration

# Measured on 288 MP3s (espeak speech, tones, a human voice; 8-44.1 kHz; CBR and VBR; with and
# without Xing/LAME headers; 0.3-60 s) the output length differs from the reference by at
# most 0.04 ms: the LAME header states the length after encoder delay and padding are trimmed,
# and without one the decoded length is used. The largest legitimate difference found is one
# dropped MP3 frame (26-72 ms, by sample rate) at each seam of a concatenated file. 0.25 s
# leaves room for three such seams at 8 kHz, and still fails a file missing a quarter second.
DEFAULT_DURATION_TOLERANCE_S = 0.25

# Less than this is "no audio" (a header-only MP3, a few stray frames): shorter than any word,
# so nothing a transcriber or a moderator could use.
MIN_AUDIO_SECONDS = 0.1

_ESTIMATED_DURATION = "Estimating duration from bitrate"
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*")  # "[in#0/mp3 @ 0x55...] "
_NOT_A_REASON = ("Conversion failed!", "Exiting normally")


class ConversionError(Exception):
    """The file cannot become a trustworthy Opus file. str() is a short reason for a person
    reading the `error` column, e.g. "empty file (0 bytes)"."""


@dataclass(frozen=True)
class OpusConversion:
    source_duration_s: float
    opus_duration_s: float
    opus_bytes: int
    opus_path: Path


def convert_to_opus(
    source: Path,
    target: Path,
    *,
    ffmpeg: str,
    bitrate_kbps: int = 32,
    channels: int = 1,
    duration_tolerance_s: float = DEFAULT_DURATION_TOLERANCE_S,
    timeout_s: float = 300,
) -> OpusConversion:
    """Encode `source` to Ogg Opus at `target` and check the result; on any failure raise
    ConversionError and leave no `target` behind."""
    source, target = Path(source), Path(target)
    try:
        return _convert_and_check(source, target, ffmpeg, bitrate_kbps, channels, duration_tolerance_s, timeout_s)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _convert_and_check(source, target, ffmpeg, bitrate_kbps, channels, tolerance_s, timeout_s) -> OpusConversion:
    if source.stat().st_size == 0:
        raise ConversionError("empty file (0 bytes)")
    declared_s = _declared_duration(source)
    ffmpeg_warnings = _run_ffmpeg(source, target, ffmpeg, bitrate_kbps, channels, timeout_s)
    try:
        opus_s = verified_opus_duration(target)
    except DamagedOggFile as exc:
        raise ConversionError(f"opus output is damaged: {exc}") from None
    if declared_s is None or _ESTIMATED_DURATION in ffmpeg_warnings:
        source_s = decoded_duration_seconds(source)  # the header only guessed; measure instead
    else:
        source_s = declared_s
    if min(source_s, opus_s) < MIN_AUDIO_SECONDS:
        raise ConversionError(f"no audio: decodes to {min(source_s, opus_s):.2f} s")
    if abs(opus_s - source_s) > tolerance_s:
        raise ConversionError(
            f"output duration {opus_s:.2f} s differs from source {source_s:.2f} s by more than {tolerance_s:.2f} s"
        )
    return OpusConversion(
        source_duration_s=source_s, opus_duration_s=opus_s, opus_bytes=target.stat().st_size, opus_path=target
    )


def _declared_duration(source: Path) -> float | None:
    """Duration stated by the file's header (None when it states none); opening the file is
    also the cheapest test that it is audio at all."""
    try:
        with av.open(str(source)) as container:
            if not container.streams.audio:
                raise ConversionError("no audio stream")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            return None
    except av.FFmpegError as exc:
        raise ConversionError(f"not decodable audio: {_av_reason(exc)}") from None


def _run_ffmpeg(source, target, ffmpeg, bitrate_kbps, channels, timeout_s) -> str:
    """Run the encode; returns ffmpeg's warnings (stderr). Warning level, not error level,
    because "Estimating duration from bitrate" is a warning and decides how to check."""
    command = (
        ffmpeg_cli.input(str(source))
        .output(str(target), format="opus", acodec="libopus", audio_bitrate=f"{bitrate_kbps}k", ac=channels, vn=None)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "warning")
        .overwrite_output()
        .compile(cmd=ffmpeg)
    )
    try:
        run = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"ffmpeg did not finish within {timeout_s:g} s") from None
    stderr = run.stderr.decode("utf-8", "replace")
    if run.returncode != 0:
        raise ConversionError(f"ffmpeg failed: {last_meaningful_line(stderr)}")
    return stderr


def last_meaningful_line(stderr: str) -> str:
    """The line of ffmpeg's stderr that best says why it failed: the last one that is not a
    generic epilogue, without the "[codec @ 0x...]" prefix."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_NOT_A_REASON)]
    return reasons[-1] if reasons else "ffmpeg failed without a message"


def decoded_duration_seconds(path: Path) -> float:
    """Seconds of audio `path` really holds: every packet decoded with PyAV, samples counted.
    A packet that fails to decode is skipped, as ffmpeg itself does (a concatenated MP3 has
    one at each seam); a file with no audio stream or nothing decodable raises ConversionError."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ConversionError("no audio stream")
            stream = container.streams.audio[0]
            samples, failed = Fraction(0), 0
            for packet in container.demux(stream):
                try:
                    frames = stream.codec_context.decode(packet)
                except av.InvalidDataError:
                    failed += 1
                    continue
                samples += sum((Fraction(f.samples, f.sample_rate) for f in frames), Fraction(0))
    except av.FFmpegError as exc:
        raise ConversionError(f"not decodable audio: {_av_reason(exc)}") from None
    if failed and not samples:
        raise ConversionError("not decodable audio: no packet decodes")
    return float(samples)


def _av_reason(exc: av.FFmpegError) -> str:
    # str(exc) carries an errno and the file path; the message alone is what a person needs.
    return exc.strerror or str(exc)
