"""ArchiveRun: a run's hold on its archive, the one resource every archive step stands on.

A step opens `archive_run.step(context, upstream)` around its work and is handed a
`HeldArchive`, which owns everything the steps share:

- The version. raw_archive resolves it once: the registry's key for the partition (the one
  partition -> key resolver, never a bucket listing), at the ETag the sensor's tags pin,
  checked by one HEAD (a backfill, which has no tags, takes the object as it is now). Every
  later step carries it in its upstream table.
- The claim. One run of an archive at a time, on any executor, for the whole run: Dagster's
  run queue allows one run per `dagster/partition`, and since `dagster asset materialize`
  bypasses the queue, the run also holds a claim, a row in `archives` (holder run, epoch,
  heartbeat on database time) rather than a lock on a connection, so it spans every step
  wherever each executes. raw_archive takes it, waiting while another live run holds it, and
  gets a new epoch; later steps resume it and never wait (a GPU step never sits on a GPU
  waiting for an archive). A claim ends with its run: a run this Dagster instance knows holds
  it until Dagster reports it finished, however long it waits between steps (for a GPU slot);
  a run it does not know (deleted, or another instance's: a CLI `materialize` under another
  DAGSTER_HOME) holds it while its steps keep renewing the heartbeat (every `claim_ttl_s / 6`),
  and may be taken over once they stopped for `claim_ttl_s`.
- The step execution. Under Celery one run's step can execute twice at once (its message
  delivered again while the first worker still works), so the run's epoch cannot tell the two
  apart: each execution of a step starts a row in `step_executions` and takes the step over
  (the newest wins, so a redelivered or retried step never waits for one that may be dead),
  holds a lease on it renewed with the claim, uploads to keys of its own number, and works in
  a scratch folder of its own.
- The fence. Every write goes through `held.transaction(work)`, which first takes a share
  lock on the archive's row and refuses unless the version is still the one results belong
  to (StaleArchiveVersion), the epoch still the run's (ClaimLost), and the execution still its
  step's newest with its lease running (ExecutionOver, retryable: the step's retry takes the
  step over and does what is left). An execution whose hold is over writes nothing more and
  stops uploading (`held.upload`); a second raw_archive of the run keeps the run's epoch.
- The local copy: SCRATCH_ROOT/{run_id}/archive/, downloaded by the first step on a host that
  reads it (one GET, its ETag checked against the claimed version), read by the later ones,
  removed by the last of raw_archive, opus_files and parquet_metadata on that host (or at
  once when raw_archive fails; the hourly scratch sweep takes what a killed worker left).
- The outbox of object deletions (results_db/object_deletions.py): uploads are queued as
  intents of their execution before they start; an execution drains when none of its own
  uploads is in flight, and an intent is deleted only once its execution is over.
- The archive-level dead letter: `held.fail(reason)` records a definite failure of the whole
  archive and fails the step without retries (so does an unreadable or refused archive);
  a step's success closes its stage's open archive-level failures.
"""

import contextlib
import importlib.metadata
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import dagster as dg
import pandas as pd
from pydantic import Field

from archive_identity import ArchiveVersion, tagged_version
from media.tar_safety import ArchiveRefused, ArchiveUnreadable
from resources.manifest_io import ArchiveTable
from resources.object_store import ObjectInfo, ObjectStore
from resources.results_db import ResultsDatabase, object_deletions
from resources.results_db.failures import STAGE_OF_STEP
from resources.scratch import ScratchSpace
from sql.named_queries import NamedQuery, queries

Q = queries("archive_run")
T = TypeVar("T")

# The steps that read the archive's bytes (each on its host, from the run's one local copy).
ARCHIVE_READERS = ("raw_archive", "opus_files", "parquet_metadata")
LAST_STEP = "classifications"  # its success also closes what is left of the run's failures
_COPY = "archive"
CLAIM_RETRY_DELAY_S = 60  # between two executions of raw_archive waiting for a claim
_DOWNLOAD_HEADROOM_BYTES = 1024 * 1024


