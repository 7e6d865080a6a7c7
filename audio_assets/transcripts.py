"""transcripts: every converted file of the partition through WhisperX, batched across files,
committed chunk by chunk and never redone for a file that already has one from this model."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from audio_assets.archive_job import archive_asset
from audio_assets.file_batches import batches, raise_for_retryable, split_done, split_on_error
from audio_assets.settings import DEFAULT_MAX_AUDIO_MINUTES, FileAttemptsConfig, env_default
from media.opus_convert import over_the_cap
from models.transcriber import Transcript, TranscriptionError
from resources.archive_run import ArchiveRun, HeldArchive
from resources.manifest_io import ArchiveTable
from resources.results_db.failures import Cause, FileFailure
from resources.results_db.transcripts import TranscriptRow, record_transcripts, transcribed_ids
from resources.transcriber import WhisperTranscriber

RESULT_COLUMNS = ["audio_file_id", "member", "status", "model", "error"]


class TranscriptionConfig(FileAttemptsConfig):
    files_per_chunk: int = Field(
        default=64,
        description="Files downloaded, transcribed and committed together: bounds scratch space and "
        "what a lost worker has to redo",
    )
    retranscribe: bool = Field(
        default=False, description="Transcribe again files that already have a transcript from this model"
    )
    max_audio_minutes: float = Field(
        default_factory=lambda: env_default("AUDIO_MAX_MINUTES", float(DEFAULT_MAX_AUDIO_MINUTES)),
        description="A file whose Opus is longer fails without being decoded (default $AUDIO_MAX_MINUTES or 20): "
        "opus_files already refuses such files, this guards the GPU workers",
    )


class OpusObjectReplaced(dg.Failure):
    def __init__(self, key: str, found: str, expected: str):
        super().__init__(
            description=f"{key} is not the object opus_files uploaded for this run (ETag {found}, expected "
            f"{expected}): a newer run of this archive replaced it, and writes its own transcripts",
            allow_retries=False,
        )


@archive_asset(kinds={"pytorch", "s3", "postgres"}, group_name="moderation", gpu=True)
def transcripts(
    context: dg.AssetExecutionContext,
    config: TranscriptionConfig,
    opus_files: ArchiveTable,
    transcriber: WhisperTranscriber,
    archive_run: ArchiveRun,
) -> dg.Output[ArchiveTable]:
    """WhisperX transcripts (text, language, confidence, timed segments) of the Opus files."""
    with archive_run.step(context, opus_files, gpu=True) as held:
        converted = opus_files.rows[opus_files.rows["status"] == "converted"].reset_index(drop=True)
        model_name = transcriber.model_name()
        ids = [int(i) for i in converted["audio_file_id"]]
        already = set() if config.retranscribe else transcribed_ids(held, ids, model_name)
        _, todo = split_done(converted.to_dict("records"), lambda row: int(row["audio_file_id"]) in already)
        started, done, load_s = time.monotonic(), [], 0.0
        if todo:
            model = transcriber.load()
            load_s = time.monotonic() - started
            with held.workdir() as workdir:
                for chunk in batches(todo, config.files_per_chunk):
                    outcomes = _transcribe_chunk(chunk, model, held, workdir, config.max_audio_minutes * 60)
                    done += _commit(held, outcomes, model_name, config.max_file_attempts)
                    held.log.info(f"transcribed {len(done)}/{len(todo)} files ({len(already)} done before)")
        ok = [(row, t) for row, t in done if isinstance(t, Transcript)]
        failed = [t for _, t in done if isinstance(t, FileFailure)]
        raise_for_retryable(failed, len(todo))
        return held.output(
            _results_frame(converted, already, ok, failed, model_name),
            _metadata(model_name, ok, already, failed, time.monotonic() - started, load_s),
        )


def _metadata(
    model_name: str, ok: list, already: set[int], failed: list[FileFailure], elapsed: float, load_s: float
) -> dict:
    audio_s = sum(t.audio_seconds for _, t in ok)
    return {
        "model": model_name,
        "transcribed_now": len(ok),
        "already_transcribed": len(already),
        "empty_transcripts": sum(1 for _, t in ok if not t.text),
        "failed": len(failed),
        "audio_minutes": round(audio_s / 60, 2),
        "realtime_factor": round((elapsed - load_s) / audio_s, 3) if audio_s else None,
        "model_load_s": round(load_s, 2),
    }


def _transcribe_chunk(rows: list[dict], model, held: HeldArchive, workdir: Path, max_seconds: float) -> list:
    def fetch(row: dict) -> Path | FileFailure:
        path = workdir / f"{int(row['audio_file_id'])}.opus"
        seconds = row.get("duration_seconds")
        if seconds is not None and not pd.isna(seconds) and seconds > max_seconds:  # refused undecoded
            reason = str(over_the_cap(float(seconds), max_seconds))
            return FileFailure(int(row["audio_file_id"]), row["member"], "transcription", reason)
        try:
            stored = held.object_store.download_file(row["opus_key"], path)
        except Exception as exc:  # the store, after its own retries: the row stays as it was
            return FileFailure(
                int(row["audio_file_id"]),
                row["member"],
                "transcription",
                f"cannot read {row['opus_key']}: {exc}",
                "service",
            )
        expected = row.get("opus_etag")
        if expected and stored.etag != expected:
            path.unlink(missing_ok=True)
            raise OpusObjectReplaced(row["opus_key"], stored.etag, expected)
        return path

    with ThreadPoolExecutor(max_workers=8) as pool:
        fetched = list(pool.map(fetch, rows))
    paths = [p for p in fetched if isinstance(p, Path)]
    # A batch that throws (a CUDA error, out of memory, a file the model chokes on) is split
    # until the file that throws is alone; the others finish.
    results = iter(split_on_error(paths, model.transcribe_files))
    outcomes = []
    for row, item in zip(rows, fetched):
        if isinstance(item, FileFailure):
            outcomes.append((row, item))
            continue
        result = next(results)
        item.unlink(missing_ok=True)
        if isinstance(result, Exception):  # the file's only when its bytes do not decode
            cause: Cause = "input" if isinstance(result, TranscriptionError) and not result.transient else "unclear"
            reason = str(result) if isinstance(result, TranscriptionError) else f"{type(result).__name__}: {result}"
            result = FileFailure(int(row["audio_file_id"]), row["member"], "transcription", reason, cause)
        outcomes.append((row, result))
    return outcomes


def _commit(held: HeldArchive, chunk: list, model_name: str, max_attempts: int) -> list:
    """The chunk's transcripts and failures, committed together; returns the outcomes as stored."""
    settled = record_transcripts(
        held,
        [
            TranscriptRow(int(row["audio_file_id"]), model_name, t.text, t.language, t.confidence, t.segments)
            for row, t in chunk
            if isinstance(t, Transcript)
        ],
        [t for _, t in chunk if isinstance(t, FileFailure)],
        max_attempts,
    )
    for failure in settled:
        held.log.warning(str(failure))
    stored = iter(settled)
    return [(row, next(stored) if isinstance(t, FileFailure) else t) for row, t in chunk]


def _results_frame(
    converted: pd.DataFrame, already: set[int], ok, failed: list[FileFailure], model_name: str
) -> pd.DataFrame:
    members = dict(zip(converted["audio_file_id"].astype(int), converted["member"]))
    rows: list[tuple] = [(file_id, members[file_id], "transcribed", model_name, None) for file_id in sorted(already)]
    rows += [(int(r["audio_file_id"]), r["member"], "transcribed", model_name, None) for r, _ in ok]
    rows += [(f.audio_file_id, f.original_filename, "failed", model_name, f.error) for f in failed]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).sort_values("member", ignore_index=True)
