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

from media.ogg_integrity import DamagedOggFile, verified_opus_duration

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
_NO_MESSAGE = "ffmpeg failed without a message"
# ffmpeg's words for a problem of the host (scratch full, output folder gone), not of the file.
_HOST_PROBLEMS = ("No space left on device", "Error opening output")


# The source's container, named to ffmpeg and PyAV instead of probed: the members converted are
# MP3s, and a member named .mp3 must not get any other demuxer (a playlist that opens other
# files or URLs, a container with a codec nobody meant to expose) by what its bytes look like.
SOURCE_FORMAT = "mp3"

# ffmpeg may write this much past the duration cap (`-t`), so a file whose header understates
# its length is still seen to be over the cap, while a lying header cannot make it decode hours.
CAP_MARGIN_S = 5.0


class ConversionError(Exception):
    """The file cannot become a trustworthy Opus file. str() is a short reason for a person
    reading the `error` column, e.g. "empty file (0 bytes)".

    `transient`: nothing proves the file's bytes at fault (ffmpeg crashed or was killed by a
    signal, ran out of time, stopped without a message): maybe the host, maybe the file, so it
    is tried again a bounded number of times. False: a property of the input (not decodable,
    damaged, over the duration cap). A problem of the host itself (ffmpeg cannot start, scratch
    is full) is an OSError, never this."""

    def __init__(self, reason: str, *, transient: bool = False):
        super().__init__(reason)
        self.transient = transient


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
    max_seconds: float | None = None,
) -> OpusConversion:
    """Encode `source` to Ogg Opus at `target` and check the result; on any failure raise
    ConversionError and leave no `target` behind. `max_seconds`: longer audio is refused,
    before decoding when its header says so, else once ffmpeg passes the cap (it is stopped
    CAP_MARGIN_S later, whatever the header claimed)."""
    source, target = Path(source), Path(target)
    job = _Job(ffmpeg, bitrate_kbps, channels, duration_tolerance_s, timeout_s, max_seconds)
    try:
        return _convert_and_check(source, target, job)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _Job:
    ffmpeg: str
    bitrate_kbps: int
    channels: int
    tolerance_s: float
    timeout_s: float
    max_seconds: float | None


def _convert_and_check(source: Path, target: Path, job: _Job) -> OpusConversion:
    if source.stat().st_size == 0:
        raise ConversionError("empty file (0 bytes)")
    declared_s = _declared_duration(source)
    cap = job.max_seconds
    if cap is not None and declared_s is not None and declared_s > cap and demuxed_seconds(source, cap) > cap:
        raise over_the_cap(declared_s, cap)  # the frames agree with the header: refused undecoded
    ffmpeg_warnings = _run_ffmpeg(source, target, job)
    try:
        opus_s = verified_opus_duration(target)
    except DamagedOggFile as exc:
        raise ConversionError(f"opus output is damaged: {exc}") from None
    if cap is not None and opus_s > cap + job.tolerance_s:
        # The header understated it; ffmpeg was stopped CAP_MARGIN_S past the cap, or nearly.
        raise over_the_cap(opus_s, cap, at_least=opus_s >= cap + CAP_MARGIN_S - 1)
    if declared_s is None or _ESTIMATED_DURATION in ffmpeg_warnings:
        source_s = decoded_duration_seconds(
            source, stop_after_s=None if cap is None else cap + CAP_MARGIN_S, format=SOURCE_FORMAT
        )
    else:
        source_s = declared_s
    tolerance_s = job.tolerance_s
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
        with av.open(str(source), format=SOURCE_FORMAT) as container:
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


def over_the_cap(seconds: float, cap_s: float, *, at_least: bool = False) -> ConversionError:
    """The reason a file over the duration cap fails, e.g. "audio is 4 h 0 min, over the
    20 min cap (max_audio_minutes)"."""
    length = f"longer than {duration_text(seconds)}" if at_least else duration_text(seconds)
    return ConversionError(f"audio is {length}, over the {duration_text(cap_s)} cap (max_audio_minutes)")


