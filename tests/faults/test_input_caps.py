"""Poison input and transient tool failures on real services (issue 18 items 1, 2, 7).

Each drill runs the archive's steps in process on real PostgreSQL, SeaweedFS, ffmpeg and the
real Whisper base model (Dagster's step retries included), with one hostile input or one
injected fault beside ordinary clips, and checks that the bad one gets its recorded reason
while the good ones go on: files lost 0, duplicate rows 0, orphan objects 0, rows whose object
disagrees 0. Outcomes go to the fault table (tests/faults/README.md).
"""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_report import assert_objects_agree, failures, files, record_outcome

from definitions import build_definitions
from models.transcriber import transcribed_files_count
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from testing.archive_factory import build_tar, ffmpeg_exe, make_parquet, make_speech_mp3
from testing.pipeline_support import FULL_JOB, ArchiveRunner, pipeline_resources, rows

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    parts = tmp_path_factory.mktemp("cap-clips")
    return {
        "insult": make_speech_mp3(parts / "insult.mp3", "you are a stupid idiot and everyone hates you"),
        "weather": make_speech_mp3(parts / "weather.mp3", "the weather is lovely today in the park"),
    }


def silent_mp3(path: Path, minutes: int) -> Path:
    """`minutes` of 8 kbit/s silence (60 KB a minute), one CBR minute without a Xing header repeated."""
    minute = path.with_suffix(".minute.mp3")
    encode = [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "60"]
    subprocess.run([*encode, "-c:a", "libmp3lame", "-b:a", "8k", "-write_xing", "0", str(minute)], check=True)
    path.write_bytes(minute.read_bytes() * minutes)
    minute.unlink()
    return path


def parquet_bomb(path: Path, rows_count: int) -> Path:
    """~120 KB that decode to `rows_count` rows: one long meta_id, dictionary- and RLE-encoded."""
    column = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(rows_count, dtype=np.int32)), pa.array(["same-clip-" + "x" * 200])
    )
    pq.write_table(pa.table({"meta_id": column}), path, compression="zstd", row_group_size=1_000_000)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- a parquet bomb and a duplicate meta_id ----------------------------------------------------


def test_parquet_bomb_is_refused_from_its_footer_and_duplicates_are_reported(runner, results_db, clips, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    bomb = parquet_bomb(parts / "bomb.parquet", 5_000_000)
    good = make_parquet(
        parts / "a_meta.parquet",
        [{"meta_id": "insult", "creator": "@first"}, {"meta_id": "weather", "creator": "@w"}],
    )
    repeats = make_parquet(parts / "b_meta.parquet", [{"meta_id": "insult", "creator": "@second"}])
    archive = build_tar(
        tmp_path / "batch_parquet_bomb.tar",
        [
            ("clips/insult.mp3", clips["insult"]),
            ("clips/weather.mp3", clips["weather"]),
            ("meta/bomb.parquet", bomb),
            ("meta/a_meta.parquet", good),
            ("meta/b_meta.parquet", repeats),
        ],
    )
    key = runner.upload(archive)
    rss_before = peak_rss_mb()
    result = runner.run(key)
    rss_growth = peak_rss_mb() - rss_before
    assert result.success

    # The bomb: refused with its reason, recorded once; decoded it would take gigabytes.
    problems = failures(results_db, key)
    refused = problems[("meta/bomb.parquet", "metadata")]
    assert refused["error"] == "refused: its footer states 5,000,000 rows, over the 100,000-row cap (max_metadata_rows)"
    assert not refused["retryable"]
    assert rss_growth < 256, f"peak RSS grew {rss_growth:.0f} MB while refusing a parquet bomb"

    # The duplicate: the first row (a_meta.parquet, name order) is stored; the later one is named.
    duplicate = problems[("meta/b_meta.parquet", "metadata")]
    assert duplicate["error"] == (
        "warning: 1 row(s) repeat a meta_id an earlier row has; the first row wins (parquet members in name "
        "order, rows in file order): meta_id 'insult' row 0 ignored, row 0 of meta/a_meta.parquet kept"
    )
    assert set(problems) == {("meta/bomb.parquet", "metadata"), ("meta/b_meta.parquet", "metadata")}

    # The MP3s go on: converted, each with its (first) row.
    stored = files(results_db, key)
    assert {f["status"] for f in stored.values()} == {"converted"}
    assert stored["clips/insult.mp3"]["parquet_metadata"]["creator"] == "@first"
    assert stored["clips/weather.mp3"]["parquet_metadata"]["creator"] == "@w"
    objects = assert_objects_agree(results_db, runner.object_store, key)

    # Run again with the duplicate gone: its warning is closed, the bomb's refusal stays open.
    fixed = build_tar(
        tmp_path / "v2" / "batch_parquet_bomb.tar",
        [
            ("clips/insult.mp3", clips["insult"]),
            ("clips/weather.mp3", clips["weather"]),
            ("meta/bomb.parquet", bomb),
            ("meta/a_meta.parquet", good),
        ],
    )
    runner.upload(fixed)
    assert runner.run(key).success
    assert set(failures(results_db, key)) == {("meta/bomb.parquet", "metadata")}
    record_outcome(
        f"parquet bomb ({bomb.stat().st_size // 1024} KB, 5,000,000 rows) and a duplicate meta_id beside 2 MP3s",
        f"bomb refused from its footer (`metadata` failure row with the row cap), peak RSS of the test process grew "
        f"{rss_growth:.0f} MB; duplicate recorded as a warning naming the kept row, closed once gone; 2 files "
        f"converted with their first rows, 0 lost, 0 duplicates, {objects} objects, 0 orphans, 0 disagreeing",
    )


# --- a 4-hour MP3 beside a clip ------------------------------------------------------------------


def test_long_audio_fails_with_the_cap_reason_and_does_not_hold_the_clip_back(runner, results_db, clips, tmp_path):
    long = silent_mp3(tmp_path / "four_hours.mp3", 240)
    archive = build_tar(
        tmp_path / "batch_long_audio.tar", [("clips/long.mp3", long), ("clips/insult.mp3", clips["insult"])]
    )
    key = runner.upload(archive)
    decoded_before = transcribed_files_count()
    result = runner.run(key, assets=FULL_JOB)
    assert result.success
    opus_step_s = step_seconds(runner, result, "opus_files")

    stored = files(results_db, key)
    assert stored["clips/long.mp3"]["status"] == "failed"
    assert stored["clips/long.mp3"]["error"] == "audio is 4 h 0 min, over the 20 min cap (max_audio_minutes)"
    assert stored["clips/long.mp3"]["failed_stage"] == "conversion" and stored["clips/long.mp3"]["opus_path"] is None
    assert stored["clips/insult.mp3"]["status"] == "classified"
    assert transcribed_files_count() - decoded_before == 1  # Whisper saw the clip only
    objects = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        f"4-hour silent MP3 ({long.stat().st_size / 2**20:.1f} MB, 8 kbit/s) beside a 4-second clip",
        f'the long file `failed` with "audio is 4 h 0 min, over the 20 min cap (max_audio_minutes)" before '
        f"ffmpeg ran (whole opus_files step {opus_step_s:.1f} s); the clip classified in the same run; Whisper "
        f"decoded 1 file; 0 lost, 0 duplicates, {objects} object, 0 orphans, 0 disagreeing",
    )


