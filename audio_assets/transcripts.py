"""transcripts: every converted file of the partition through WhisperX, batched across files."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from audio_assets.archive import IO_RETRY
from audio_assets.gpu_routing import GPU_OP_TAGS, GPU_POOL
from audio_assets.ml.transcriber import Transcript
from audio_assets.partitions import archives_partitions
from resources.object_store import ObjectStore
from resources.results_db import FileFailure, ResultsDatabase, TranscriptRow
from resources.scratch import ScratchSpace
from resources.transcriber import WhisperTranscriber

RESULT_COLUMNS = [
    "audio_file_id", "member", "status", "model", "language", "confidence", "transcript_text", "error",
]


class TranscriptionConfig(dg.Config):
    files_per_chunk: int = Field(
        default=64, description="Files downloaded and transcribed together; bounds scratch space"
    )


@dg.asset(
    partitions_def=archives_partitions,
    kinds={"pytorch", "s3", "postgres"},
    io_manager_key="manifest_io",
    op_tags=GPU_OP_TAGS,
    pool=GPU_POOL,
    retry_policy=IO_RETRY,
    group_name="moderation",
)
def transcripts(
    context: dg.AssetExecutionContext,
    config: TranscriptionConfig,
    opus_files: pd.DataFrame,
    transcriber: WhisperTranscriber,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    scratch: ScratchSpace,
) -> dg.Output[pd.DataFrame]:
    """WhisperX transcripts (text, language, confidence, timed segments) of the Opus files."""
    todo = opus_files[opus_files["status"] == "converted"].reset_index(drop=True)
    started = time.monotonic()
    model = transcriber.load()
    load_s = time.monotonic() - started
    done: list[tuple[dict, Transcript | FileFailure]] = []
    with scratch.step_dir(context.run.run_id, "transcripts") as workdir:
        for start in range(0, len(todo), config.files_per_chunk):
            chunk = todo.iloc[start : start + config.files_per_chunk].to_dict("records")
            done += _transcribe_chunk(chunk, model, object_store, workdir)
            context.log.info(f"transcribed {len(done)}/{len(todo)} files")
    elapsed = time.monotonic() - started

    ok = [(row, t) for row, t in done if isinstance(t, Transcript)]
    failed = [t for _, t in done if isinstance(t, FileFailure)]
    results_db.store_transcripts(
        [
            TranscriptRow(int(row["audio_file_id"]), model.model_name, t.text, t.language, t.confidence, t.segments)
            for row, t in ok
        ]
    )
    results_db.record_file_failures(
        archive_source=str(opus_files["archive_key"].iloc[0]) if len(opus_files) else "",
        partition_key=context.partition_key,
        failures=failed,
        run_id=context.run.run_id,
    )
    audio_s = sum(t.audio_seconds for _, t in ok)
    return dg.Output(
        _results_frame(ok, failed, model.model_name, todo),
        metadata={
            "model": model.model_name,
            "transcribed": len(ok),
            "empty_transcripts": sum(1 for _, t in ok if not t.text),
            "failed": len(failed),
            "audio_minutes": round(audio_s / 60, 2),
            "realtime_factor": round((elapsed - load_s) / audio_s, 3) if audio_s else None,
            "model_load_s": round(load_s, 2),
        },
    )


def _transcribe_chunk(rows: list[dict], model, object_store: ObjectStore, workdir: Path) -> list:
    def fetch(row: dict) -> Path | FileFailure:
        path = workdir / f"{int(row['audio_file_id'])}.opus"
        try:
            object_store.download_file(row["opus_key"], path)
            return path
        except Exception as exc:  # a missing object fails this file, not the batch
            return FileFailure(int(row["audio_file_id"]), row["member"], "transcription", f"cannot read {row['opus_key']}: {exc}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        fetched = list(pool.map(fetch, rows))
    paths = [p for p in fetched if isinstance(p, Path)]
    results = iter(model.transcribe_files(paths)) if paths else iter(())
    outcomes = []
    for row, item in zip(rows, fetched):
        if isinstance(item, FileFailure):
            outcomes.append((row, item))
            continue
        result = next(results)
        item.unlink(missing_ok=True)
        if isinstance(result, Exception):
            result = FileFailure(int(row["audio_file_id"]), row["member"], "transcription", str(result))
        outcomes.append((row, result))
    return outcomes


def _results_frame(ok, failed: list[FileFailure], model_name: str, todo: pd.DataFrame) -> pd.DataFrame:
    rows = [
        (int(r["audio_file_id"]), r["member"], "transcribed", model_name, t.language, t.confidence, t.text, None)
        for r, t in ok
    ] + [(f.audio_file_id, f.original_filename, "failed", model_name, None, None, None, f.error) for f in failed]
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS).sort_values("member", ignore_index=True)
    frame["archive_key"] = todo["archive_key"].iloc[0] if len(todo) else None
    return frame