class StaleArchiveVersion(dg.Failure):
    """The run's archive version is no longer the one results belong to: a newer version has
    been claimed. Nothing was written; retrying cannot help."""

    def __init__(self, archive: ArchiveVersion, current_etag: str | None):
        self.archive, self.current_etag = archive, current_etag
        super().__init__(
            description=(
                f"{archive.key}: this run read version {archive.etag}, but the results now belong to "
                f"version {current_etag or '(none registered)'}; nothing was written "
                "(the newer version's own run writes its results)"
            ),
            allow_retries=False,
        )


class ClaimLost(dg.Failure):
    """Another run took the archive over (this run's claim had ended or gone silent): this
    run's writes are refused. Nothing was written; retrying cannot help."""

    def __init__(self, archive: ArchiveVersion, current_epoch: int | None, holder: str | None = None):
        self.archive, self.current_epoch = archive, current_epoch
        by = f" by run {holder}" if holder else ""
        super().__init__(
            description=(
                f"{archive.key}: this run's claim (epoch {archive.epoch}) was taken over{by} "
                f"(epoch {current_epoch}); nothing was written"
            ),
            allow_retries=False,
        )


class ExecutionOver(RuntimeError):
    """This execution of a step may write and upload nothing more: another execution of the
    same step took it over (the run's message delivered again, or a retry), or its lease
    passed. Nothing was written; retryable: the step's retry takes the step over and does
    what is left."""


class ArchiveBusy(RuntimeError):
    """Another run held the archive for longer than this run was willing to wait."""


@dataclass(frozen=True)
class ClaimHolder:
    """The run that holds an archive's claim, and how long ago a step of it last said so."""

    run_id: str
    heartbeat_age_s: float | None  # None: never renewed (a claim from before heartbeats)


def claim(
    results_db: ResultsDatabase,
    archive: ArchiveVersion,
    run_id: str,
    holder_ended: Callable[[ClaimHolder], bool],
    *,
    resume: bool,
) -> ArchiveVersion | ClaimHolder:
    """The run's claim on `archive`, in one transaction: `archive` with its claim's epoch, or the
    other run that holds the archive and has not ended (the caller waits or gives up).

    raw_archive takes a claim (`resume=False`): its version becomes the one results belong to,
    unless a newer one (later LastModified) already is (StaleArchiveVersion; ties go to the
    later claim, which read the object later), under a new epoch unless the run already held
    it (its raw_archive delivered twice). Every later step resumes it: the run's own claim
    keeps its epoch; one left by a run that ended (a retry of a failed run takes over from its
    parent) gets a new epoch; one another live run holds is lost (ClaimLost)."""

    def decide(cur) -> ArchiveVersion | ClaimHolder:
        cur.execute(Q.claim_state, {"archive_key": archive.key})
        row = cur.fetchone()
        if row is None:  # every run's archive comes from the registry, so this is a bug
            raise LookupError(f"{archive.key} is not in the archives registry")
        newer = (
            row["current_etag"] is not None
            and row["current_etag"] != archive.etag
            and row["current_last_modified"] is not None
            and row["current_last_modified"] > archive.last_modified
        )
        if newer or (resume and row["current_etag"] != archive.etag):
            raise StaleArchiveVersion(archive, row["current_etag"])
        holder = ClaimHolder(row["claimed_by_run"], row["heartbeat_age_s"]) if row["claimed_by_run"] else None
        if resume and holder is not None and holder.run_id == run_id:
            cur.execute(Q.renew_claim, {"archive_key": archive.key, "epoch": row["claim_epoch"], "run_id": run_id})
            return replace(archive, epoch=row["claim_epoch"])
        if holder is not None and holder.run_id != run_id and not holder_ended(holder):
            if resume:
                raise ClaimLost(archive, row["claim_epoch"], holder.run_id)
            return holder
        cur.execute(
            Q.take_claim,
            {
                "archive_key": archive.key,
                "etag": archive.etag,
                "size": archive.size,
                "last_modified": archive.last_modified,
                "run_id": run_id,
            },
        )
        return replace(archive, epoch=cur.fetchone()["claim_epoch"])

    return results_db.transaction(decide, what=f"claim {archive}")


