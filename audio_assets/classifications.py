"""classifications: each transcript scored against each content policy (CoPE-A), chunk by
chunk; a (file, policy) already scored under this policy version, model and threshold is not
scored again."""

import time

import dagster as dg
from pydantic import Field

from audio_assets.archive import IO_RETRY
from audio_assets.archive_identity import archives_partitions
from audio_assets.gpu_routing import GPU_OP_TAGS, GPU_POOL
from audio_assets.workers.identity import gpu_worker_metadata
from resources.archive_lock import ArchiveLock
from resources.classifier import PolicyClassifier
from resources.manifest_io import ArchiveTable
from resources.results_db import ClassificationRow, ResultsDatabase


class ClassificationConfig(dg.Config):
    files_per_chunk: int = Field(default=256, description="Files scored (on every policy) and committed together")
    rescore: bool = Field(default=False, description="Score again what is already scored under the same versions")


@dg.asset(
    partitions_def=archives_partitions,
    kinds={"pytorch", "postgres"},
    op_tags=GPU_OP_TAGS,
    pool=GPU_POOL,
    retry_policy=IO_RETRY,
    group_name="moderation",
)
def classifications(
    context: dg.AssetExecutionContext,
    config: ClassificationConfig,
    transcripts: ArchiveTable,
    classifier: PolicyClassifier,
    results_db: ResultsDatabase,
    archive_lock: ArchiveLock,
) -> dg.MaterializeResult:
    """p("1") per policy for every transcript; flagged items reach RAs through ra_queue."""
    archive_lock.hold(context)
    archive = transcripts.archive
    file_ids = [int(i) for i in transcripts.rows.loc[transcripts.rows["status"] == "transcribed", "audio_file_id"]]
    model_name, versions = classifier.model_name(), classifier.policy_versions()
    policies = classifier.categories()
    # A threshold chosen per policy (review-thresholds) wins over the configured one; it is part
    # of the "already scored" key, so applying one (which re-flags stored scores) re-scores nothing.
    chosen = results_db.model_outputs.policy_thresholds(model_name)
    thresholds = {category: chosen.get(category, classifier.threshold) for category in policies}
    results_db.model_outputs.keep_policy_texts({c: (versions[c], policies[c]) for c in policies})
    done = set() if config.rescore else results_db.model_outputs.scored(file_ids, model_name)
    todo = {
        category: {i for i in file_ids if (i, category, versions[category], thresholds[category]) not in done}
        for category in policies
    }
    started, scored, flagged_by_category, truncated = time.monotonic(), 0, {c: 0 for c in policies}, 0
    for start in range(0, len(file_ids), config.files_per_chunk):
        chunk = file_ids[start : start + config.files_per_chunk]
        wanted = {category: [i for i in chunk if i in todo[category]] for category in policies}
        rows = _score_chunk(classifier, policies, versions, thresholds, wanted, results_db, transcripts.rows,
                            model_name)
        results_db.model_outputs.store_classifications(archive, rows, classified_ids=chunk)
        scored += len(rows)
        truncated += sum(r.content_truncated for r in rows)
        for row in rows:
            flagged_by_category[row.flag_category] += row.flagged
    results_db.failures.resolve_stages(archive.key, ["classification", "run"])
    elapsed = time.monotonic() - started
    return dg.MaterializeResult(
        metadata={
            "model": model_name,
            "thresholds": dg.MetadataValue.json(thresholds),
            "policy_versions": dg.MetadataValue.json(versions),
            "transcripts": len(file_ids),
            "scored_now": scored,
            "already_scored": len(file_ids) * len(policies) - scored,
            "truncated": truncated,
            "flagged_now_by_category": dg.MetadataValue.json(flagged_by_category),
            "items_per_s": round(scored / max(elapsed, 1e-6), 2),
            **gpu_worker_metadata(),
        }
    )


def _score_chunk(
    classifier, policies, versions, thresholds, wanted, results_db, table, model_name
) -> list[ClassificationRow]:
    needed = sorted({i for ids in wanted.values() for i in ids})
    if not needed:
        return []
    texts = results_db.model_outputs.transcripts(needed, _transcript_model(table))
    scorer = classifier.load()
    rows = []
    for category, ids in wanted.items():
        if not ids:
            continue
        scores = scorer.score(policies[category], [str(texts.get(i) or "") for i in ids])
        for file_id, result in zip(ids, scores):
            rows.append(
                ClassificationRow(
                    audio_file_id=file_id, flag_category=category, model=model_name,
                    flag_score=result.score, flagged=result.score is not None and result.score >= thresholds[category],
                    threshold=thresholds[category], content_truncated=result.truncated, reason=result.reason,
                    policy_version=versions[category],
                )
            )
    return rows


def _transcript_model(table) -> str:
    """The transcription model whose transcripts this run's `transcripts` step stored."""
    models = set(table["model"].dropna())
    if len(models) != 1:
        raise dg.Failure(f"expected transcripts of one model, found {sorted(models)}", allow_retries=False)
    return models.pop()
