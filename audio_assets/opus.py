"""opus_files: every MP3 member converted to Opus, integrity-checked and uploaded."""

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import dagster as dg
import pandas as pd

from audio_assets.archive import IO_RETRY
from audio_assets.archive_access import ArchiveRef, download_and_scan
from audio_assets.audio.ffmpeg_binary import resolve_ffmpeg
from audio_assets.audio.opus_convert import ConversionError, convert_to_opus
from audio_assets.partitions import archives_partitions
from audio_assets.settings import OpusConversionConfig
from resources.object_store import ObjectStore
from resources.results_db import ConvertedFile, FileFailure, ResultsDatabase
from resources.scratch import ScratchSpace

RESULT_COLUMNS = ["audio_file_id", "member", "status", "opus_key", "duration_seconds", "opus_bytes", "error"]


def opus_key(archive_date: str, audio_file_id: int) -> str:
    """Stable per file: a re-run rewrites the same object instead of leaving an orphan."""
    return f"processed/{archive_date}/{audio_file_id}.opus"


@dg.asset(
    partitions_def=archives_partitions,
    kinds={"ffmpeg", "s3", "postgres"},
    io_manager_key="manifest_io",
    retry_policy=IO_RETRY,
    group_name="archives",
)
def opus_files(
    context: dg.AssetExecutionContext,
    config: OpusConversionConfig,
    raw_archive: pd.DataFrame,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    scratch: ScratchSpace,
) -> dg.Output[pd.DataFrame]:
    """MP3 members as Opus objects in processed/{date}/{id}.opus; a bad file fails alone."""
    archive = ArchiveRef.from_manifest(raw_archive)
    mp3s = raw_archive[(raw_archive["kind"] == "mp3") & raw_archive["accepted"]]
    previous_keys = _current_opus_keys(results_db, archive.key)
    ffmpeg = resolve_ffmpeg(config.ffmpeg_path)
    started = time.monotonic()
    with scratch.step_dir(context.run.run_id, "opus_files") as workdir:
        _, listing, _ = download_and_scan(
            context,
            object_store=object_store,
            results_db=results_db,
            archive_key=archive.key,
            workdir=workdir,
            max_member_bytes=config.max_member_bytes,
            stage="conversion",
            required_etag=archive.etag,
            extract_kinds=frozenset({"mp3"}),
        )
        extracted = {m.name: m.path for m in listing.mp3s}
        outcomes = _convert_and_upload_all(
            context, list(mp3s.itertuples(index=False)), extracted, workdir / "opus",
            archive, object_store, config, ffmpeg,
        )
    elapsed = time.monotonic() - started

    converted = [o for o in outcomes if isinstance(o, ConvertedFile)]
    failed = [o for o in outcomes if isinstance(o, FileFailure)]
    results_db.mark_converted(converted)
    results_db.record_file_failures(
        archive_source=archive.key, partition_key=context.partition_key, failures=failed, run_id=context.run.run_id
    )
    _delete_replaced_objects(object_store, previous_keys, converted, failed)

    results = _results_frame(converted, failed, dict(zip(mp3s["audio_file_id"], mp3s["member"])))
    results["archive_key"] = archive.key
    audio_s = sum(c.duration_seconds for c in converted)
    return dg.Output(
        results,
        metadata={
            "converted": len(converted),
            "failed": len(failed),
            "audio_minutes": round(audio_s / 60, 2),
            "files_per_hour": round(len(outcomes) / max(elapsed, 1e-6) * 3600),
            "realtime_factor": round(elapsed / audio_s, 4) if audio_s else None,
            "workers": config.workers,
            "failures": dg.MetadataValue.md(_failures_markdown(failed)),
        },
    )