def renew_claim(results_db: ResultsDatabase, archive: ArchiveVersion, run_id: str) -> bool:
    """Renew the heartbeat of the run's claim; False once another run has taken it over."""
    params = {"archive_key": archive.key, "epoch": archive.epoch, "run_id": run_id}
    return bool(results_db.rows(Q.renew_claim, params, what="renew claim"))


def start_execution(results_db: ResultsDatabase, archive: ArchiveVersion, run_id: str, step: str, ttl_s: float) -> int:
    """A new execution of `step` under the run's claim, which from now on holds the step (its
    number); ClaimLost if the run no longer holds the claim."""

    def start(cur) -> int:
        cur.execute(Q.claim_state, {"archive_key": archive.key})  # waits for the writes in flight
        row = cur.fetchone()
        if (row["claimed_by_run"], row["claim_epoch"]) != (run_id, archive.epoch):
            raise ClaimLost(archive, row["claim_epoch"], row["claimed_by_run"])
        params = {"archive_key": archive.key, "step": step, "run_id": run_id, "epoch": archive.epoch, "ttl_s": ttl_s}
        cur.execute(Q.start_execution, params)
        return cur.fetchone()["execution"]

    return results_db.transaction(start, what=f"start {step} of {archive}")


def renew_execution(
    results_db: ResultsDatabase, archive: ArchiveVersion, run_id: str, execution: int, ttl_s: float
) -> bool:
    """Renew the run's claim and the execution's lease, in one transaction; False once the
    execution's hold is over (its step taken over, its run's claim lost, its lease passed)."""

    def renew(cur) -> bool:
        cur.execute(Q.renew_claim, {"archive_key": archive.key, "epoch": archive.epoch, "run_id": run_id})
        cur.execute(Q.renew_execution, {"execution": execution, "ttl_s": ttl_s})
        return cur.fetchone() is not None

    return results_db.transaction(renew, what=f"renew execution {execution} of {archive}")


class ExecutionLease:
    """The execution's own view of its lease (monotonic time, so a paused process sees the
    pause). It uploads only while its last successful renewal was sent less than half a lease
    ago: every object it stores has landed while the lease still runs on database time, before
    any drain may delete and forget the intent of it."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._renewed_at = time.monotonic()  # made before the execution's row: an underestimate
        self._over: str | None = None

    def renewed(self, sent_at: float) -> None:
        self._renewed_at = max(self._renewed_at, sent_at)

    def end(self, reason: str) -> None:
        self._over = self._over or reason

    def check(self) -> None:
        """ExecutionOver unless the execution may still upload."""
        if self._over:
            raise ExecutionOver(self._over)
        age = time.monotonic() - self._renewed_at
        if age > self.ttl_s / 2:
            raise ExecutionOver(f"its lease was last renewed {age:.0f} s ago (lease {self.ttl_s:g} s)")


@dataclass
class ClaimedArchive:
    """A run's claimed archive version (with the claim's epoch) and the writes it may make:
    transactions fenced by both (what the step data modules of resources/results_db take)."""

    archive: ArchiveVersion
    run_id: str
    results_db: ResultsDatabase

    def transaction(self, work: Callable[[Any], T], what: str) -> T:
        """`work(cursor)` in one transaction fenced by the run's version and claim epoch."""

        def fenced(cur) -> T:
            self._fence(cur)
            return work(cur)

        return self.results_db.transaction(fenced, what=f"{what} of {self.archive}")

    def _fence(self, cur) -> None:
        cur.execute(Q.lock_current_version, {"archive_key": self.archive.key})
        row = cur.fetchone()
        current = row["current_etag"] if row else None
        if current != self.archive.etag:
            raise StaleArchiveVersion(self.archive, current)
        if row["claim_epoch"] != self.archive.epoch:
            raise ClaimLost(self.archive, row["claim_epoch"])

    def rows(self, query: NamedQuery, params: dict | None = None) -> list[dict[str, Any]]:
        """A read (not fenced: what it returns is checked again by the write that uses it)."""
        return self.results_db.rows(query, params)


