"""The results database and its data access, one module per concern:

- database.py        ResultsDatabase: connections, retried and fenced transactions, migrations
- archives.py        the archive registry: partitions and the current version of each archive
- audio_files.py     members of an archive and their conversion and metadata
- model_outputs.py   transcripts and classifications
- failures.py        the dead letter (processing_failures)
- object_deletions.py  the outbox of Opus objects to delete
- transfers.py       remote_transfers
- reports.py         the daily report, status and demo read models

The SQL each module runs lives in sql/queries/{concern}.sql.
"""

from resources.results_db.audio_files import ConvertedFile, MetadataAssignment
from resources.results_db.database import ResultsDatabase, StaleArchiveVersion, is_transient_db_error
from resources.results_db.failures import STAGE_OF_STEP, FileFailure
from resources.results_db.model_outputs import ClassificationRow, TranscriptRow
from resources.results_db.transfers import TransferRecord

__all__ = [
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
