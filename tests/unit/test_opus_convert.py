"""convert_to_opus with the real bundled ffmpeg on real files, good and bad."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import av
import pytest

from media import opus_convert
from media.opus_convert import (
    DEFAULT_DURATION_TOLERANCE_S,
    ConversionError,
    convert_to_opus,
    decoded_duration_seconds,
)
from testing.archive_factory import ffmpeg_exe, make_speech_mp3, make_tone_mp3, truncate_file

HUMAN_VOICE = Path(__file__).resolve().parents[2] / "operations" / "samples" / "parts" / "goforward.wav"


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_exe()


@pytest.fixture(scope="module")
def speech_mp3(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "speech.mp3"
    return make_speech_mp3(path, "Just finished my morning run by the river, the weather was perfect today.")


def encode_mp3(source: Path, target: Path, *extra: str) -> Path:
    """Re-encode with extra ffmpeg output options, e.g. a VBR file without a Xing header."""
    command = [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(source), "-ac", "1", "-c:a", "libmp3lame"]
    subprocess.run([*command, *extra, str(target)], check=True)
    return target


def assert_whole_opus(result, source_seconds: float) -> None:
    assert abs(result.source_duration_s - source_seconds) < 0.01
    assert abs(result.opus_duration_s - result.source_duration_s) <= DEFAULT_DURATION_TOLERANCE_S
    assert result.opus_bytes == result.opus_path.stat().st_size > 0
    # convert_to_opus checks pages, not audio; prove here that the file also decodes, fully.
    assert decoded_duration_seconds(result.opus_path) == pytest.approx(result.opus_duration_s, abs=0.001)
    with av.open(str(result.opus_path)) as container:
        assert container.format.name == "ogg"
        assert container.streams.audio[0].codec_context.name == "opus"


def test_tone_mp3_converts_and_output_decodes(tmp_path, ffmpeg):
    source = make_tone_mp3(tmp_path / "tone.mp3", seconds=2.0)
    result = convert_to_opus(source, tmp_path / "tone.opus", ffmpeg=ffmpeg)
    assert_whole_opus(result, source_seconds=2.0)
    assert result.opus_path == tmp_path / "tone.opus"


def test_speech_mp3_converts(tmp_path, ffmpeg, speech_mp3):
    result = convert_to_opus(speech_mp3, tmp_path / "speech.opus", ffmpeg=ffmpeg)
    assert_whole_opus(result, source_seconds=decoded_duration_seconds(speech_mp3))
    assert 2.0 < result.opus_duration_s < 8.0


def test_human_voice_converts(tmp_path, ffmpeg):
    source = encode_mp3(HUMAN_VOICE, tmp_path / "goforward.mp3", "-b:a", "64k")
    result = convert_to_opus(source, tmp_path / "goforward.opus", ffmpeg=ffmpeg)
    assert_whole_opus(result, source_seconds=2.79)


def test_vbr_mp3_without_xing_header_is_not_rejected(tmp_path, ffmpeg, speech_mp3):
    # Its header states no duration, so libavformat guesses one from the first frame's bitrate
    # (here ~0.5 s off); the source must then be measured by decoding, not by the guess.
    source = encode_mp3(speech_mp3, tmp_path / "vbr.mp3", "-q:a", "2", "-write_xing", "0")
    result = convert_to_opus(source, tmp_path / "vbr.opus", ffmpeg=ffmpeg)
    assert_whole_opus(result, source_seconds=decoded_duration_seconds(source))


def test_concatenated_mp3s_convert_whole(tmp_path, ffmpeg, speech_mp3):
    # Two files joined with `cat`: the header of the first states only its own length (ffmpeg
    # falls back to a bitrate guess) and the seam holds an undecodable frame. Neither may fail
    # the file.
    vbr = encode_mp3(speech_mp3, tmp_path / "vbr.mp3", "-q:a", "7")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(speech_mp3.read_bytes() + vbr.read_bytes())
    result = convert_to_opus(joined, tmp_path / "joined.opus", ffmpeg=ffmpeg)
    assert result.source_duration_s == pytest.approx(decoded_duration_seconds(joined), abs=0.001)
    # The frame dropped at the seam leaves a timestamp gap that the Opus granule counts.
    assert 0 <= result.opus_duration_s - result.source_duration_s < 0.1
    assert decoded_duration_seconds(result.opus_path) == pytest.approx(result.source_duration_s, abs=0.001)


def test_bitrate_and_channels_are_applied(tmp_path, ffmpeg, speech_mp3):
    low = convert_to_opus(speech_mp3, tmp_path / "low.opus", ffmpeg=ffmpeg, bitrate_kbps=12)
    stereo = convert_to_opus(speech_mp3, tmp_path / "stereo.opus", ffmpeg=ffmpeg, bitrate_kbps=64, channels=2)
    assert low.opus_bytes < stereo.opus_bytes
    with av.open(str(stereo.opus_path)) as container:
        assert container.streams.audio[0].channels == 2


def test_existing_target_is_overwritten(tmp_path, ffmpeg):
    source = make_tone_mp3(tmp_path / "tone.mp3", seconds=1.0)
    target = tmp_path / "tone.opus"
    target.write_bytes(b"stale")
    assert convert_to_opus(source, target, ffmpeg=ffmpeg).opus_bytes == target.stat().st_size > 5


def write_text_mp3(path: Path) -> Path:
    path.write_text("<html><body>404 Not Found</body></html>\n")
    return path


def write_random_mp3(path: Path) -> Path:
    path.write_bytes(random.Random(4559).randbytes(64_000))  # seeded: same bytes every run
    return path


def write_empty_mp3(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_truncated_mp3(path: Path) -> Path:
    return truncate_file(make_tone_mp3(path, seconds=4.0), keep_fraction=0.5)


def write_png_named_mp3(path: Path) -> Path:
    command = [ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=1"]
    subprocess.run([*command, "-frames:v", "1", "-f", "image2", "-c:v", "png", str(path)], check=True)
    return path


def write_blip_mp3(path: Path) -> Path:
    return make_tone_mp3(path, seconds=0.02)


@pytest.mark.parametrize(
    ("write_bad_source", "reason"),
    [
        (write_empty_mp3, "empty file (0 bytes)"),
        (write_random_mp3, "not decodable audio: Invalid data found when processing input"),
        (write_text_mp3, "not decodable audio: Invalid data found when processing input"),
        (write_png_named_mp3, "not decodable audio"),  # read as MP3 (the demuxer is pinned), not as an image
        (write_truncated_mp3, "output duration "),  # "1.99 s differs from source 4.00 s by more than 0.25 s"
        (write_blip_mp3, "no audio: decodes to 0.0"),
    ],
    ids=["zero-byte", "random-bytes", "text", "image", "truncated", "near-zero-audio"],
)
def test_bad_source_raises_with_reason_and_leaves_no_target(tmp_path, ffmpeg, write_bad_source, reason):
    source = write_bad_source(tmp_path / "bad.mp3")
    target = tmp_path / "bad.opus"
    target.write_bytes(b"output of an earlier run")  # must not survive as if it were current
    with pytest.raises(ConversionError) as raised:
        convert_to_opus(source, target, ffmpeg=ffmpeg)
    assert str(raised.value).startswith(reason)
    assert not raised.value.transient  # a property of the bytes: the row may turn failed
    assert not target.exists()


def wav_named_mp3(path: Path, container: str) -> Path:
    """Two seconds of speech-band tone in another container (`wav`, `ogg`), named .mp3."""
    command = [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=2"]
    subprocess.run([*command, "-f", container, str(path)], check=True)
    return path


@pytest.mark.parametrize("container", ["wav", "ogg"])
def test_a_member_named_mp3_is_read_as_mp3_whatever_its_bytes_look_like(tmp_path, ffmpeg, container):
    # Probed, ffmpeg and PyAV would pick the demuxer the bytes look like (here WAV or Ogg; a
    # playlist could open other files or URLs) and convert it. Pinned to MP3, it is no MP3.
    source = wav_named_mp3(tmp_path / "clip.mp3", container)
    assert av.open(str(source)).format.name != "mp3"  # what probing would have chosen
    with pytest.raises(ConversionError) as raised:  # "not decodable audio", or ffmpeg finds no MP3 frame
        convert_to_opus(source, tmp_path / "clip.opus", ffmpeg=ffmpeg)
    assert not raised.value.transient, raised.value  # a property of the bytes: the file fails
    assert not (tmp_path / "clip.opus").exists()


def test_truncation_message_names_both_durations(tmp_path, ffmpeg):
    source = write_truncated_mp3(tmp_path / "cut.mp3")
    expected = r"^output duration [12]\.\d\d s differs from source 4\.0\d s by more than 0\.25 s$"
    with pytest.raises(ConversionError, match=expected):
        convert_to_opus(source, tmp_path / "cut.opus", ffmpeg=ffmpeg)


def test_slow_conversion_times_out(tmp_path, ffmpeg, speech_mp3):
    target = tmp_path / "slow.opus"
    with pytest.raises(ConversionError, match="did not finish within") as raised:
        convert_to_opus(speech_mp3, target, ffmpeg=ffmpeg, timeout_s=0.001)
    assert raised.value.transient  # the host was slow, not the file wrong: retried, row untouched
    assert not target.exists()


def test_ffmpeg_failure_reports_its_last_error_line(tmp_path, ffmpeg, speech_mp3):
    # The scratch folder, not the file: the host's problem, never counted against the file.
    with pytest.raises(OSError, match=r"^ffmpeg could not write its output: .*No such file or directory") as raised:
        convert_to_opus(speech_mp3, tmp_path / "missing-dir" / "x.opus", ffmpeg=ffmpeg)
    assert not isinstance(raised.value, ConversionError)


def test_decoded_duration_of_undecodable_file_raises(tmp_path):
    with pytest.raises(ConversionError, match="not decodable audio"):
        decoded_duration_seconds(write_text_mp3(tmp_path / "x.mp3"))


def silent_mp3(path: Path, minutes: int) -> Path:
    """`minutes` of 8 kbit/s silence (60 KB a minute): one minute encoded as CBR without a
    Xing header, repeated, so the header-less length estimate from the bitrate is right."""
    minute = path.with_suffix(".minute.mp3")
    encode = [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "60"]
    subprocess.run([*encode, "-c:a", "libmp3lame", "-b:a", "8k", "-write_xing", "0", str(minute)], check=True)
    path.write_bytes(minute.read_bytes() * minutes)
    minute.unlink()
    return path


def test_audio_over_the_cap_is_refused_before_ffmpeg_runs(tmp_path):
    long = silent_mp3(tmp_path / "four-hours.mp3", 240)
    target = tmp_path / "x.opus"
    # An ffmpeg that does not exist: reaching it would raise OSError.
    with pytest.raises(ConversionError) as raised:
        convert_to_opus(long, target, ffmpeg=str(tmp_path / "no-ffmpeg"), max_seconds=20 * 60)
    assert str(raised.value) == "audio is 4 h 0 min, over the 20 min cap (max_audio_minutes)"
    assert not raised.value.transient and not target.exists()


def test_audio_within_the_cap_converts(tmp_path, ffmpeg):
    result = convert_to_opus(
        silent_mp3(tmp_path / "two.mp3", 2), tmp_path / "two.opus", ffmpeg=ffmpeg, max_seconds=120.5
    )
    assert result.opus_duration_s == pytest.approx(120, abs=0.5)


def test_a_header_that_understates_the_length_cannot_make_ffmpeg_decode_past_the_cap(tmp_path, ffmpeg, monkeypatch):
    # A header claiming one minute on four minutes of audio (a hostile or broken file; PyAV
    # sees through simple ones, so the probe's answer is replaced here).
    monkeypatch.setattr(opus_convert, "_declared_duration", lambda source: 60.0)
    with pytest.raises(ConversionError) as raised:
        convert_to_opus(silent_mp3(tmp_path / "four.mp3", 4), tmp_path / "x.opus", ffmpeg=ffmpeg, max_seconds=90)
    # ffmpeg stopped CAP_MARGIN_S (5 s) past the 90-s cap instead of encoding all 240 s.
    assert str(raised.value) == "audio is longer than 1 min 35 s, over the 1 min 30 s cap (max_audio_minutes)"
    assert not raised.value.transient


def killing_ffmpeg(tmp_path: Path, real: str) -> Path:
    """An ffmpeg that starts the real one (reading at real-time speed, `-re`, so it is still
    encoding), then is killed by SIGKILL, as the OOM killer would kill it."""
    wrapper = tmp_path / "ffmpeg-killed"
    wrapper.write_text(f'#!/bin/sh\n"{real}" -re "$@" &\nsleep 0.5\nkill -KILL $!\nkill -KILL $$\n')
    wrapper.chmod(0o755)
    return wrapper


def test_ffmpeg_killed_by_a_signal_is_a_transient_failure(tmp_path, ffmpeg, speech_mp3):
    with pytest.raises(ConversionError) as raised:
        convert_to_opus(speech_mp3, tmp_path / "x.opus", ffmpeg=str(killing_ffmpeg(tmp_path, ffmpeg)))
    assert str(raised.value) == "ffmpeg was killed by signal 9"
    assert raised.value.transient and not (tmp_path / "x.opus").exists()


def test_ffmpeg_stopped_by_sigterm_without_a_message_is_a_transient_failure(tmp_path, ffmpeg, speech_mp3):
    # A node drain sends SIGTERM: ffmpeg stops itself, exits 255 and says nothing at warning level.
    wrapper = tmp_path / "ffmpeg-drained"
    wrapper.write_text(f'#!/bin/sh\n"{ffmpeg}" -re "$@" &\nsleep 0.5\nkill -TERM $!\nwait $!\nexit $?\n')
    wrapper.chmod(0o755)
    with pytest.raises(ConversionError) as raised:
        convert_to_opus(speech_mp3, tmp_path / "x.opus", ffmpeg=str(wrapper))
    assert str(raised.value) == "ffmpeg failed: ffmpeg failed without a message"
    assert raised.value.transient


def test_ffmpeg_that_cannot_start_is_the_hosts_problem_not_the_files(tmp_path, speech_mp3):
    # Never a ConversionError: the file's tries are not counted for what the host did.
    with pytest.raises(OSError) as raised:
        convert_to_opus(speech_mp3, tmp_path / "x.opus", ffmpeg=str(tmp_path / "no-ffmpeg"))
    assert not isinstance(raised.value, ConversionError)


def test_ffmpeg_out_of_disk_space_is_the_hosts_problem_not_the_files(tmp_path, ffmpeg, speech_mp3):
    wrapper = tmp_path / "ffmpeg-disk-full"
    wrapper.write_text(
        '#!/bin/sh\necho "[out#0/ogg @ 0x1] Error writing trailer: No space left on device" >&2\nexit 1\n'
    )
    wrapper.chmod(0o755)
    with pytest.raises(OSError, match="No space left on device"):
        convert_to_opus(speech_mp3, tmp_path / "x.opus", ffmpeg=str(wrapper))


def test_ffmpeg_crashing_on_a_file_is_an_unclear_failure_tried_again(tmp_path, speech_mp3):
    # SIGSEGV, as a decoder bug on a malformed frame gives: maybe the file, maybe the host.
    wrapper = tmp_path / "ffmpeg-segv"
    wrapper.write_text("#!/bin/sh\nkill -SEGV $$\n")
    wrapper.chmod(0o755)
    with pytest.raises(ConversionError) as raised:
        convert_to_opus(speech_mp3, tmp_path / "x.opus", ffmpeg=str(wrapper))
    assert str(raised.value) == "ffmpeg was killed by signal 11" and raised.value.transient