@dataclass
class HeldArchive(ClaimedArchive):
    """One step's execution on the run's claimed archive version (see the module docstring)."""

    object_store: ObjectStore
    scratch: ScratchSpace
    log: Any  # the step's Dagster log
    step: str
    execution: int  # its row in step_executions
    lease: ExecutionLease
    gpu: bool = False
    _local: Path | None = field(default=None, repr=False)

    def _fence(self, cur) -> None:
        """The run's fence, then this execution's: still its step's newest, its lease running.
        Whichever refuses, the execution uploads nothing more either."""
        try:
            super()._fence(cur)
        except dg.Failure as exc:  # StaleArchiveVersion, ClaimLost
            self.lease.end(exc.description or "fenced out")
            raise
        cur.execute(Q.execution_state, {"execution": self.execution})
        row = cur.fetchone()
        if row is None or not row["leased"] or row["newest"] != self.execution:
            took_over = row and row["newest"] != self.execution
            reason = (
                f"execution {row['newest']} (run {row['newest_run']}) took {self.step} over"
                if took_over
                else "its lease passed"
            )
            self.lease.end(reason)
            raise ExecutionOver(
                f"{self.archive.key}: execution {self.execution} of {self.step} may write nothing more: {reason}; "
                "nothing was written (a retry takes the step over and does what is left)"
            )

    def local_copy(self) -> Path:
        """The run's copy of the archive on this host: downloaded by the first step that needs
        it (one GET, its ETag checked against the claimed version), read by the later ones."""
        if self._local is None:
            with self.scratch.shared_dir(self.run_id, _COPY) as folder:
                local = folder / f"{self.archive.etag.replace('/', '_')}.tar"
                if not local.exists():
                    needed = self.archive.size + _DOWNLOAD_HEADROOM_BYTES
                    ScratchSpace.ensure_free(folder, needed, f"downloading {self.archive.key}")
                    info = self.object_store.download_file(self.archive.key, local)
                    if info.etag != self.archive.etag:
                        local.unlink(missing_ok=True)
                        raise dg.Failure(
                            f"{self.archive.key} changed during the run (ETag {self.archive.etag} -> {info.etag}); "
                            "the sensor requests a run for the new version",
                            allow_retries=False,
                        )
                self._local = local
        return self._local

    def workdir(self) -> contextlib.AbstractContextManager[Path]:
        """Scratch for this execution's own files (a twin on the same host has its own),
        removed when the step ends however it ends."""
        return self.scratch.step_dir(self.run_id, f"{self.step}-{self.execution}")

    def intend_uploads(self, keys: Sequence[str]) -> None:
        """Queue `keys` before uploading any of them: each is deleted unless a row commits it."""
        object_deletions.intend_uploads(self.results_db, self.archive, self.execution, keys)

    def upload(self, path: Path, key: str, content_type: str) -> ObjectInfo:
        """Store `path` under `key` (its intent queued), only while the execution's hold runs
        (ExecutionOver otherwise). An upload that returns after the hold ended (the process was
        paused mid-request) is deleted again: its intent may already be forgotten."""
        self.lease.check()
        stored = self.object_store.upload_file(path, key, content_type=content_type)
        try:
            self.lease.check()
        except ExecutionOver:
            self.object_store.delete_many([key])
            raise
        return stored

    def drain(self) -> int:
        """Delete this archive's queued objects that no row points to and no other execution
        may still be uploading."""
        return object_deletions.drain(self.results_db, self.object_store, self.archive.key, self.execution)

    def fail(self, reason: str) -> NoReturn:
        """A definite failure of the archive as a whole: recorded, never retried."""
        self.results_db.failures.record_archive_failure(
            self.archive.key,
            self.archive.partition_key,
            stage=STAGE_OF_STEP[self.step],
            error=reason,
            run_id=self.run_id,
        )
        raise dg.Failure(reason, metadata={"archive": str(self.archive)}, allow_retries=False)

    def output(self, rows: pd.DataFrame, metadata: dict) -> dg.Output[ArchiveTable]:
        """The step's table for the next step; its stage's open archive-level failures close."""
        return dg.Output(ArchiveTable(self.archive, rows), metadata=self._done(metadata))

    def result(self, metadata: dict) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=self._done(metadata))

    def _done(self, metadata: dict) -> dict:
        stages = [STAGE_OF_STEP[self.step]] + (["run"] if self.step == LAST_STEP else [])
        self.results_db.failures.resolve_stages(self.archive.key, stages)
        return metadata | worker_metadata(gpu=self.gpu)