def test_transcripts_refuse_a_stored_duration_over_the_cap_without_decoding(runner, results_db, clips, tmp_path):
    # Converted under a looser cap (say, by an older worker), transcribed under a 1-minute one.
    minutes = silent_mp3(tmp_path / "two_minutes.mp3", 2)
    archive = build_tar(
        tmp_path / "batch_cap_gpu.tar", [("clips/two.mp3", minutes), ("clips/insult.mp3", clips["insult"])]
    )
    key = runner.upload(archive)
    assert runner.run(key).success
    decoded_before = transcribed_files_count()
    config = {"ops": {"transcripts": {"config": {"max_audio_minutes": 1}}}}
    assert runner.run(key, assets=FULL_JOB, run_config=config).success
    stored = files(results_db, key)
    assert stored["clips/two.mp3"]["status"] == "failed"
    assert stored["clips/two.mp3"]["failed_stage"] == "transcription"
    assert stored["clips/two.mp3"]["error"] == "audio is 2 min, over the 1 min cap (max_audio_minutes)"
    assert stored["clips/two.mp3"]["opus_path"] is not None  # after upload: its object stays
    assert stored["clips/insult.mp3"]["status"] == "classified"
    assert transcribed_files_count() - decoded_before == 1
    assert_objects_agree(results_db, runner.object_store, key)


# --- ffmpeg killed mid-conversion --------------------------------------------------------------


def killed_once_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """An ffmpeg whose first conversion is SIGKILLed mid-encode (as an OOM kill would), with
    the real ffmpeg started and killed too; every other call runs the real one. Each
    conversion call appends a line to the returned log."""
    wrapper, log, marker = tmp_path / "ffmpeg-killed-once", tmp_path / "ffmpeg-calls.log", tmp_path / "killed"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *libopus*) echo call >> "{log}" ;; *) exec "{ffmpeg_exe()}" "$@" ;; esac\n'
        f'if mkdir "{marker}" 2>/dev/null; then\n'
        f'  "{ffmpeg_exe()}" -re "$@" &\n'
        "  sleep 0.5\n"
        "  kill -KILL $!\n"
        "  kill -KILL $$\n"
        "fi\n"
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, log


