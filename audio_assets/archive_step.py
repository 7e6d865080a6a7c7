"""What every archive step shares, so each asset body reads as what it does to the data.

- `archive_asset`: @dg.asset with the archives partitions, the I/O retry policy, the manifest
  IO manager and, for the GPU steps, the GPU routing (queue, k8s request, pool).
- `archive_step`: opened by every step around its work. raw_archive resolves the run's
  version (the sensor's tags, else the registry: the one partition -> key resolver, never a
  bucket listing) and takes the run's claim on the archive (resources/archive_claim.py),
  waiting while another run holds it; every later step resumes that claim without waiting
  and renews it while it works. `step.archive` is the version with the claim's epoch: pass
  it to every write, which is fenced by both. It hands out
  the run's local copy of the archive, downloaded once per run and host, its ETag checked
  against the claimed version that once. It records an unreadable or refused archive in the
  dead letter and fails without retries. On success it closes the stage's open failures and
  adds where the step ran to the metadata.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from archive_identity import ArchiveVersion, tagged_version
from audio_assets.audio.tar_safety import ArchiveRefused, ArchiveUnreadable
from audio_assets.gpu_routing import GPU_OP_TAGS, GPU_POOL
from audio_assets.partitions import archives_partitions
from audio_assets.workers.identity import gpu_worker_metadata, worker_metadata
from resources.archive_claim import ArchiveClaim
from resources.manifest_io import ArchiveTable
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from resources.scratch import ScratchSpace

IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

# The steps that read the archive's bytes; the last of them in a run removes its local copy.
ARCHIVE_READERS = frozenset({"raw_archive", "opus_files", "parquet_metadata"})
_COPY = "archive"  # SCRATCH_ROOT/{run_id}/archive/: the copy and the readers that are done
_DOWNLOAD_HEADROOM_BYTES = 1024 * 1024


def archive_asset(*, kinds: set[str], group_name: str = "archives", gpu: bool = False, manifest: bool = True):
    """@dg.asset for a step over one archive partition. `manifest`: its output is an
    ArchiveTable for the next step (stored by the manifest IO manager)."""
    return dg.asset(
        partitions_def=archives_partitions,
        kinds=kinds,
        group_name=group_name,
        io_manager_key="manifest_io" if manifest else "io_manager",
        retry_policy=IO_RETRY,
        op_tags=GPU_OP_TAGS if gpu else None,
        pool=GPU_POOL if gpu else None,
    )


class ArchiveStep:
    def __init__(
        self,
        context: dg.AssetExecutionContext,
        stages: list[str],
        results_db: ResultsDatabase,
        archive_claim: ArchiveClaim,
        scratch: ScratchSpace | None,
        gpu: bool,
        renewals: contextlib.ExitStack,
    ):
        self.context, self.stages, self.results_db, self.scratch, self.gpu = context, stages, results_db, scratch, gpu
        self.archive_claim, self._renewals = archive_claim, renewals
        self._archive: ArchiveVersion | None = None
        self.run_id = context.run.run_id
        self._local: Path | None = None

    @property
    def archive(self) -> ArchiveVersion:
        if self._archive is None:
            raise RuntimeError("raw_archive claims the run's version first")
        return self._archive

    def claim(self, object_store: ObjectStore) -> ArchiveVersion:
        """raw_archive: the run's version (the sensor's tags, else the registry's key as it is
        now), claimed for this run and made the one its results belong to."""
        return self._hold(
            self.archive_claim.take(self.context, resolve_version(self.context, object_store, self.results_db))
        )

    def _hold(self, claimed: ArchiveVersion) -> ArchiveVersion:
        self._archive = claimed
        self._renewals.enter_context(self.archive_claim.renewed(self.context, claimed))
        return claimed

    def local_archive(self, object_store: ObjectStore) -> Path:
        """The run's copy of the archive on this host: downloaded by the first step that needs
        it (one GET, its ETag checked against the claimed version), read by the later ones."""
        if self._local is None:
            archive = self.archive
            with self.scratch.shared_dir(self.run_id, _COPY) as folder:
                local = folder / f"{archive.etag.replace('/', '_')}.tar"
                if not local.exists():
                    ScratchSpace.ensure_free(
                        folder, archive.size + _DOWNLOAD_HEADROOM_BYTES, f"downloading {archive.key}"
                    )
                    info = object_store.download_file(archive.key, local)
                    if info.etag != archive.etag:
                        local.unlink(missing_ok=True)
                        raise dg.Failure(
                            f"{archive.key} changed during the run (ETag {archive.etag} -> {info.etag}); "
                            "the sensor requests a run for the new version",
                            allow_retries=False,
                        )
                self._local = local
        return self._local

    def fail(self, reason: str) -> None:
        """A definite failure of the archive as a whole: recorded, never retried."""
        self.results_db.failures.record_archive_failure(
            self.archive.key, self.archive.partition_key, stage=self.stages[0], error=reason, run_id=self.run_id
        )
        raise dg.Failure(reason, metadata={"archive": str(self.archive)}, allow_retries=False)

    def output(self, rows: pd.DataFrame, metadata: dict) -> dg.Output[ArchiveTable]:
        """The step's table for the next step; its stage's open failures are closed."""
        return dg.Output(ArchiveTable(self.archive, rows), metadata=self._done(metadata))

    def result(self, metadata: dict) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=self._done(metadata))

    def _done(self, metadata: dict) -> dict:
        self.results_db.failures.resolve_stages(self.archive.key, self.stages)
        return metadata | (gpu_worker_metadata() if self.gpu else worker_metadata())


@contextlib.contextmanager
def archive_step(
    context: dg.AssetExecutionContext,
    stages: list[str],
    archive_claim: ArchiveClaim,
    results_db: ResultsDatabase,
    *,
    archive: ArchiveVersion | None = None,
    scratch: ScratchSpace | None = None,
    gpu: bool = False,
) -> Iterator[ArchiveStep]:
    """The step's work on `archive` (None for raw_archive, which claims it): see the module
    docstring. `stages`: the dead-letter stages a success closes, the first one the step's own;
    `scratch`: for the steps that read the archive's bytes."""
    renewals = contextlib.ExitStack()
    step = ArchiveStep(context, stages, results_db, archive_claim, scratch, gpu, renewals)
    failed = True
    try:
        with renewals:
            if archive is not None:
                step._hold(archive_claim.resume(context, archive))
            yield step
        failed = False
    except ArchiveUnreadable as exc:
        reason = f"archive {'refused' if isinstance(exc, ArchiveRefused) else 'unreadable'}: {exc}"
        step.fail(reason)
    finally:
        if scratch is not None and context.asset_key.path[-1] in ARCHIVE_READERS:
            _release_local_archive(context, scratch, failed)


