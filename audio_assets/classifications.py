"""classifications: each transcript scored against each content policy (CoPE-A), chunk by
chunk; a (file, policy) already scored from the file's current transcript under this policy
version, model and threshold is not scored again."""

import time

import dagster as dg
from pydantic import Field

from audio_assets.archive_job import archive_asset
from audio_assets.file_batches import batches, raise_for_retryable, split_on_error
from audio_assets.settings import FileAttemptsConfig
from resources.archive_run import ArchiveRun, HeldArchive
from resources.classifier import PolicyClassifier
from resources.manifest_io import ArchiveTable
from resources.results_db import classifications as scores_db
from resources.results_db.classifications import ClassificationRow
from resources.results_db.failures import FileFailure


class ClassificationConfig(FileAttemptsConfig):
    # Large: each policy's prefix runs once per chunk, and a chunk is what a lost worker redoes.
    files_per_chunk: int = Field(default=1024, description="Files scored (on every policy) and committed together")
    rescore: bool = Field(default=False, description="Score again what is already scored under the same versions")


@archive_asset(kinds={"pytorch", "postgres"}, group_name="moderation", gpu=True, manifest=False)
def classifications(
    context: dg.AssetExecutionContext,
    config: ClassificationConfig,
    transcripts: ArchiveTable,
    classifier: PolicyClassifier,
    archive_run: ArchiveRun,
) -> dg.MaterializeResult:
    """p("1") per policy for every transcript; flagged items reach the RAs' queue."""
    with archive_run.step(context, transcripts, gpu=True) as held:
        file_ids = [int(i) for i in transcripts.rows.loc[transcripts.rows["status"] == "transcribed", "audio_file_id"]]
        model_name, versions, policies = classifier.model_name(), classifier.policy_versions(), classifier.categories()
        thresholds = _thresholds(classifier, held, model_name, policies, versions)
        todo = (
            {category: set(file_ids) for category in policies}
            if config.rescore
            else _todo(held, file_ids, transcripts.rows, model_name, versions, thresholds)
        )
        started, flagged = time.monotonic(), dict.fromkeys(policies, 0)
        scored: list[ClassificationRow] = []
        failed: list[FileFailure] = []
        for chunk in batches(file_ids, config.files_per_chunk):
            wanted = {category: [i for i in chunk if i in todo[category]] for category in policies}
            rows, errors = _score_chunk(
                classifier, policies, versions, thresholds, wanted, held, transcripts.rows, model_name
            )
            chunk_flagged, chunk_failed = _commit(held, chunk, rows, errors, config.max_file_attempts)
            scored, failed = scored + rows, failed + chunk_failed
            flagged = {c: flagged[c] + chunk_flagged.get(c, 0) for c in flagged}
        raise_for_retryable(failed, len(file_ids))
        scores_db.record_processed(held)  # catch-up compares the archive's object with this
        return held.result(
            _metadata(
                thresholds, model_name, versions, len(file_ids), scored, flagged, failed, time.monotonic() - started
            )
        )


def _commit(
    held: HeldArchive, chunk: list[int], rows: list[ClassificationRow], errors: list[FileFailure], max_attempts: int
) -> tuple[dict[str, int], list[FileFailure]]:
    """The chunk's scores (files scored on every policy move on to classified) and the files the
    scorer threw on; returns ({policy: flagged now}, those failures as they stand after this try)."""
    failed_ids = {f.audio_file_id for f in errors}
    classified = [i for i in chunk if i not in failed_ids]
    flagged, failed = scores_db.record_scores(held, rows, classified, errors, max_attempts)
    for failure in failed:
        held.log.warning(str(failure))
    return flagged, failed


def _todo(held, file_ids, table, model_name, versions, thresholds) -> dict[str, set[int]]:
    """{policy: files to score}: those without a score under this policy version and threshold
    for the transcript the file has now (its row and text), so a new transcript is re-scored."""
    if not file_ids:
        return {category: set() for category in versions}
    current = scores_db.transcript_identities(held, file_ids, _transcript_model(table))
    done = scores_db.scored(held, file_ids, model_name)
    return {
        category: {
            i
            for i in file_ids
            if (i, category, versions[category], *current.get(i, (None, None)), thresholds[category]) not in done
        }
        for category in versions
    }


def _thresholds(classifier, held, model_name: str, policies: dict[str, str], versions: dict[str, str]):
    """{policy: threshold}. One chosen per policy (review-thresholds) wins over the configured
    one; it is part of the "already scored" key, so applying one (which re-flags stored scores)
    re-scores nothing. Also keeps each policy text by version, for the console."""
    chosen = scores_db.policy_thresholds(held, model_name)
    scores_db.keep_policy_texts(held, {c: (versions[c], policies[c]) for c in policies})
    return {category: chosen.get(category, classifier.threshold) for category in policies}


def _metadata(
    thresholds: dict[str, float],
    model_name: str,
    versions: dict[str, str],
    transcripts: int,
    scored: list[ClassificationRow],
    flagged: dict[str, int],
    failed: list[FileFailure],
    elapsed: float,
) -> dict:
    return {
        "model": model_name,
        "thresholds": dg.MetadataValue.json(thresholds),
        "policy_versions": dg.MetadataValue.json(versions),
        "transcripts": transcripts,
        "scored_now": len(scored),
        "failed": len(failed),
        "already_scored": transcripts * len(versions) - len(scored),
        "truncated": sum(r.content_truncated for r in scored),
        "flagged_now_by_category": dg.MetadataValue.json(flagged),
        "items_per_s": round(len(scored) / max(elapsed, 1e-6), 2),
    }


def _score_chunk(
    classifier, policies, versions, thresholds, wanted, held, table, model_name
) -> tuple[list[ClassificationRow], list[FileFailure]]:
    """The chunk's scores, and the files the scorer threw on (a batch that throws is split until
    the file that throws is alone; the others are scored): tried again, counted."""
    needed = sorted({i for ids in wanted.values() for i in ids})
    if not needed:
        return [], []
    texts = scores_db.transcripts(held, needed, _transcript_model(table))
    members = dict(zip(table["audio_file_id"].astype(int), table["member"]))
    scorer = classifier.load()
    rows: list[ClassificationRow] = []
    errors: dict[int, FileFailure] = {}
    for category, ids in wanted.items():
        if not ids:
            continue
        contents = [texts[i].text if i in texts else "" for i in ids]
        policy = policies[category]
        scores = split_on_error(contents, lambda batch: scorer.score(policy, batch))  # noqa: B023 - runs now
        for file_id, result in zip(ids, scores):
            if isinstance(result, Exception):
                reason = f"scoring {category}: {type(result).__name__}: {result}"
                errors.setdefault(file_id, FileFailure(file_id, members[file_id], "classification", reason, "unclear"))
                continue
            transcript = texts.get(file_id)
            rows.append(
                ClassificationRow(
                    audio_file_id=file_id,
                    flag_category=category,
                    model=model_name,
                    flag_score=result.score,
                    threshold=thresholds[category],
                    content_truncated=result.truncated,
                    reason=result.reason,
                    policy_version=versions[category],
                    transcript_id=transcript.transcript_id if transcript else None,
                    transcript_md5=transcript.md5 if transcript else None,
                )
            )
    return rows, list(errors.values())


def _transcript_model(table) -> str:
    """The transcription model whose transcripts this run's `transcripts` step stored."""
    models = set(table["model"].dropna())
    if len(models) != 1:
        raise dg.Failure(f"expected transcripts of one model, found {sorted(models)}", allow_retries=False)
    return models.pop()
