"""archive_sensor: a new or overwritten archives/*.tar[.gz] becomes a partition and a run.

Its cursor is a LastModified watermark, a few dozen bytes however big the bucket gets or however
many archives arrive at once. S3 lists keys in name order, not by time, so every tick lists the
prefix, with a "/" delimiter: keys nested in folders below it are not archives and are not
listed, however many there are (the tick names the folders). Objects modified within a
look-back window before the watermark are candidates; whether a candidate's version was
already requested is answered by the archive registry (`archives.requested_etag`), not by the
cursor, so a bootstrap over 100,000 archives does not grow it. The window covers LastModified's 1-second resolution and multipart uploads, whose
LastModified is when the upload *started* and which become visible later.

Each tick requests at most ARCHIVE_SENSOR_MAX_RUNS_PER_TICK runs, oldest archives first, and
leaves the rest for the next ticks: a bucket that already holds 100,000 archives is taken up
over many short ticks (each far below the daemon's 60 s sensor timeout, after which a tick's
cursor is not saved) instead of one tick that never finishes: the watermark then stops at the
oldest archive not yet requested, so the next tick still sees it as a candidate.

The registry remembers a version as requested before the daemon stores the tick's runs. A
daemon killed (or a tick timed out) in between would leave that version remembered and never
run, so each tick reconciles: a request older than ARCHIVE_SENSOR_REQUEST_GRACE_S with no
Dagster run for its version is offered again (one batched run query per tick, however many).
"""

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from archive_identity import (
    ARCHIVE_ETAG_TAG,
    ARCHIVE_PREFIX,
    ARCHIVES_PARTITIONS,
    ArchiveVersion,
    is_archive_key,
    tagged_version,
)
from audio_assets.archive_job import archive_job, archive_run_request, archives_partitions, request_number
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase

LOOKBACK = timedelta(hours=int(os.environ.get("ARCHIVE_SENSOR_LOOKBACK_HOURS", "6")))
MAX_RUNS_PER_TICK = int(os.environ.get("ARCHIVE_SENSOR_MAX_RUNS_PER_TICK", "500"))
REQUEST_GRACE_S = float(os.environ.get("ARCHIVE_SENSOR_REQUEST_GRACE_S", "300"))
MAX_RECONCILED_PER_TICK = 1000  # unconfirmed requests checked per tick, oldest first
NAMED_SKIPS = 5  # skipped keys named in a tick's log


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ArchiveCursor:
    watermark: datetime = _EPOCH
    backlog: int = 0  # archives found but left for later ticks (shown to the operator)

    @classmethod
    def parse(cls, raw: str | None) -> "ArchiveCursor":
        if not raw:
            return cls()
        data = json.loads(raw)  # cursors of the earlier format also carry "recent": not needed now
        return cls(watermark=datetime.fromisoformat(data["watermark"]), backlog=int(data.get("backlog", 0)))

    def serialize(self) -> str:
        return json.dumps({"watermark": self.watermark.isoformat(), "backlog": self.backlog}, sort_keys=True)

    def is_candidate(self, last_modified: datetime, lookback: timedelta) -> bool:
        return last_modified >= self.watermark - lookback

    def advance(self, candidates: list[datetime], left_for_later: list[datetime]) -> "ArchiveCursor":
        """The cursor after a tick that listed `candidates` (their LastModified) and left
        `left_for_later` of them unrequested."""
        if left_for_later:
            return ArchiveCursor(max(self.watermark, min(left_for_later)), backlog=len(left_for_later))
        return ArchiveCursor(max([self.watermark, *candidates]), backlog=0)