def resolve_version(
    context: dg.AssetExecutionContext, object_store: ObjectStore, results_db: ResultsDatabase
) -> ArchiveVersion:
    """The archive version this run is for: the registry's object for the partition, at the
    ETag the sensor tagged, else as it is now (a backfill, the CLI)."""
    partition_key = context.partition_key
    key = results_db.archives.key_of_partition(partition_key)
    tagged_key, tagged_etag = tagged_version(context.run.tags)
    if key is None or (tagged_key and tagged_key != key):
        raise dg.Failure(
            f"partition {partition_key!r} is registered for {key!r}, not for the run's archive {tagged_key!r}"
            if key
            else f"partition {partition_key!r} is not in the archives registry (the sensor registers "
            "every archive it sees)",
            allow_retries=False,
        )
    info = object_store.head(key)
    if info is None:
        raise dg.Failure(f"{key} (partition {partition_key}) is no longer in the bucket", allow_retries=False)
    if tagged_etag and info.etag != tagged_etag:
        raise dg.Failure(
            f"{key} was overwritten after this run was requested (ETag {tagged_etag} -> {info.etag}); "
            "the sensor requests a run for the new version",
            allow_retries=False,
        )
    return ArchiveVersion(key, info.etag, info.size, info.last_modified, partition_key)


def _release_local_archive(context: dg.AssetExecutionContext, scratch: ScratchSpace, failed: bool) -> None:
    """This reader is done with the run's copy. The last planned reader removes it; so does a
    failed raw_archive, after which the other readers do not run."""
    step, run_id = context.asset_key.path[-1], context.run.run_id
    readers = _planned_readers(context)
    with scratch.shared_dir(run_id, _COPY) as folder:
        (folder / f"{step}.done").touch()
        if (failed and step == "raw_archive") or all((folder / f"{r}.done").exists() for r in readers):
            scratch.remove_shared_dir(run_id, _COPY)


def _planned_readers(context: dg.AssetExecutionContext) -> set[str]:
    """The archive readers this run executes: the plan's steps (a subset when only some
    assets are selected), narrowed to the steps re-executed by a retry from failure."""
    plan = context.instance.get_execution_plan_snapshot(context.run.execution_plan_snapshot_id)
    steps = {s.key for s in plan.steps} & ARCHIVE_READERS
    executed = context.run.step_keys_to_execute
    return steps & set(executed) if executed is not None else steps
