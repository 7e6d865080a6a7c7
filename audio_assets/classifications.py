"""classifications: each transcript scored against each content policy (CoPE-A)."""

import time

import dagster as dg
import pandas as pd

from audio_assets.archive import IO_RETRY
from audio_assets.gpu_routing import GPU_OP_TAGS, GPU_POOL
from audio_assets.partitions import archives_partitions
from resources.classifier import PolicyClassifier
from resources.results_db import ClassificationRow, ResultsDatabase


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
    transcripts: pd.DataFrame,
    classifier: PolicyClassifier,
    results_db: ResultsDatabase,
) -> dg.MaterializeResult:
    """p("1") per policy for every transcript; flagged items reach RAs through ra_queue."""
    todo = transcripts[transcripts["status"] == "transcribed"].reset_index(drop=True)
    texts = [str(t or "") for t in todo["transcript_text"]]
    file_ids = [int(i) for i in todo["audio_file_id"]]
    started = time.monotonic()
    scorer = classifier.load()
    rows, flagged_by_category = [], {}
    for category, policy_text in classifier.categories().items():
        scores = scorer.score(policy_text, texts)
        for file_id, result in zip(file_ids, scores):
            flagged = result.score is not None and result.score >= classifier.threshold
            rows.append(
                ClassificationRow(
                    audio_file_id=file_id, flag_category=category, model=scorer.model_name,
                    flag_score=result.score, flagged=flagged, threshold=classifier.threshold,
                    content_truncated=result.truncated, reason=result.reason,
                )
            )
        flagged_by_category[category] = sum(
            1 for r in scores if r.score is not None and r.score >= classifier.threshold
        )
        context.log.info(f"scored {len(texts)} transcripts against {category}")
    results_db.store_classifications(rows, classified_ids=file_ids)
    elapsed = time.monotonic() - started
    return dg.MaterializeResult(
        metadata={
            "model": scorer.model_name,
            "threshold": classifier.threshold,
            "transcripts": len(texts),
            "not_scored_empty": sum(1 for t in texts if not t.strip()),
            "truncated": sum(1 for r in rows if r.content_truncated),
            "flagged_files": len({r.audio_file_id for r in rows if r.flagged}),
            "flagged_by_category": dg.MetadataValue.json(flagged_by_category),
            "items_per_s": round(len(rows) / max(elapsed, 1e-6), 2),
        }
    )
