"""opus_files: every MP3 member converted to Opus, integrity-checked and uploaded."""

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from audio_assets.archive_job import archive_asset
from audio_assets.file_batches import PreparedAhead, commit_in_batches, raise_for_retryable, split_done
from audio_assets.settings import OpusConversionConfig
from media.ffmpeg_binary import resolve_ffmpeg
from media.opus_convert import ConversionError, convert_to_opus
from media.streaming_conversion import ConversionStream
from media.tar_safety import iter_archive
from resources.archive_run import ArchiveRun, HeldArchive
from resources.manifest_io import ArchiveTable
from resources.results_db.failures import Cause, FileFailure
from resources.results_db.opus_files import ConvertedFile, conversion_state, has_opus, record_conversions
from resources.scratch import ScratchSpace

RESULT_COLUMNS = [
    "audio_file_id",
    "member",
    "status",
    "opus_key",
    "opus_etag",
    "duration_seconds",
    "opus_bytes",
    "error",
]


def opus_key(held: HeldArchive, audio_file_id: int) -> str:
    """Written once, by one execution of the step (its number is in the key): neither a run
    that was taken over nor a twin of this execution in the same run can overwrite the object
    a row of another execution points to. What no row came to point to is deleted through the
    outbox."""
    return f"processed/{held.archive.date}/{audio_file_id}-{held.execution}.opus"


@dataclass(frozen=True)
class _Job:
    audio_file_id: int
    member: str
    source: Path


@dataclass(frozen=True)
class _Encoded:
    audio_file_id: int
    member: str
    target: Path
    duration_s: float


@archive_asset(kinds={"ffmpeg", "s3", "postgres"})
def opus_files(
    context: dg.AssetExecutionContext, config: OpusConversionConfig, raw_archive: ArchiveTable, archive_run: ArchiveRun
) -> dg.Output[ArchiveTable]:
    """MP3 members as Opus objects in processed/{date}/{id}-{execution}.opus; a bad file fails alone."""
    with archive_run.step(context, raw_archive) as held:
        held.drain()  # before any upload of this run
        members = accepted_mp3s(raw_archive.rows)
        already, todo = _split_converted(held, members, config.reconvert)
        started = time.monotonic()
        outcomes = _convert(held, todo, config) if todo else []
        held.drain()
        failed = [o for o in outcomes if isinstance(o, FileFailure)]
        raise_for_retryable(failed, len(todo))
        converted = [o for o in outcomes if isinstance(o, ConvertedFile)]
        return held.output(
            results_frame(already, converted, failed, {i: m for m, i in members.items()}),
            _metadata(config, converted, failed, len(already), time.monotonic() - started),
        )


def _convert(held: HeldArchive, todo: dict[str, int], config: OpusConversionConfig) -> list:
    """The files to do, streamed out of the run's copy into ffmpeg and up to the object store,
    each upload's intent queued first, outcomes committed every files_per_commit files."""
    with held.workdir() as workdir:
        stream = _conversion_stream(config, workdir / "opus", held)
        intents = PreparedAhead(
            todo.values(),
            config.files_per_commit,
            lambda ids: held.intend_uploads([opus_key(held, i) for i in ids]),
        )
        jobs = _extract(held.local_copy(), todo, workdir / "mp3", config, intents)
        # Closed here, whatever a commit raises: its uploads have returned before the step ends.
        with contextlib.closing(stream.run(jobs)) as outcomes:
            return commit_in_batches(outcomes, config.files_per_commit, lambda chunk: _commit(held, chunk, config))


def accepted_mp3s(manifest: pd.DataFrame) -> dict[str, int]:
    """{member: audio_file_id} of the manifest's accepted MP3s."""
    mp3s = manifest[(manifest["kind"] == "mp3") & manifest["accepted"]]
    return {member: int(file_id) for member, file_id in zip(mp3s["member"], mp3s["audio_file_id"])}


def _split_converted(held: HeldArchive, members: dict[str, int], reconvert: bool) -> tuple[list[dict], dict[str, int]]:
    """(rows of files already converted, {member: file id} still to do). Done means: the row
    has its Opus object (has_opus). raw_archive started over every row
    whose member's bytes (SHA-256) changed, so an unchanged member of an archive uploaded
    again on another day is never converted again."""
    state = {} if reconvert else conversion_state(held)

    def is_converted(item: tuple[str, int]) -> bool:
        row = state.get(item[0])
        return bool(row and has_opus(row))

    done, todo = split_done(members.items(), is_converted)
    return [state[member] for member, _ in done], dict(todo)


def _metadata(
    config: OpusConversionConfig,
    converted: list[ConvertedFile],
    failed: list[FileFailure],
    already: int,
    elapsed: float,
) -> dict:
    audio_s = sum(c.duration_seconds for c in converted)
    return {
        "converted": len(converted),
        "already_converted": already,
        "failed": len(failed),
        "audio_minutes": round(audio_s / 60, 2),
        "files_per_hour": round((len(converted) + len(failed)) / max(elapsed, 1e-6) * 3600),
        "realtime_factor": round(elapsed / audio_s, 4) if audio_s else None,
        "workers": config.workers,
        "failures": dg.MetadataValue.md(_failures_markdown(failed)),
    }