def duration_text(seconds: float) -> str:
    """4 h 0 min, 20 min, 20 min 5 s: how a person reads a length."""
    whole = int(seconds)
    hours, minutes, rest = whole // 3600, whole % 3600 // 60, whole % 60
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _run_ffmpeg(source: Path, target: Path, job: _Job) -> str:
    """Run the encode; returns ffmpeg's warnings (stderr). Warning level, not error level,
    because "Estimating duration from bitrate" is a warning and decides how to check."""
    limit = {} if job.max_seconds is None else {"t": f"{job.max_seconds + CAP_MARGIN_S:g}"}
    command = (
        ffmpeg_cli.input(str(source), format=SOURCE_FORMAT)
        .output(
            str(target),
            format="opus",
            acodec="libopus",
            audio_bitrate=f"{job.bitrate_kbps}k",
            ac=job.channels,
            vn=None,
            **limit,
        )
        .global_args("-nostdin", "-hide_banner", "-loglevel", "warning")
        .overwrite_output()
        .compile(cmd=job.ffmpeg)
    )
    try:
        run = subprocess.run(command, capture_output=True, timeout=job.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"ffmpeg did not finish within {job.timeout_s:g} s", transient=True) from None
    # OSError from subprocess (cannot fork or exec: out of memory, too many processes) is the
    # host's state and goes up as it is.
    stderr = run.stderr.decode("utf-8", "replace")
    if run.returncode < 0:  # a crash (SIGSEGV on a malformed frame) or a kill (OOM, node drain)
        raise ConversionError(f"ffmpeg was killed by signal {-run.returncode}", transient=True)
    if run.returncode != 0:
        reason = last_meaningful_line(stderr)
        if any(problem in stderr for problem in _HOST_PROBLEMS):
            raise OSError(f"ffmpeg could not write its output: {reason}")
        # No reason at all is what ffmpeg leaves when it stops itself on SIGTERM (exit 255):
        # nothing says the file is at fault, so it is tried again.
        raise ConversionError(f"ffmpeg failed: {reason}", transient=reason == _NO_MESSAGE)
    return stderr


def last_meaningful_line(stderr: str) -> str:
    """The line of ffmpeg's stderr that best says why it failed: the last one that is not a
    generic epilogue, without the "[codec @ 0x...]" prefix."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_NOT_A_REASON)]
    return reasons[-1] if reasons else _NO_MESSAGE


def demuxed_seconds(path: Path, stop_after_s: float, format: str = SOURCE_FORMAT) -> float:
    """Seconds of audio the file's frames add up to, read from the frame headers without
    decoding (a 4-hour MP3 in milliseconds); counting stops once past `stop_after_s`. Frames
    without a duration make it fall back to decoding, bounded the same way."""
    try:
        with av.open(str(path), format=format) as container:
            stream = container.streams.audio[0]
            seconds = 0.0
            for packet in container.demux(stream):
                if packet.dts is None:  # the flush packet at the end
                    continue
                if not packet.duration or packet.time_base is None:
                    return decoded_duration_seconds(path, stop_after_s=stop_after_s, format=format)
                seconds += float(packet.duration * packet.time_base)
                if seconds > stop_after_s:
                    break
            return seconds
    except av.FFmpegError as exc:
        raise ConversionError(f"not decodable audio: {_av_reason(exc)}") from None


def decoded_duration_seconds(path: Path, stop_after_s: float | None = None, format: str | None = None) -> float:
    """Seconds of audio `path` really holds: every packet decoded with PyAV, samples counted,
    until past `stop_after_s` when given; `format`: its container (probed when None). A packet that fails to decode is skipped, as ffmpeg
    itself does (a concatenated MP3 has one at each seam); a file with no audio stream or
    nothing decodable raises ConversionError."""
    try:
        with av.open(str(path), format=format) as container:
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
                if stop_after_s is not None and samples > stop_after_s:
                    break
    except av.FFmpegError as exc:
        raise ConversionError(f"not decodable audio: {_av_reason(exc)}") from None
    if failed and not samples:
        raise ConversionError("not decodable audio: no packet decodes")
    return float(samples)


def _av_reason(exc: av.FFmpegError) -> str:
    # str(exc) carries an errno and the file path; the message alone is what a person needs.
    return exc.strerror or str(exc)