@dg.sensor(
    job=archive_job,
    minimum_interval_seconds=int(os.environ.get("ARCHIVE_SENSOR_INTERVAL_S", "30")),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists s3://{bucket}/archives/ and requests a run for every new or changed archive",
)
def archive_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStore, results_db: ResultsDatabase
) -> dg.SensorResult | dg.SkipReason:
    cursor = ArchiveCursor.parse(context.cursor)
    listing = object_store.list_folder(ARCHIVE_PREFIX)
    archives, skipped = _split_listing(listing.objects, cursor)
    candidates = [obj for obj in archives if cursor.is_candidate(obj.last_modified, LOOKBACK)]
    unrequested = results_db.archives.not_yet_requested([(obj.key, obj.etag) for obj in candidates])
    unrequested |= requests_without_runs(context, results_db, {(obj.key, obj.etag) for obj in archives})
    new = sorted(
        (obj for obj in archives if (obj.key, obj.etag) in unrequested), key=lambda o: (o.last_modified, o.key)
    )
    now, later = new[:MAX_RUNS_PER_TICK], new[MAX_RUNS_PER_TICK:]
    next_cursor = cursor.advance([obj.last_modified for obj in candidates], [obj.last_modified for obj in later])
    skip_note = _log_skipped(context, skipped) + _folders_note(listing.folders)
    if not now:
        context.update_cursor(next_cursor.serialize())
        return dg.SkipReason(
            f"no new or changed archives under {ARCHIVE_PREFIX} ({len(candidates)} checked){skip_note}"
        )

    # Each object keeps the partition it got when first seen; b.tar and b.tar.gz get two.
    requests = results_db.archives.record_requests([(obj.key, obj.etag) for obj in now])
    known = set(context.instance.get_dynamic_partitions(ARCHIVES_PARTITIONS))
    missing = sorted({requests[obj.key].partition_key for obj in now} - known)
    # The request's number makes a new version, or an old one put back, a new run (Dagster
    # drops a repeated run key); a request offered again keeps its number and its key.
    run_requests = [
        archive_run_request(ArchiveVersion.of(o, requests[o.key].partition_key), requests[o.key].number) for o in now
    ]
    context.log.info(
        f"{len(run_requests)} archive(s) to process, {len(missing)} new partition(s), "
        f"{len(later)} left for the next ticks"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[archives_partitions.build_add_request(missing)] if missing else [],
        cursor=next_cursor.serialize(),
    )


def requests_without_runs(
    context: dg.SensorEvaluationContext, results_db: ResultsDatabase, listed: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """(archive key, ETag) requests older than the grace period that have no Dagster run and
    are still the object's version: to be requested again. A request is confirmed by a run of
    that request (its number tagged), never by an older run of the same ETag (A -> B -> A);
    those whose version is gone (overwritten, deleted) are forgotten."""
    pending = results_db.archives.unconfirmed_requests(REQUEST_GRACE_S, MAX_RECONCILED_PER_TICK)
    if not pending:
        return set()
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=archive_job.name, tags={ARCHIVE_ETAG_TAG: sorted({r["etag"] for r in pending})})
    )
    have_runs = {(*tagged_version(r.dagster_run.tags), request_number(r.dagster_run.tags)) for r in records}
    ran = [r for r in pending if (r["archive_key"], r["etag"], r["request_seq"]) in have_runs]
    not_ran = [r for r in pending if (r["archive_key"], r["etag"], r["request_seq"]) not in have_runs]
    results_db.archives.confirm_requests([(r["archive_key"], r["etag"], r["request_seq"]) for r in ran])
    results_db.archives.forget_requests([r for r in not_ran if (r["archive_key"], r["etag"]) not in listed])
    again = {(r["archive_key"], r["etag"]) for r in not_ran if (r["archive_key"], r["etag"]) in listed}
    if again:
        context.log.warning(
            f"{len(again)} requested archive version(s) have no run after {REQUEST_GRACE_S:.0f} s "
            f"(the daemon stopped before storing the tick?), requesting again: "
            + ", ".join(f"{key}@{etag}" for key, etag in sorted(again)[:NAMED_SKIPS])
        )
    return again


def _split_listing(objects: Iterable, cursor: ArchiveCursor) -> tuple[list, list[str]]:
    """(archives, keys skipped) of the objects directly under archives/; skipped keys are those
    that are not archives (another suffix), counted among the recent ones only so a key is
    reported while it is new, not on every tick for ever."""
    archives, skipped = [], []
    for obj in objects:
        if is_archive_key(obj.key):
            archives.append(obj)
        elif cursor.is_candidate(obj.last_modified, LOOKBACK) and not obj.key.endswith("/"):
            skipped.append(obj.key)
    return archives, skipped


def _folders_note(folders: list[str]) -> str:
    """Folders under archives/ are never looked into (the listing stops at them, so their keys
    cost a tick nothing): named in the skip reason, since an archive uploaded into one is never
    processed."""
    if not folders:
        return ""
    named = ", ".join(folders[:NAMED_SKIPS]) + (", ..." if len(folders) > NAMED_SKIPS else "")
    return f"; {len(folders)} folder(s) not looked into (only archives directly under {ARCHIVE_PREFIX} run): {named}"


def _log_skipped(context: dg.SensorEvaluationContext, skipped: list[str]) -> str:
    """Names the first skipped keys in the tick's log; returns a note for the skip reason."""
    if not skipped:
        return ""
    named = ", ".join(sorted(skipped)[:NAMED_SKIPS]) + (", ..." if len(skipped) > NAMED_SKIPS else "")
    note = (
        f"; {len(skipped)} key(s) skipped: not an archive directly under {ARCHIVE_PREFIX} "
        f"ending in .tar, .tar.gz or .tgz: {named}"
    )
    context.log.warning(note[2:])
    return note