def test_ffmpeg_killed_mid_conversion_is_retried_and_the_row_never_fails(
    runner, results_db, clips, tmp_path, monkeypatch
):
    wrapper, log = killed_once_ffmpeg(tmp_path)
    monkeypatch.setenv("FFMPEG_BINARY", str(wrapper))
    archive = build_tar(
        tmp_path / "batch_ffmpeg_killed.tar",
        [("clips/insult.mp3", clips["insult"]), ("clips/weather.mp3", clips["weather"])],
    )
    key = runner.upload(archive)
    started = time.monotonic()
    result = runner.run(key, assets=FULL_JOB)
    elapsed = time.monotonic() - started
    assert result.success
    attempts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED" and e.step_key == "opus_files"]
    assert len(attempts) == 1  # the step's retry converted the killed file

    stored = files(results_db, key)
    assert {f["status"] for f in stored.values()} == {"classified"}
    recorded = failures(results_db, key, open_only=False)
    killed = [f for f in recorded.values() if f["stage"] == "conversion"]
    assert len(killed) == 1 and killed[0]["error"] == "ffmpeg was killed by signal 9"
    assert killed[0]["retryable"] and killed[0]["resolved_at"] is not None  # closed by the retry's success
    assert len(log.read_text().splitlines()) == 3  # 2 files + the one retried
    objects = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        "ffmpeg SIGKILLed mid-encode (first conversion of a 2-file archive)",
        f'recorded retryable ("ffmpeg was killed by signal 9"), the row left as it was, 1 step retry converted '
        f"it, the failure closed; 3 ffmpeg conversions in all; both files classified in {elapsed:.0f} s, 0 lost, "
        f"0 duplicates, {objects} objects, 0 orphans, 0 disagreeing",
    )


# --- CUDA out of memory in a Whisper batch ------------------------------------------------------


class _OutOfMemoryOnce:
    """The real model, whose first batch fails as a GPU out of memory would (the one fake: this
    machine has no GPU to exhaust); `batches` lists the size of every batch it was given."""

    def __init__(self, model, batches: list[int]):
        self.model, self.batches = model, batches

    def transcribe_files(self, paths):
        self.batches.append(len(paths))
        if len(self.batches) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model.transcribe_files(paths)


class OutOfMemoryOnceTranscriber(WhisperTranscriber):
    def load(self):
        return _OutOfMemoryOnce(super().load(), _BATCHES)


_BATCHES: list[int] = []


def test_cuda_out_of_memory_in_a_batch_splits_it_and_no_row_moves(
    object_store, results_db, instance, tmp_path, models_dir, clips
):
    _BATCHES.clear()
    transcriber = OutOfMemoryOnceTranscriber(model="base-bundled", models_root=str(models_dir), language="en")
    resources = pipeline_resources(
        object_store, results_db, tmp_path / "scratch", transcriber, PolicyClassifier(backend="profanity")
    )
    runner = ArchiveRunner(build_definitions(resources), instance, object_store, results_db)
    archive = build_tar(
        tmp_path / "batch_cuda_oom.tar",
        [("clips/insult.mp3", clips["insult"]), ("clips/weather.mp3", clips["weather"])],
    )
    key = runner.upload(archive)
    result = runner.run(key, assets=FULL_JOB)
    assert result.success
    assert _BATCHES == [2, 1, 1]  # the batch that ran out of memory went through as two smaller ones
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED" and e.step_key == "transcripts"]
    assert restarts == []  # in the same execution: no step retry, nothing recorded against the files
    assert {f["status"] for f in files(results_db, key).values()} == {"classified"}
    assert [f for f in failures(results_db, key, open_only=False).values() if f["stage"] == "transcription"] == []
    transcripts = rows(
        results_db,
        "SELECT count(*) AS n FROM transcripts t JOIN audio_files a ON a.id = t.audio_file_id WHERE a.archive_source = %s",
        (key,),
    )
    assert transcripts[0]["n"] == 2
    objects = assert_objects_agree(results_db, object_store, key)
    record_outcome(
        "CUDA out of memory in a Whisper batch (the first batch of a 2-file archive)",
        "the batch split in two, both transcribed in the same execution (no step retry, no failure recorded); "
        f"both classified, 0 lost, 0 duplicates (1 transcript each), {objects} objects, 0 orphans, 0 disagreeing",
    )


def step_seconds(runner: ArchiveRunner, result, step_key: str) -> float:
    """From the step's first event to its last, as the run's event log stamped them."""
    stamps = [e.timestamp for e in runner.instance.all_logs(result.run_id) if e.step_key == step_key]
    return max(stamps) - min(stamps)


# --- the same archive uploaded again the next day, with ffmpeg timing out --------------------