def _convert_and_upload_all(
    context, rows: list, extracted: dict[str, Path], out_dir: Path, archive: ArchiveRef,
    object_store: ObjectStore, config: OpusConversionConfig, ffmpeg: str,
) -> list[ConvertedFile | FileFailure]:
    """ffmpeg runs in `workers` threads (one core each); uploads run in a pool of their own,
    so a slow object store never leaves a core idle waiting for a PUT."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes, uploads = [], []
    started, total = time.monotonic(), len(rows)
    report_every = max(1, total // 10)
    with (
        ThreadPoolExecutor(max_workers=max(1, config.workers)) as converters,
        ThreadPoolExecutor(max_workers=max(1, config.upload_workers)) as uploaders,
    ):
        conversions = [
            converters.submit(_convert, row, extracted.get(row.member), out_dir, config, ffmpeg) for row in rows
        ]
        for done, future in enumerate(as_completed(conversions), start=1):
            converted = future.result()
            if isinstance(converted, FileFailure):
                outcomes.append(converted)
            else:
                uploads.append(uploaders.submit(_upload, *converted, archive, object_store))
            if done % report_every == 0 or done == total:
                rate = done / max(time.monotonic() - started, 1e-6)
                context.log.info(f"converted {done}/{total} files ({rate:.1f} files/s)")
        outcomes += [upload.result() for upload in uploads]
    return outcomes


def _convert(
    row, source: Path | None, out_dir: Path, config: OpusConversionConfig, ffmpeg: str
) -> tuple[int, str, Path, float] | FileFailure:
    file_id = int(row.audio_file_id)
    if source is None:
        return FileFailure(file_id, row.member, "conversion", "member missing from the archive on re-read")
    target = out_dir / f"{file_id}.opus"
    try:
        result = convert_to_opus(
            source, target, ffmpeg=ffmpeg, bitrate_kbps=config.bitrate_kbps,
            duration_tolerance_s=config.duration_tolerance_s,
        )
    except ConversionError as exc:
        return FileFailure(file_id, row.member, "conversion", str(exc))
    finally:
        source.unlink(missing_ok=True)  # scratch holds only files still in flight
    return file_id, row.member, target, result.opus_duration_s


def _upload(
    file_id: int, member: str, target: Path, duration_s: float, archive: ArchiveRef, object_store: ObjectStore
) -> ConvertedFile | FileFailure:
    key = opus_key(archive.date, file_id)
    try:
        uploaded = object_store.upload_file(target, key, content_type="audio/ogg")
    except Exception as exc:  # after the store's own retries: record, do not lose the file
        return FileFailure(file_id, member, "upload", f"upload to {key} failed: {exc}")
    finally:
        target.unlink(missing_ok=True)
    return ConvertedFile(
        audio_file_id=file_id, opus_key=key, s3_uri=f"s3://{object_store.bucket}/{key}",
        duration_seconds=duration_s, file_size_bytes=uploaded.size,
    )


def _current_opus_keys(results_db: ResultsDatabase, archive_key: str) -> dict[int, str]:
    rows = results_db.query(
        "SELECT id, opus_path FROM audio_files WHERE archive_source = %s AND opus_path IS NOT NULL",
        (archive_key,),
    )
    return {row["id"]: row["opus_path"] for row in rows}


def _delete_replaced_objects(object_store, previous_keys, converted, failed) -> None:
    """An archive overwritten on a later day moves its files to a new date folder, and a file
    that now fails has no object: remove what the rows no longer point to."""
    new_keys = {c.audio_file_id: c.opus_key for c in converted}
    for file_id, old_key in previous_keys.items():
        if new_keys.get(file_id) != old_key:
            object_store.delete(old_key)


def _results_frame(converted, failed, members: dict) -> pd.DataFrame:
    rows = [
        (c.audio_file_id, members[c.audio_file_id], "converted", c.opus_key, c.duration_seconds, c.file_size_bytes, None)
        for c in converted
    ] + [(f.audio_file_id, f.original_filename, "failed", None, None, None, f.error) for f in failed]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).sort_values("member", ignore_index=True)


def _failures_markdown(failed: list[FileFailure]) -> str:
    if not failed:
        return "none"
    lines = ["| member | stage | error |", "|---|---|---|"]
    lines += [f"| `{f.original_filename}` | {f.stage} | {f.error} |" for f in failed[:50]]
    return "\n".join(lines)
