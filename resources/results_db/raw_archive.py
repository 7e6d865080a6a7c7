"""raw_archive's writes: the archive version's members registered as rows of `audio_files`.

One row per MP3 member, accepted or rejected. Statuses only move forward (pending ->
converted -> transcribed -> classified) unless the member's input changed: its bytes (SHA-256)
differ from the version the row was made from, it came back after being removed, or it is now
rejected for what it is; then the row starts over and its transcripts and scores go (they
describe audio the version no longer has). A member cap (size, name length: run config) refuses
new work, never finished work: a row that got past conversion from the very bytes a lower cap
now rejects keeps its status, objects and results, and the refusal stays open in the dead
letter. A row whose member the version lacks is marked removed, kept with its
results as a record of what was reviewed. Objects rows stop pointing to are queued for
deletion in the same transaction (the step drains the outbox after it commits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg2.extras

from resources.results_db import failures
from resources.results_db.database import FencedArchive
from resources.results_db.failures import FileFailure
from resources.results_db.object_deletions import enqueue_in
from sql.named_queries import queries

Q = queries("raw_archive")


@dataclass(frozen=True)
class ExistingRow:
    id: int
    name: str
    source_sha256: str | None
    status: str
    failed_stage: str | None
    opus_path: str | None


@dataclass(frozen=True)
class RowChange:
    name: str
    status: str
    error: str | None = None
    failed_stage: str | None = None
    clear_opus: bool = False  # delete the Opus object and forget it
    drop_model_outputs: bool = False  # transcripts and scores describe audio that is gone


# Statuses whose row has finished work a cap must not take away (an Opus object, transcripts, scores).
_PAST_CONVERSION = ("converted", "transcribed", "classified")


@dataclass(frozen=True)
class Rejection:
    reason: str
    sha256: str | None = None  # of the member's bytes, when a member cap alone rejected it


def plan_member_changes(
    existing: Mapping[str, ExistingRow], accepted: Mapping[str, str | None], rejected: Mapping[str, Rejection]
) -> list[RowChange]:
    """What registering a version does to the rows of its archive.

    `accepted`: {member name: sha256 of its bytes}; `rejected`: {member name: Rejection} for MP3
    members the scan refused. A rejected name that is also accepted (a duplicate member) is not
    a row of its own. Rows whose status does not change are not listed.
    """
    changes = []
    for name, sha256 in accepted.items():
        row = existing.get(name)
        if row is None:
            continue  # inserted as pending
        input_changed = row.source_sha256 != sha256
        was_rejected = row.status == "failed" and row.failed_stage == "archive"
        if input_changed or row.status == "removed" or was_rejected:
            changes.append(RowChange(name, "pending", clear_opus=True, drop_model_outputs=True))
    for name, rejection in rejected.items():
        row = existing.get(name)
        if name in accepted or (row is not None and _kept_under_a_cap(row, rejection)):
            continue
        if row is None or row.status != "failed" or row.failed_stage != "archive":
            changes.append(
                RowChange(
                    name,
                    "failed",
                    error=rejection.reason,
                    failed_stage="archive",
                    clear_opus=True,
                    drop_model_outputs=True,
                )
            )
    for name, row in existing.items():
        if name not in accepted and name not in rejected and row.status != "removed":
            # Kept, with its transcripts and scores, as a record of what was reviewed; the
            # views leave removed files out.
            changes.append(RowChange(name, "removed", clear_opus=True))
    return changes


def _kept_under_a_cap(row: ExistingRow, rejection: Rejection) -> bool:
    """The member a cap rejects is the one the row's finished work was made from."""
    return rejection.sha256 is not None and rejection.sha256 == row.source_sha256 and row.status in _PAST_CONVERSION


@dataclass(frozen=True)
class RegisteredMembers:
    ids: dict[str, int]  # every member that has a row: accepted and rejected MP3s
    restarted: list[str]  # accepted members whose input changed (or came back)
    removed: list[str]


def register_members(
    run: FencedArchive,
    *,
    accepted: Mapping[str, tuple[int, str | None]],
    rejected: Mapping[str, Rejection],
    other_failures: Sequence[FileFailure],
) -> RegisteredMembers:
    """Rows for the version's MP3 members, in one fenced transaction.

    `accepted`: {name: (size, sha256)}; `rejected`: {MP3 name: Rejection}; `other_failures`:
    rejected members that get no row (parquets, duplicates), recorded in the dead letter.
    Accepted members' open `archive` failures are over (a cap raised again, a member fixed).
    """
    archive = run.archive

    def register(cur) -> RegisteredMembers:
        cur.execute(Q.lock_rows_of_archive, {"archive_key": archive.key})
        existing = {
            r["original_filename"]: ExistingRow(
                r["id"], r["original_filename"], r["source_sha256"], r["status"], r["failed_stage"], r["opus_path"]
            )
            for r in cur.fetchall()
        }
        changes = plan_member_changes(existing, {name: sha for name, (_, sha) in accepted.items()}, rejected)
        identities = [
            (archive.key, archive.partition_key, archive.etag, name, size, sha)
            for name, (size, sha) in accepted.items()
        ] + [
            (archive.key, archive.partition_key, archive.etag, name, None, None)
            for name in rejected
            if name not in accepted
        ]
        ids = {}
        if identities:
            rows = psycopg2.extras.execute_values(cur, Q.upsert_members, identities, fetch=True)
            ids = {row["original_filename"]: row["id"] for row in rows}
        ids |= {name: row.id for name, row in existing.items() if name not in ids}
        failures.change_statuses_in(
            cur, archive, [(ids[c.name], c.status, c.error, c.failed_stage, c.clear_opus) for c in changes]
        )
        dropped = [ids[c.name] for c in changes if c.drop_model_outputs]
        if dropped:
            cur.execute(Q.delete_model_outputs, {"ids": dropped})
        enqueue_in(
            cur,
            archive.key,
            [existing[c.name].opus_path for c in changes if c.clear_opus and c.name in existing],
            f"member removed, changed or rejected in version {archive.etag}",
        )
        member_failures = [
            FileFailure(ids[name], name, "archive", r.reason) for name, r in rejected.items() if name not in accepted
        ]
        failures.record_in(cur, archive, [*member_failures, *other_failures], run.run_id)
        failures.resolve_files_in(cur, [ids[name] for name in accepted], ["archive"])
        removed = [c.name for c in changes if c.status == "removed"]
        failures.resolve_members_in(cur, archive.key, removed)
        return RegisteredMembers(
            ids={name: ids[name] for name in [*accepted, *rejected] if name in ids},
            restarted=[c.name for c in changes if c.status == "pending"],
            removed=removed,
        )

    return run.transaction(register, what="register members")