def timing_out_ffmpeg(tmp_path: Path, *, every_call: bool) -> tuple[Path, Path]:
    """An ffmpeg whose conversions hang (the first one only, or every one) until the step's
    per-file timeout kills them; every conversion call logs its arguments (the member's id)."""
    wrapper, log, marker = tmp_path / "ffmpeg-hangs", tmp_path / "ffmpeg-calls.log", tmp_path / "hung"
    hang = "exec sleep 60" if every_call else f'mkdir "{marker}" 2>/dev/null && exec sleep 60'
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *libopus*) echo "$*" >> "{log}" ;; *) exec "{ffmpeg_exe()}" "$@" ;; esac\n'
        f"{hang}\n"
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, log


def test_a_re_upload_with_ffmpeg_timing_out_converts_only_the_new_member_and_undoes_nothing(
    runner, results_db, clips, tmp_path, monkeypatch
):
    """Day 1: a 2-file archive classified. Day 2 the same archive comes back as a new object
    (one member added, the two others the same bytes) while ffmpeg hangs on its first call:
    the unchanged members are not converted again, no status goes backwards, no object is
    deleted or replaced, and the timed-out file is retried. Then a forced reconversion whose
    every ffmpeg call times out leaves every row and object as it was."""
    members = [("clips/insult.mp3", clips["insult"]), ("clips/weather.mp3", clips["weather"])]
    key = runner.upload(build_tar(tmp_path / "day1" / "batch_day_two.tar", members))
    assert runner.run(key, assets=FULL_JOB).success
    day1 = files(results_db, key)
    assert {f["status"] for f in day1.values()} == {"classified"}

    monkeypatch.setenv("FFMPEG_TIMEOUT_S", "3")
    (tmp_path / "day2-ffmpeg").mkdir()
    wrapper, log = timing_out_ffmpeg(tmp_path / "day2-ffmpeg", every_call=False)
    monkeypatch.setenv("FFMPEG_BINARY", str(wrapper))
    new = make_speech_mp3(tmp_path / "new.mp3", "the ferry leaves the harbour at noon")
    key2 = runner.upload(build_tar(tmp_path / "day2" / "batch_day_two.tar", [*members, ("clips/new.mp3", new)]))
    assert key2 == key
    result = runner.run(key, assets=FULL_JOB)
    assert result.success
    day2 = files(results_db, key)
    assert {f["status"] for f in day2.values()} == {"classified"}
    for name, row in day1.items():  # untouched: same object, same ETag, never failed
        assert (day2[name]["opus_path"], day2[name]["opus_etag"]) == (row["opus_path"], row["opus_etag"])
    calls = log.read_text().splitlines()
    new_id = rows(results_db, "SELECT id FROM audio_files WHERE original_filename = 'clips/new.mp3'")[0]["id"]
    assert len(calls) == 2 and all(f"/{new_id}.mp3" in call for call in calls)  # the timeout, then its retry
    (timed_out,) = [f for f in failures(results_db, key, open_only=False).values() if f["stage"] == "conversion"]
    assert timed_out["retryable"] and "did not finish within 3 s" in timed_out["error"] and timed_out["resolved_at"]
    objects = assert_objects_agree(results_db, runner.object_store, key)

    # A forced reconversion (run config `reconvert`) while every ffmpeg call hangs: each file is
    # tried 3 times, then its failure is recorded; nothing it had is undone.
    (tmp_path / "hang-ffmpeg").mkdir()
    wrapper, log = timing_out_ffmpeg(tmp_path / "hang-ffmpeg", every_call=True)
    monkeypatch.setenv("FFMPEG_BINARY", str(wrapper))
    before = files(results_db, key)
    forced = runner.run(key, run_config={"ops": {"opus_files": {"config": {"reconvert": True, "workers": 1}}}})
    assert forced.success
    assert files(results_db, key) == before  # every row still classified, with its object
    open_failures = failures(results_db, key)
    assert len(open_failures) == 3 and {f["retryable"] for f in open_failures.values()} == {False}
    assert {f["error"] for f in open_failures.values()} == {"ffmpeg did not finish within 3 s (after 3 attempts)"}
    assert len(log.read_text().splitlines()) == 9
    assert assert_objects_agree(results_db, runner.object_store, key) == objects
    record_outcome(
        "archive uploaded again the next day (1 member added, 2 unchanged) while ffmpeg hangs, "
        "then a forced reconversion while every ffmpeg call hangs",
        f"day 2: ffmpeg ran {len(calls)} times, all for the new member (the timeout after 3 s, then its retry); "
        f"the 2 unchanged members not converted again, no status went backwards, no object deleted or replaced; "
        f"forced reconversion: {len(log.read_text().splitlines())} ffmpeg calls timed out (3 per file), each "
        "file's failure recorded '(after 3 attempts)', every row and object as before; 0 lost, 0 duplicates, "
        f"{objects} objects, 0 orphans, 0 disagreeing",
    )
