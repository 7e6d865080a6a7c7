"""Pure rules of the data layer: named queries, archive identity, row transitions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from archive_identity import ArchiveVersion, is_archive_key, partition_key_candidates, tagged_version
from resources.results_db.raw_archive import ExistingRow, Rejection, RowChange, plan_member_changes
from sql.named_queries import parse_named_queries, queries

SQL_CONCERNS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sql" / "queries").glob("*.sql"))


def test_named_queries_are_split_by_name_and_unknown_names_say_where():
    named = parse_named_queries("demo", "-- header\n-- name: first\nSELECT 1\n\n-- name: second\n-- why\nSELECT 2;\n")
    assert named.first == "SELECT 1"
    assert named.second == "-- why\nSELECT 2;"
    with pytest.raises(AttributeError, match="sql/queries/demo.sql has no query named 'third'"):
        named.third  # noqa: B018
    with pytest.raises(ValueError, match="twice"):
        parse_named_queries("demo", "-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


@pytest.mark.parametrize("concern", SQL_CONCERNS)
def test_every_shipped_query_file_parses(concern):
    assert queries(concern).names()


def test_partition_keys_keep_clean_names_and_tell_objects_apart():
    def preferred(key):
        return partition_key_candidates(key)[0]

    def fallback(key):
        return partition_key_candidates(key)[1]

    assert preferred("archives/batch_2026_11_01.tar.gz") == "batch_2026_11_01"
    assert preferred("archives/b.tar") == preferred("archives/b.tar.gz") == "b"
    # The registry gives the second object of a name the fallback key: always different.
    assert fallback("archives/b.tar") != fallback("archives/b.tar.gz")
    assert fallback("archives/b.tar").startswith("b-")
    unclean = preferred("archives/Batch 1 (copy).tar")
    assert unclean.startswith("Batch_1_copy-") and len(unclean) == len("Batch_1_copy-") + 8
    assert unclean == fallback("archives/Batch 1 (copy).tar")
    assert is_archive_key("archives/x.TGZ") and not is_archive_key("archives/sub/x.tar")


def test_archive_version_round_trips_through_json_and_run_tags():
    version = ArchiveVersion("archives/a.tar", "abc-2", 123, datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), "a")
    assert ArchiveVersion.from_json(version.to_json()) == version
    assert version.date == "2026-11-30" and str(version) == "archives/a.tar@abc-2"
    assert tagged_version(version.run_tags() | {"dagster/partition": "a"}) == ("archives/a.tar", "abc-2")
    assert tagged_version({"dagster/partition": "a"}) == (None, None)


def _row(name, sha="s1", status="classified", stage=None, opus="processed/d/1.opus", id_=1):
    return ExistingRow(id_, name, sha, status, stage, opus)


def test_unchanged_members_keep_their_status():
    existing = {"a.mp3": _row("a.mp3"), "b.mp3": _row("b.mp3", status="failed", stage="conversion", opus=None)}
    assert plan_member_changes(existing, {"a.mp3": "s1", "b.mp3": "s1"}, {}) == []


def test_changed_bytes_start_the_file_over_and_drop_its_old_outputs():
    changes = plan_member_changes({"a.mp3": _row("a.mp3")}, {"a.mp3": "s2"}, {})
    assert changes == [RowChange("a.mp3", "pending", clear_opus=True, drop_model_outputs=True)]


def test_members_gone_from_the_new_version_are_removed_not_left_pending():
    existing = {"a.mp3": _row("a.mp3"), "gone.mp3": _row("gone.mp3"), "old.mp3": _row("old.mp3", status="removed")}
    changes = plan_member_changes(existing, {"a.mp3": "s1"}, {})
    assert changes == [RowChange("gone.mp3", "removed", clear_opus=True)]


def test_rejected_members_fail_once_and_duplicates_of_accepted_names_are_not_rows():
    existing = {"bad.mp3": _row("bad.mp3")}
    changes = plan_member_changes(
        existing, {"a.mp3": "s1"}, {"bad.mp3": Rejection("symbolic link"), "a.mp3": Rejection("duplicate")}
    )
    assert changes == [
        RowChange(
            "bad.mp3", "failed", error="symbolic link", failed_stage="archive", clear_opus=True, drop_model_outputs=True
        )
    ]
    already = {"bad.mp3": _row("bad.mp3", status="failed", stage="archive", opus=None)}
    assert plan_member_changes(already, {}, {"bad.mp3": Rejection("symbolic link")}) == []


def test_a_lower_cap_refuses_new_work_but_never_takes_finished_work():
    """Issue 23 item 6: a member over a cap lowered in run config, with the bytes the row was
    made from, keeps its status and results; new bytes over the cap, or a row with nothing
    finished, fail as before."""
    over = Rejection("larger than the 1048576 byte limit (3000000 bytes)", sha256="s1")
    existing = {
        "done.mp3": _row("done.mp3"),
        "converted.mp3": _row("converted.mp3", status="converted"),
        "changed.mp3": _row("changed.mp3", sha="s0"),
        "pending.mp3": _row("pending.mp3", status="pending", opus=None),
    }
    changes = plan_member_changes(existing, {}, dict.fromkeys(existing, over))
    assert [c.name for c in changes] == ["changed.mp3", "pending.mp3"]
    assert {c.status for c in changes} == {"failed"}


def test_a_member_that_comes_back_starts_over():
    changes = plan_member_changes({"a.mp3": _row("a.mp3", status="removed", opus=None)}, {"a.mp3": "s1"}, {})
    assert [c.status for c in changes] == ["pending"]
    rejected_before = {"a.mp3": _row("a.mp3", status="failed", stage="archive", opus=None)}
    assert [c.status for c in plan_member_changes(rejected_before, {"a.mp3": "s1"}, {})] == ["pending"]
