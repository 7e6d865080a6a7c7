"""The archives' partitions: one dynamic partition per archive object, named by the registry."""

import dagster as dg

from archive_identity import ARCHIVES_PARTITIONS

archives_partitions = dg.DynamicPartitionsDefinition(name=ARCHIVES_PARTITIONS)