class ArchiveRun(dg.ConfigurableResource):
    """A run's hold on its archive: version, claim, fence, local copy, outbox, dead letter."""

    object_store: dg.ResourceDependency[ObjectStore]
    results_db: dg.ResourceDependency[ResultsDatabase]
    scratch: dg.ResourceDependency[ScratchSpace]
    claim_ttl_s: float = Field(
        default=1800,
        description="A run this Dagster instance does not know (deleted, or another instance's) none of "
        "whose steps renewed its claim for this long may be taken over (a run it knows holds its claim "
        "until it finishes); a step execution that renewed its lease for this long is over",
    )
    claim_wait_s: float = Field(default=6 * 3600, description="raw_archive gives up after waiting this long in all")
    claim_step_wait_s: float = Field(
        default=300,
        description="How long one execution of raw_archive waits in its worker slot (far below the slot's soft "
        "time limit) before Dagster runs it again later, outside any slot",
    )
    poll_interval_s: float = Field(default=2.0, description="How often a waiting raw_archive tries again")

    @contextlib.contextmanager
    def step(
        self, context: dg.AssetExecutionContext, upstream: ArchiveTable | None = None, *, gpu: bool = False
    ) -> Iterator[HeldArchive]:
        """The step's work on the run's archive: raw_archive (no `upstream`) resolves and claims
        the version, waiting while another run holds it; every later step resumes the claim of
        the version its upstream table is about. Either way the execution then takes its step
        over (see the module docstring)."""
        run, step = context.run, context.asset_key.path[-1]
        ended = self._run_ended(context.instance)
        if upstream is None:
            archive = self._take(context, self._resolve(context.partition_key, run.tags), ended)
        else:
            archive = self._claimed(claim(self.results_db, upstream.archive, run.run_id, ended, resume=True))
        lease = ExecutionLease(self.claim_ttl_s)
        execution = start_execution(self.results_db, archive, run.run_id, step, self.claim_ttl_s)
        held = HeldArchive(
            archive,
            run.run_id,
            self.results_db,
            object_store=self.object_store,
            scratch=self.scratch,
            log=context.log,
            step=step,
            execution=execution,
            lease=lease,
            gpu=gpu,
        )
        failed = True
        try:
            with self._renewed(held):
                yield held
            failed = False
        except ArchiveUnreadable as exc:
            held.fail(f"archive {'refused' if isinstance(exc, ArchiveRefused) else 'unreadable'}: {exc}")
        finally:
            if step in ARCHIVE_READERS:
                self._release_local_copy(held, failed)

    def _resolve(self, partition_key: str, tags) -> ArchiveVersion:
        """The version the run is for: the registry's object for the partition, at the ETag the
        sensor's tags pin, else as it is now (a backfill, the CLI); one HEAD either way."""
        key = self.results_db.archives.key_of_partition(partition_key)
        tagged_key, tagged_etag = tagged_version(tags)
        if key is None or (tagged_key and tagged_key != key):
            raise dg.Failure(
                f"partition {partition_key!r} is registered for {key!r}, not for the run's archive {tagged_key!r}"
                if key
                else f"partition {partition_key!r} is not in the archives registry (the sensor registers "
                "every archive it sees)",
                allow_retries=False,
            )
        info = self.object_store.head(key)
        if info is None:
            raise dg.Failure(f"{key} (partition {partition_key}) is no longer in the bucket", allow_retries=False)
        if tagged_etag and info.etag != tagged_etag:
            raise dg.Failure(
                f"{key} was overwritten after this run was requested (ETag {tagged_etag} -> {info.etag}); "
                "the sensor requests a run for the new version",
                allow_retries=False,
            )
        return ArchiveVersion.of(info, partition_key)

    def _take(self, context: dg.AssetExecutionContext, archive: ArchiveVersion, ended) -> ArchiveVersion:
        """raw_archive: claim `archive` for this run, waiting for another run to end with it: at
        most `claim_step_wait_s` in the step's worker slot, whose soft time limit (2 h on the CPU
        queue) is far below `claim_wait_s`; then Dagster runs the step again a minute later,
        outside any slot, until `claim_wait_s` has passed in all."""
        step_wait_s = min(self.claim_wait_s, self.claim_step_wait_s)
        deadline, next_report = time.monotonic() + step_wait_s, 0.0
        while True:
            claimed = claim(self.results_db, archive, context.run.run_id, ended, resume=False)
            if isinstance(claimed, ArchiveVersion):
                context.log.info(f"holding the claim on {archive} (epoch {claimed.epoch})")
                return claimed
            if time.monotonic() >= deadline:
                busy = ArchiveBusy(f"{archive.key} is claimed by run {claimed.run_id}")
                retries = math.ceil(self.claim_wait_s / (step_wait_s + CLAIM_RETRY_DELAY_S)) - 1
                raise dg.RetryRequested(max_retries=retries, seconds_to_wait=CLAIM_RETRY_DELAY_S) from busy
            if time.monotonic() >= next_report:
                self._report_wait(context, archive, claimed)
                next_report = time.monotonic() + 60
            time.sleep(self.poll_interval_s)

    @staticmethod
    def _claimed(claimed: ArchiveVersion | ClaimHolder) -> ArchiveVersion:
        if not isinstance(claimed, ArchiveVersion):  # resume never waits: it raises instead
            raise RuntimeError(f"unexpected claim holder {claimed}")
        return claimed

    def _report_wait(self, context: dg.AssetExecutionContext, archive: ArchiveVersion, holder: ClaimHolder) -> None:
        if context.instance.get_run_by_id(holder.run_id) is not None:
            context.log.info(f"waiting for run {holder.run_id} to finish with {archive.key}")
            return
        age = "never" if holder.heartbeat_age_s is None else f"{holder.heartbeat_age_s:.0f} s ago"
        context.log.warning(
            f"{archive.key} is claimed by run {holder.run_id}, which this Dagster instance does not know (another "
            f"instance's run, e.g. a `dagster asset materialize` under another DAGSTER_HOME); its steps last renewed "
            f"the claim {age}: waiting until they have not for {self.claim_ttl_s:g} s"
        )

    def _run_ended(self, instance: dg.DagsterInstance) -> Callable[[ClaimHolder], bool]:
        def ended(holder: ClaimHolder) -> bool:
            run = instance.get_run_by_id(holder.run_id)
            if run is not None:  # Dagster's word; a live run renews nothing between steps
                return run.is_finished
            # Deleted, or another instance's run: only its steps' heartbeat tells.
            return holder.heartbeat_age_s is None or holder.heartbeat_age_s > self.claim_ttl_s

        return ended

    @contextlib.contextmanager
    def _renewed(self, held: HeldArchive) -> Iterator[None]:
        """Renew the execution's lease and the run's claim while the step's work runs; end the
        execution when the work has returned (its uploads with it)."""
        stop = threading.Event()

        def keep_renewing() -> None:
            while not stop.wait(self.claim_ttl_s / 6):
                sent = time.monotonic()
                try:
                    renewed = renew_execution(
                        self.results_db, held.archive, held.run_id, held.execution, self.claim_ttl_s
                    )
                except Exception as exc:  # a database outage longer than the retry window
                    held.log.warning(f"could not renew the claim on {held.archive.key}: {exc}")
                    continue
                if not renewed:
                    held.lease.end("its step was taken over, its run's claim lost or its lease passed")
                    held.log.warning(
                        f"{held.archive.key}: execution {held.execution} of {held.step} lost its hold "
                        "(another execution took the step over, or another run the archive); it uploads and "
                        "writes nothing more"
                    )
                    return
                held.lease.renewed(sent)

        thread = threading.Thread(target=keep_renewing, name="archive-claim", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            held.lease.end("the step ended")
            params = {"execution": held.execution}
            with contextlib.suppress(Exception):  # else its intents wait for its lease to pass
                self.results_db.transaction(lambda cur: cur.execute(Q.end_execution, params), what="end execution")
            with contextlib.suppress(Exception):  # the gap before the next step starts now
                renew_claim(self.results_db, held.archive, held.run_id)

    def sweep_abandoned_uploads(self) -> int:
        """Every archive's queued objects that no row points to and no execution may still
        upload (one that outlived its run, a killed one whose lease passed), deleted; then
        executions over for a day forgotten. Returns how many objects were deleted."""
        deleted = object_deletions.drain(self.results_db, self.object_store)
        self.results_db.transaction(lambda cur: cur.execute(Q.forget_executions_over), what="forget executions")
        return deleted

    def _release_local_copy(self, held: HeldArchive, failed: bool) -> None:
        """This reader is done with the run's copy on this host. It goes once raw_archive failed
        (no other reader runs) or opus_files and parquet_metadata are both done with it; a copy
        a run leaves otherwise (only one of them selected, a retry on another host) is the
        scratch sweep's once the run has ended."""
        with self.scratch.shared_dir(held.run_id, _COPY) as folder:
            (folder / f"{held.step}.done").touch()
            readers_done = all((folder / f"{r}.done").exists() for r in ARCHIVE_READERS[1:])
            if (failed and held.step == "raw_archive") or readers_done:
                self.scratch.remove_shared_dir(held.run_id, _COPY)


def worker_metadata(gpu: bool = False) -> dict[str, Any]:
    """Where the step ran (WORKER_NAME, set per worker in deploy/, else the host name) and with
    which of the settings every host must agree on, and on a GPU step the model loads its
    process has done so far: 1 on a long-lived GPU worker however many partitions it has run
    (the model cache is per process)."""
    host = socket.gethostname()
    where: dict[str, Any] = {
        "worker_name": os.environ.get("WORKER_NAME") or host,
        "worker_host": host,
        "worker_pid": os.getpid(),
        "host_settings": dg.MetadataValue.json(host_settings()),
    }
    if not gpu:
        return where
    # Imported here: CPU steps and the run worker's start need neither torch nor WhisperX.
    from models import cope_scorer, transcriber

    return where | {
        "whisper_loads_in_process": transcriber.load_count(),
        "whisper_files_in_process": transcriber.transcribed_files_count(),
        "cope_loads_in_process": cope_scorer.load_count(),
    }


# Settings each host reads from its own environment that every host must agree on: two values
# of the lease, a cap, the claim's time-to-live or the per-file attempts would make hosts treat
# the same step or file differently. Each step reports its host's (worker_metadata above) and
# `audio-pipeline doctor` compares every live worker's with its own (deploy/README.md).
AGREED_SETTINGS = (
    "CELERY_TASK_LEASE_S",
    "CELERY_MAX_DELIVERIES",
    "ARCHIVE_CLAIM_TTL_S",
    "ARCHIVE_CLAIM_STEP_WAIT_S",
    "ARCHIVE_RUN_MAX_RUNTIME_S",
    "FILE_MAX_ATTEMPTS",
    "AUDIO_MAX_MINUTES",
    "FFMPEG_TIMEOUT_S",
)
AGREED_PREFIXES = ("METADATA_MAX_", "CELERY_CPU_", "CELERY_GPU_")  # the caps and time limits of a family
UNSET = "(default)"


def host_settings() -> dict[str, str]:
    """This process's values of the agreed settings (UNSET where the code's default applies),
    with the pipeline's installed version, which sets those defaults."""
    names = set(AGREED_SETTINGS) | {name for name in os.environ if name.startswith(AGREED_PREFIXES)}
    try:
        code = importlib.metadata.version("audio-moderation-pipeline")
    except importlib.metadata.PackageNotFoundError:
        code = "not installed"
    return {"code_version": code} | {name: os.environ.get(name) or UNSET for name in sorted(names)}


def settings_mismatches(theirs: dict[str, str], ours: dict[str, str]) -> list[str]:
    """`NAME=theirs (ours)` for every agreed setting on which two hosts differ."""
    return [
        f"{name}={theirs.get(name, UNSET)} (here {ours.get(name, UNSET)})"
        for name in sorted(set(theirs) | set(ours))
        if theirs.get(name, UNSET) != ours.get(name, UNSET)
    ]