def _extract(
    local: Path, todo: dict[str, int], out_dir: Path, config: OpusConversionConfig, intents: PreparedAhead[int]
) -> Iterator[_Job | FileFailure]:
    """The MP3s still to convert, copied out of the tar one at a time as the stream asks, each
    with its upload intent committed first. A member this step's caps refuse (lower than
    raw_archive's were) fails with the reason; a duplicate of a member's name is not that member."""
    out_dir.mkdir(parents=True, exist_ok=True)
    refused: dict[str, str] = {}
    started: set[str] = set()
    for entry in iter_archive(local, config.limits):
        file_id = todo.get(entry.name)
        if file_id is None or entry.kind != "mp3" or entry.name in started:
            continue
        if entry.rejection is not None:
            refused.setdefault(entry.name, entry.rejection)
            continue
        started.add(entry.name)
        try:
            intents.ensure(file_id)
        except Exception as exc:  # the database, after its own retries: the file stays as it was
            yield FileFailure(file_id, entry.name, "upload", f"queue the upload intent: {exc}", "service")
            continue
        target = out_dir / f"{file_id}.mp3"
        try:
            ScratchSpace.ensure_free(out_dir, entry.size + 2 * 1024 * 1024, f"extracting {entry.name}")
            entry.copy_to(target)
        except OSError as exc:  # ScratchFull, ENOSPC: the host's, the file stays as it was
            target.unlink(missing_ok=True)
            yield FileFailure(file_id, entry.name, "conversion", f"scratch space: {exc}", "service")
            continue
        yield _Job(file_id, entry.name, target)
    for name, file_id in todo.items():
        if name not in started:
            yield FileFailure(file_id, name, "conversion", refused.get(name, "member not found in the archive"))


def _conversion_stream(config: OpusConversionConfig, out_dir: Path, held: HeldArchive) -> ConversionStream:
    ffmpeg, bucket = resolve_ffmpeg(), held.object_store.bucket
    out_dir.mkdir(parents=True, exist_ok=True)

    def convert(job: _Job | FileFailure) -> _Encoded | FileFailure:
        if isinstance(job, FileFailure):
            return job
        target = out_dir / f"{job.audio_file_id}.opus"
        try:
            result = convert_to_opus(
                job.source,
                target,
                ffmpeg=ffmpeg,
                bitrate_kbps=config.bitrate_kbps,
                duration_tolerance_s=config.duration_tolerance_s,
                timeout_s=config.ffmpeg_timeout_s,
                max_seconds=config.max_audio_minutes * 60,
            )
        except ConversionError as exc:  # the file's, or unclear (a crash, a timeout): tried again, counted
            cause: Cause = "unclear" if exc.transient else "input"
            return FileFailure(job.audio_file_id, job.member, "conversion", str(exc), cause)
        except OSError as exc:  # ffmpeg cannot start or write (scratch): the host's, nothing counted
            return FileFailure(job.audio_file_id, job.member, "conversion", str(exc), "service")
        finally:
            job.source.unlink(missing_ok=True)  # scratch holds only files still in flight
        return _Encoded(job.audio_file_id, job.member, target, result.opus_duration_s)

    def upload(encoded: _Encoded) -> ConvertedFile | FileFailure:
        key = opus_key(held, encoded.audio_file_id)
        try:  # its intent is queued (PreparedAhead): deleted unless a row commits it
            stored = held.upload(encoded.target, key, content_type="audio/ogg")
        except Exception as exc:  # the store after its own retries, or the hold over: the row stays as it was
            return FileFailure(
                encoded.audio_file_id, encoded.member, "upload", f"upload to {key} failed: {exc}", "service"
            )
        finally:
            encoded.target.unlink(missing_ok=True)
        return ConvertedFile(
            audio_file_id=encoded.audio_file_id,
            opus_key=key,
            s3_uri=f"s3://{bucket}/{key}",
            opus_etag=stored.etag,
            duration_seconds=encoded.duration_s,
            file_size_bytes=stored.size,
        )

    return ConversionStream(
        convert,
        upload,
        lambda result: isinstance(result, _Encoded),
        workers=config.workers,
        upload_workers=config.upload_workers,
    )


def _commit(held: HeldArchive, chunk: list, config: OpusConversionConfig) -> list[ConvertedFile | FileFailure]:
    converted = [o for o in chunk if isinstance(o, ConvertedFile)]
    failed = record_conversions(
        held, converted, [o for o in chunk if isinstance(o, FileFailure)], config.max_file_attempts
    )
    held.log.info(f"committed {len(converted)} converted and {len(failed)} failed file(s)")
    for failure in failed:
        held.log.warning(str(failure))
    return [*converted, *failed]


def results_frame(
    already: list[dict], converted: list[ConvertedFile], failed: list[FileFailure], members: dict
) -> pd.DataFrame:
    rows = (
        [
            (
                r["id"],
                r["original_filename"],
                "converted",
                r["opus_path"],
                r["opus_etag"],
                r["duration_seconds"],
                r["file_size_bytes"],
                None,
            )
            for r in already
        ]
        + [
            (
                c.audio_file_id,
                members[c.audio_file_id],
                "converted",
                c.opus_key,
                c.opus_etag,
                c.duration_seconds,
                c.file_size_bytes,
                None,
            )
            for c in converted
        ]
        + [(f.audio_file_id, f.original_filename, "failed", None, None, None, None, f.error) for f in failed]
    )
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS).sort_values("member", ignore_index=True)
    frame["audio_file_id"] = frame["audio_file_id"].astype("Int64")
    frame["opus_bytes"] = frame["opus_bytes"].astype("Int64")
    return frame


def _failures_markdown(failed: list[FileFailure]) -> str:
    if not failed:
        return "none"
    lines = ["| member | stage | error |", "|---|---|---|"]
    lines += [f"| `{f.original_filename}` | {f.stage} | {f.error} |" for f in failed[:50]]
    return "\n".join(lines)
