"""The results database resource and its data access, one module per concern:

- database.py        connections, retried and fenced transactions, named-query reads, migrations
- archives.py        the archive registry: partitions and the current version of each archive
- audio_files.py     members of an archive and their conversion and metadata
- model_outputs.py   transcripts and classifications
- failures.py        the dead letter (processing_failures)
- object_deletions.py  the outbox of Opus objects to delete
- transfers.py       remote_transfers
- reports.py         the daily report, status and demo read models

Each concern module imports only database.py (and a lower concern), never this package, so
the modules form no circle. The SQL each module runs lives in sql/queries/{concern}.sql.
"""

from resources.results_db.archives import ArchiveRegistry
from resources.results_db.audio_files import AudioFiles, ConvertedFile, MetadataAssignment
from resources.results_db.database import ClaimLost, Database, StaleArchiveVersion, is_transient_db_error
from resources.results_db.failures import STAGE_OF_STEP, DeadLetter, FileFailure
from resources.results_db.model_outputs import ClassificationRow, ModelOutputs, TranscriptRow
from resources.results_db.object_deletions import ObjectDeletions
from resources.results_db.reports import Reports
from resources.results_db.transfers import TransferRecord, TransferRecords


class ResultsDatabase(Database):
    """PostgreSQL holding audio_files, transcripts, classifications and the views RAs read,
    with one data-access object per concern (`results_db.audio_files.record_conversions(...)`)."""

    @property
    def archives(self) -> ArchiveRegistry:
        return ArchiveRegistry(self)

    @property
    def audio_files(self) -> AudioFiles:
        return AudioFiles(self)

    @property
    def model_outputs(self) -> ModelOutputs:
        return ModelOutputs(self)

    @property
    def failures(self) -> DeadLetter:
        return DeadLetter(self)

    @property
    def object_deletions(self) -> ObjectDeletions:
        return ObjectDeletions(self)

    @property
    def transfers(self) -> TransferRecords:
        return TransferRecords(self)

    @property
    def reports(self) -> Reports:
        return Reports(self)


__all__ = [
    "ClaimLost",
    "ClassificationRow",
    "ConvertedFile",
    "FileFailure",
    "MetadataAssignment",
    "ResultsDatabase",
    "STAGE_OF_STEP",
    "StaleArchiveVersion",
    "TranscriptRow",
    "TransferRecord",
    "is_transient_db_error",
]
