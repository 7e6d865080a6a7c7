"""One run of an archive at a time, even for runs that bypass the run queue.

The first line is Dagster's run queue: dagster.yaml limits runs to one per unique value of
the `dagster/partition` tag. `dagster asset materialize` and other in-process executions
never pass through that queue, so this is the second line: a PostgreSQL session-level
advisory lock per archive partition, taken by the first archive step of a run on a
connection of its own and held until the resource is torn down. Under the in-process
executor (the local default) that is the end of the run; under a multi-process or Celery
executor, each step process holds it for its step.

If the process dies the server ends its session and the lock is free at once. If the lock's
connection drops (a database restart) the lock is lost with it; `hold()` notices on the next
step and takes it again, waiting if another run got it meanwhile.
"""

import time

import dagster as dg
import psycopg2
from pydantic import Field, PrivateAttr

from resources.results_db import ResultsDatabase, is_transient_db_error
from sql.named_queries import queries

Q = queries("archive_lock")


class ArchiveBusy(RuntimeError):
    """Another run held the archive for longer than this run was willing to wait."""


class ArchiveLock(dg.ConfigurableResource):
    results_db: dg.ResourceDependency[ResultsDatabase]
    wait_timeout_s: float = Field(default=6 * 3600, description="Give up (and fail, retryably) after this long")
    poll_interval_s: float = Field(default=2.0, description="How often a waiting run tries again")

    _connection = PrivateAttr(default=None)
    _partition_key = PrivateAttr(default=None)

    def hold(self, context: dg.AssetExecutionContext) -> None:
        """Make sure this process holds the lock of the step's archive partition, waiting
        for another run to finish with it if need be. Cheap when already held."""
        partition_key = context.partition_key
        if self._partition_key is not None and self._partition_key != partition_key:
            raise RuntimeError(f"this run holds archive {self._partition_key}, not {partition_key}")
        if self._connection is not None and self._alive():
            return
        self._release()
        self._acquire(context, partition_key)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._release()

    def _acquire(self, context: dg.AssetExecutionContext, partition_key: str) -> None:
        deadline = time.monotonic() + self.wait_timeout_s
        next_report = 0.0
        while True:
            conn = self._connect(context.run.run_id)
            with conn.cursor() as cur:
                cur.execute(Q.try_lock, {"partition_key": partition_key})
                if cur.fetchone()[0]:
                    self._connection, self._partition_key = conn, partition_key
                    context.log.info(f"holding the archive lock of partition {partition_key}")
                    return
                holder = self._holder(cur, partition_key)
            conn.close()
            if time.monotonic() >= deadline:
                raise ArchiveBusy(f"partition {partition_key} stayed locked by {holder} for {self.wait_timeout_s:g} s")
            if time.monotonic() >= next_report:
                context.log.info(f"waiting for {holder} to finish with partition {partition_key}")
                next_report = time.monotonic() + 60
            time.sleep(self.poll_interval_s)

    def _connect(self, run_id: str):
        # Retried like any unit of work, so a database blip while waiting is survived.
        def connect():
            conn = psycopg2.connect(
                self.results_db.connection_string(), application_name=f"audio-pipeline run {run_id}"
            )
            conn.autocommit = True  # session-level lock: no transaction may stay open for hours
            with conn.cursor() as cur:
                cur.execute(Q.prepare_session)
            return conn

        deadline = time.monotonic() + self.results_db.retry_window_s
        while True:
            try:
                return connect()
            except psycopg2.Error as error:
                if not is_transient_db_error(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    @staticmethod
    def _holder(cur, partition_key: str) -> str:
        cur.execute(Q.holder, {"partition_key": partition_key})
        row = cur.fetchone()
        return row[0] if row and row[0] else "another session"

    def _alive(self) -> bool:
        try:
            with self._connection.cursor() as cur:
                cur.execute(Q.ping)
            return True
        except psycopg2.Error:
            return False

    def _release(self) -> None:
        if self._connection is None:
            return
        try:
            if not self._connection.closed:
                with self._connection.cursor() as cur:
                    cur.execute(Q.unlock, {"partition_key": self._partition_key})
        except psycopg2.Error:
            pass  # the session is gone, and its lock with it
        finally:
            self._connection.close()
            self._connection, self._partition_key = None, None
