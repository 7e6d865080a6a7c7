"""One run of an archive at a time, on any executor, for the whole run.

The first line is Dagster's run queue: dagster.yaml limits runs to one per unique value of
the `dagster/partition` tag. `dagster asset materialize` and other in-process executions
never pass through that queue, so this is the second line: the run's claim on the archive,
a row in `archives` (holder run, epoch, heartbeat) rather than a lock on some connection, so
it spans every step of the run wherever each step executes (one process, many processes,
Celery workers on many hosts).

- raw_archive takes the claim, waiting (polling) while another run holds it; taking it gives
  the run a new epoch. The later steps resume it and never wait: a GPU step does not sit on
  a GPU and a `gpu` pool slot waiting for an archive.
- A claim ends with its run: a run Dagster reports finished (success, failure, cancel, or
  deleted) or whose steps have not renewed the heartbeat for `ttl_s` (its host vanished) can
  be taken over. A step renews the heartbeat every `ttl_s / 6` while it works.
- Every database write of a step is fenced by version and epoch in its own transaction
  (results_db/database.py): a run that was taken over writes nothing more, and its Opus
  uploads go to keys of its own epoch, which no row of the new holder points to.
"""

import contextlib
import threading
import time
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from archive_identity import ArchiveVersion
from resources.results_db import ResultsDatabase
from resources.results_db.archives import ClaimHolder


class ArchiveBusy(RuntimeError):
    """Another run held the archive for longer than this run was willing to wait."""


class ArchiveClaim(dg.ConfigurableResource):
    results_db: dg.ResourceDependency[ResultsDatabase]
    ttl_s: float = Field(
        default=1800,
        description="A run none of whose steps renewed its claim for this long (its host is gone, or it "
        "waited this long between steps) may be taken over by another run of the archive",
    )
    wait_timeout_s: float = Field(default=6 * 3600, description="Give up (and fail, retryably) after this long")
    poll_interval_s: float = Field(default=2.0, description="How often a waiting run tries again")

    def take(self, context: dg.AssetExecutionContext, archive: ArchiveVersion) -> ArchiveVersion:
        """raw_archive: claim `archive` for this run, waiting for another run to end with it."""
        run_id = context.run.run_id
        deadline, next_report = time.monotonic() + self.wait_timeout_s, 0.0
        while True:
            claimed = self.results_db.archives.claim(archive, run_id, self._ended(context), resume=False)
            if isinstance(claimed, ArchiveVersion):
                context.log.info(f"holding the claim on {archive} (epoch {claimed.epoch})")
                return claimed
            if time.monotonic() >= deadline:
                raise ArchiveBusy(f"{archive.key} stayed claimed by run {claimed.run_id} for {self.wait_timeout_s:g} s")
            if time.monotonic() >= next_report:
                context.log.info(f"waiting for run {claimed.run_id} to finish with {archive.key}")
                next_report = time.monotonic() + 60
            time.sleep(self.poll_interval_s)

    def resume(self, context: dg.AssetExecutionContext, archive: ArchiveVersion) -> ArchiveVersion:
        """A later step: the run's claim (its epoch now), or ClaimLost at once."""
        return self.results_db.archives.claim(archive, context.run.run_id, self._ended(context), resume=True)

    @contextlib.contextmanager
    def renewed(self, context: dg.AssetExecutionContext, archive: ArchiveVersion) -> Iterator[None]:
        """Renew the claim's heartbeat while the step's work runs."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.ttl_s / 6):
                try:
                    if not self.results_db.archives.renew_claim(archive, context.run.run_id):
                        context.log.warning(f"{archive.key}: another run took over this run's claim")
                        return
                except Exception as exc:  # a database outage longer than the retry window
                    context.log.warning(f"could not renew the claim on {archive.key}: {exc}")

        thread = threading.Thread(target=renew, name="archive-claim", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            with contextlib.suppress(Exception):  # the gap before the next step starts now
                self.results_db.archives.renew_claim(archive, context.run.run_id)

    def _ended(self, context: dg.AssetExecutionContext):
        def ended(holder: ClaimHolder) -> bool:
            run = context.instance.get_run_by_id(holder.run_id)  # None: a deleted run
            if run is None or run.is_finished:
                return True
            return holder.heartbeat_age_s is None or holder.heartbeat_age_s > self.ttl_s

        return ended
