"""Model and policy versions drive staleness: editing one policy makes `classifications` stale
(not `transcripts`), and materializing again re-scores only that policy, transcribing nothing."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from audio_assets.model_versions import classifications_code_version, transcripts_code_version
from models.cope_scorer import CopeScorer
from models.transcriber import Transcriber
from policies import load_policies
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from testing.pipeline_support import FULL_JOB, ArchiveRunner
from testing.pipeline_support import rows as db_rows
from testing.tiny_cope import build_tiny_cope

POLICIES = ["hate_speech", "self_harm"]


def stale_status(defs: dg.Definitions, instance, key: str, partition: str) -> StaleStatus:
    """What the UI shows for one asset partition: the resolver Dagster's webserver uses."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance, graph, loading_context=view).get_status(dg.AssetKey(key), partition)


@pytest.fixture
def model_calls(monkeypatch) -> dict[str, int]:
    """Counts what reaches the real models: files transcribed, (text, policy) pairs scored."""
    calls = {"transcribed": 0, "scored": 0, "scored_policies": set()}
    transcribe, score = Transcriber.transcribe_files, CopeScorer.score

    def counting_transcribe(self, paths):
        calls["transcribed"] += len(paths)
        return transcribe(self, paths)

    def counting_score(self, policy, contents):
        calls["scored"] += len(contents)
        calls["scored_policies"].add(policy)
        return score(self, policy, contents)

    monkeypatch.setattr(Transcriber, "transcribe_files", counting_transcribe)
    monkeypatch.setattr(CopeScorer, "score", counting_score)
    return calls


def test_code_versions_follow_what_changes_the_output(tmp_path):
    policies_dir = tmp_path / "policies"
    policies_dir.mkdir()
    for name, text in load_policies(POLICIES).items():
        (policies_dir / f"{name}.md").write_text(text)
    classifier = PolicyClassifier(backend="cope-a", policies=POLICIES, policies_dir=str(policies_dir))
    before = classifications_code_version(classifier)
    (policies_dir / "self_harm.md").write_text("revised")
    assert classifications_code_version(classifier) != before
    assert classifications_code_version(
        classifier.model_copy(update={"threshold": 0.7})
    ) != classifications_code_version(classifier)

    whisper = WhisperTranscriber(model="base-bundled")
    assert transcripts_code_version(whisper) == transcripts_code_version(whisper.model_copy(update={"batch_size": 32}))
    assert transcripts_code_version(whisper) != transcripts_code_version(whisper.model_copy(update={"language": "en"}))
    assert transcripts_code_version(whisper) != transcripts_code_version(
        whisper.model_copy(update={"model": "large-v2"})
    )


@pytest.fixture(scope="module")
def tiny_cope(tmp_path_factory):
    return build_tiny_cope(tmp_path_factory.mktemp("tiny-cope"))


@pytest.mark.integration
def test_editing_one_policy_rescored_only_that_policy(
    build_defs, instance, object_store, results_db, tiny_cope, speech_archive, tmp_path, model_calls
):
    policies_dir = tmp_path / "policies"
    policies_dir.mkdir()
    for name, text in load_policies(POLICIES).items():
        (policies_dir / f"{name}.md").write_text(text)
    base_dir, adapter_dir = tiny_cope
    classifier = PolicyClassifier(
        backend="cope-a",
        base_model=str(base_dir),
        adapter=str(adapter_dir),
        threshold=0.0,
        policies=POLICIES,
        policies_dir=str(policies_dir),
    )
    defs = build_defs(classifier=classifier)
    runner = ArchiveRunner(defs, instance, object_store, results_db)
    key = runner.upload(speech_archive)
    partition = runner.partition_of(key)
    assert runner.run(key, assets=FULL_JOB).success
    files = model_calls["transcribed"]
    assert files == 3 and model_calls["scored"] == files * len(POLICIES)
    assert stale_status(defs, instance, "classifications", partition) == StaleStatus.FRESH
    before = _scores(results_db, key)

    # The policy owner revises one text; the code location reloads with it.
    revised = policies_dir / "self_harm.md"
    revised.write_text(revised.read_text() + "\n- Also includes: describing a plan to stop eating.\n")
    defs = build_defs(classifier=classifier)
    assert stale_status(defs, instance, "classifications", partition) == StaleStatus.STALE
    assert stale_status(defs, instance, "transcripts", partition) == StaleStatus.FRESH

    # A backfill of the partition (every asset, as the catch-up would): only self_harm is scored.
    model_calls.update(transcribed=0, scored=0, scored_policies=set())
    result = ArchiveRunner(defs, instance, object_store, results_db).run(key, assets=FULL_JOB)
    assert result.success
    assert model_calls["transcribed"] == 0
    assert model_calls["scored"] == files * 1
    assert model_calls["scored_policies"] == {revised.read_text()}
    assert stale_status(defs, instance, "classifications", partition) == StaleStatus.FRESH

    after = _scores(results_db, key)
    assert after.keys() == before.keys()  # no duplicate rows
    for (member, policy), row in after.items():
        old = before[(member, policy)]
        if policy == "hate_speech":
            assert row == old  # untouched: same version, same time, same score
        else:
            assert row["policy_version"] != old["policy_version"]
    metadata = result.asset_materializations_for_node("classifications")[0].metadata
    assert metadata["scored_now"].value == files and metadata["already_scored"].value == files


def _scores(results_db, key) -> dict:
    return {
        (r["original_filename"], r["flag_category"]): r
        for r in db_rows(
            results_db,
            "SELECT a.original_filename, c.flag_category, c.policy_version, c.flag_score, c.scored_at, c.created_at "
            "FROM classifications c JOIN audio_files a ON a.id = c.audio_file_id WHERE a.archive_source = %s",
            (key,),
        )
    }


@pytest.fixture
def speech_archive(tmp_path):
    from testing.archive_factory import build_tar, make_speech_mp3

    parts = tmp_path / "parts"
    return build_tar(
        tmp_path / "batch_policy.tar",
        [
            ("threat.mp3", make_speech_mp3(parts / "threat.mp3", "i will not eat anything this week")),
            ("weather.mp3", make_speech_mp3(parts / "weather.mp3", "the weather is lovely today in the park")),
            ("hello.mp3", make_speech_mp3(parts / "hello.mp3", "hello and welcome to my channel")),
        ],
    )
