"""The results database resource and its data access:

- database.py         connections, retried transactions, named-query reads, migrations
- archives.py         the archive registry: partitions, requested and processed versions
- raw_archive.py, opus_files.py, parquet_metadata.py, transcripts.py, classifications.py:
                      each archive step's writes (its status change and the failure rows that go
                      with it) and the reads around them, through the run's fenced transactions
                      (resources/archive_run.py)
- failures.py         the dead letter, and the rule that turns a file's failure into its outcome
- object_deletions.py the outbox of Opus objects to delete
- transfers.py        remote_transfers
- reports.py          the daily report, status and demo read models

Each module imports only database.py (and failures.py, object_deletions.py), never this
package. The SQL each module runs lives in sql/queries/{module}.sql.
"""

from resources.results_db.archives import ArchiveRegistry
from resources.results_db.database import Database, is_transient_db_error
from resources.results_db.failures import STAGE_OF_STEP, DeadLetter, FileFailure
from resources.results_db.reports import Reports
from resources.results_db.transfers import TransferRecord, TransferRecords


class ResultsDatabase(Database):
    """PostgreSQL holding audio_files, transcripts, classifications and the views RAs read; the
    registry, the dead letter, reports and transfers as data-access objects
    (`results_db.archives.partitions_for(...)`); the steps' writes go through ArchiveRun."""

    @property
    def archives(self) -> ArchiveRegistry:
        return ArchiveRegistry(self)

    @property
    def failures(self) -> DeadLetter:
        return DeadLetter(self)

    @property
    def transfers(self) -> TransferRecords:
        return TransferRecords(self)

    @property
    def reports(self) -> Reports:
        return Reports(self)


__all__ = [
    "Database",
    "FileFailure",
    "ResultsDatabase",
    "STAGE_OF_STEP",
    "TransferRecord",
    "is_transient_db_error",
]
