"""The console's database side on real PostgreSQL: what role ra_app may and may not do, the
append-only decision log, the queue's claims and double-coding sample, search through the
GIN index, Cohen's kappa, and the daily report's review figures."""

from __future__ import annotations

import psycopg2
import pytest
from db_privileges import assert_each_refused
from review_support import FlaggedItem, db_rows, seed_flagged

from review.store import QueueFilter, ReviewStore, UnsafeDatabaseRole

BASE_TABLES = [
    "audio_files",
    "transcripts",
    "classifications",
    "ra_users",
    "ra_sessions",
    "ra_claims",
    "ra_decisions",
    "daily_summaries",
    "processing_failures",
]


def _user_ids(results_db) -> dict[str, int]:
    return {r["username"]: r["id"] for r in db_rows(results_db, "SELECT id, username FROM ra_users")}


def _store(console_dsn, percent: int = 0) -> ReviewStore:
    return ReviewStore(console_dsn, double_coding_percent=percent, claim_minutes=15)


@pytest.fixture
def seeded(results_db, object_store, opus_bytes, ras):
    return seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem(f"clip{n}.mp3") for n in range(4)])


@pytest.mark.parametrize("table", BASE_TABLES)
def test_ra_app_cannot_read_base_tables(console_dsn, seeded, table):
    assert_each_refused(console_dsn, [f"SELECT * FROM {table} LIMIT 1"])


def test_ra_app_cannot_change_decisions_accounts_or_schema(console_dsn, results_db, seeded):
    store = _store(console_dsn)
    alice = _user_ids(results_db)["alice"]
    item = seeded["clip0.mp3"].item_id
    assert store.claim(alice, item)
    assert store.record_decision(alice, item, "v1", "violates", "threat")
    assert_each_refused(
        console_dsn,
        [
            "UPDATE ra_decisions SET decision = 'does_not_violate'",
            "DELETE FROM ra_decisions",
            "TRUNCATE ra_decisions",
            "INSERT INTO ra_users (username, password_hash) VALUES ('mallory', 'x')",
            "UPDATE ra_claims SET expires_at = now()",
            "CREATE TABLE public.stolen (x text)",
        ],
    )
    store.close()


def test_decision_log_is_append_only_even_for_its_owner(console_dsn, results_db, seeded):
    store = _store(console_dsn)
    alice = _user_ids(results_db)["alice"]
    item = seeded["clip0.mp3"].item_id
    store.claim(alice, item)
    store.record_decision(alice, item, "v1", "violates", "first")
    store.record_decision(alice, item, "v1", "does_not_violate", "")  # supersedes, adds a row
    for statement in ("UPDATE ra_decisions SET reason = 'edited'", "DELETE FROM ra_decisions", "TRUNCATE ra_decisions"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
            results_db.transaction(lambda cur: cur.execute(statement))  # noqa: B023 - runs now
    log = db_rows(
        results_db,
        "SELECT decision, reason, policy_version, classifier_model, flag_score FROM ra_decisions ORDER BY id",
    )
    assert [(r["decision"], r["reason"]) for r in log] == [("violates", "first"), ("does_not_violate", "")]
    assert {(r["policy_version"], r["classifier_model"], r["flag_score"]) for r in log} == {("v1", "cope-a-test", 0.9)}
    assert store.my_decision(alice, item)["decision"] == "does_not_violate"
    store.close()


def test_a_decision_on_a_rescored_flag_is_refused(console_dsn, results_db, seeded):
    store = _store(console_dsn)
    alice = _user_ids(results_db)["alice"]
    item = seeded["clip0.mp3"].item_id
    store.claim(alice, item)
    assert not store.record_decision(alice, item, "an-older-version", "violates", "x")
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_decisions")[0]["n"] == 0
    store.close()


def test_the_console_refuses_to_run_as_an_owner_role(results_db):
    with pytest.raises(UnsafeDatabaseRole):
        _store(results_db.dsn).check_role()


def test_a_claimed_item_is_not_offered_to_a_second_ra(console_dsn, results_db, seeded):
    store = _store(console_dsn, percent=0)
    users = _user_ids(results_db)
    item = seeded["clip0.mp3"].item_id
    queue_of = lambda ra: [r["item_id"] for r in store.queue(users[ra], QueueFilter())]  # noqa: E731
    assert queue_of("alice") == queue_of("bob") == sorted(i.item_id for i in seeded.values())
    assert store.claim(users["alice"], item)
    assert item in queue_of("alice") and item not in queue_of("bob")
    assert not store.claim(users["bob"], item)
    store.record_decision(users["alice"], item, "v1", "violates", "x")
    assert item not in queue_of("alice") and item not in queue_of("bob")
    store.close()


def test_double_coded_items_go_to_exactly_two_ras(console_dsn, results_db, seeded):
    store = _store(console_dsn, percent=100)  # every item is in the sample
    users = _user_ids(results_db)
    item = seeded["clip1.mp3"].item_id
    assert store.claim(users["alice"], item)
    assert store.claim(users["bob"], item)  # the second coder
    assert not store.claim(users["carol"], item)  # never a third
    store.record_decision(users["alice"], item, "v1", "violates", "a")
    store.record_decision(users["bob"], item, "v1", "violates", "b")
    assert item not in [r["item_id"] for r in store.queue(users["carol"], QueueFilter())]
    store.close()


def test_queue_filters(console_dsn, results_db, object_store, opus_bytes, ras):
    seeded = seed_flagged(
        results_db,
        object_store,
        opus_bytes,
        [
            FlaggedItem("low.mp3", score=0.55),
            FlaggedItem("high.mp3", score=0.95, policy="hate_speech"),
        ],
    )
    store = _store(console_dsn)
    alice = _user_ids(results_db)["alice"]
    names = {i.item_id: n for n, i in seeded.items()}
    found = lambda **f: [names[r["item_id"]] for r in store.queue(alice, QueueFilter(**f))]  # noqa: E731
    assert found(score_min=0.9) == ["high.mp3"]
    assert found(score_max=0.6) == ["low.mp3"]
    assert found(policy="hate_speech") == ["high.mp3"]
    assert found(model="other-model") == []
    assert found(date_from="2000-01-01", date_to="2000-01-02") == []
    assert {r["policy"]: r["items"] for r in store.queue_counts()} == {"harassment_threats": 1, "hate_speech": 1}
    store.close()


def test_search_finds_words_through_the_gin_index(console_dsn, results_db, object_store, opus_bytes, ras):
    seed_flagged(
        results_db,
        object_store,
        opus_bytes,
        [
            FlaggedItem("a.mp3", transcript="meet me behind the station tonight"),
            FlaggedItem("b.mp3", transcript="nothing to see here"),
        ],
    )
    store = _store(console_dsn)
    hits = store.search("station")
    assert [h["original_filename"] for h in hits] == ["a.mp3"] and hits[0]["review_items"]
    assert "\x01station\x02" in hits[0]["snippet"]
    store.close()
    plan = results_db.transaction(
        lambda cur: (
            cur.execute("SET LOCAL enable_seqscan = off"),
            cur.execute(
                "EXPLAIN SELECT audio_file_id FROM ra_transcript_search "
                "WHERE document @@ websearch_to_tsquery('simple', 'station')"
            ),
            cur.fetchall(),
        )[-1]
    )
    assert "transcripts_text_search_idx" in " ".join(row["QUERY PLAN"] for row in plan)


def _kappa(pairs: list[tuple[str, str]]) -> float:
    """Cohen's kappa by the textbook formula, to check the view against."""
    n = len(pairs)
    labels = {label for pair in pairs for label in pair}
    p_o = sum(a == b for a, b in pairs) / n
    p_e = sum((sum(a == k for a, _ in pairs) / n) * (sum(b == k for _, b in pairs) / n) for k in labels)
    return (p_o - p_e) / (1 - p_e)


def test_kappa_precision_and_per_ra_views(console_dsn, results_db, object_store, opus_bytes, ras):
    seeded = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem(f"k{n}.mp3") for n in range(5)])
    store = _store(console_dsn, percent=100)
    users = _user_ids(results_db)
    pairs = [
        ("violates", "violates"),
        ("violates", "does_not_violate"),
        ("does_not_violate", "does_not_violate"),
        ("unsure", "violates"),
        ("violates", "violates"),
    ]
    for (first, second), item in zip(pairs, [seeded[f"k{n}.mp3"].item_id for n in range(5)]):
        for ra, decision in (("alice", first), ("bob", second)):
            assert store.claim(users[ra], item)
            assert store.record_decision(users[ra], item, "v1", decision, "because")
    stats = store.lead_stats()
    (agreement,) = stats["agreement"]
    assert agreement["items"] == 5
    assert float(agreement["kappa"]) == pytest.approx(_kappa(pairs), abs=1e-4)
    (precision,) = stats["precision"]
    # 10 decisions: 6 violates, 3 does not, 1 unsure -> 6 / 9
    assert (precision["violates"], precision["does_not_violate"], precision["unsure"]) == (6, 3, 1)
    assert float(precision["precision"]) == pytest.approx(6 / 9, abs=1e-4)
    assert {r["username"]: r["decisions"] for r in stats["decisions_per_ra"]} == {"alice": 5, "bob": 5}
    store.close()

    # The same figures reach the daily report.
    day = str(precision["day"])
    summary = results_db.reports.daily_summary(day)
    results_db.reports.store_daily_summary(summary)
    (report,) = db_rows(
        results_db,
        "SELECT review_precision, review_agreement, review_decisions_by_ra FROM daily_report WHERE day = %s",
        (day,),
    )
    assert report["review_precision"][0]["precision"] == pytest.approx(6 / 9, abs=1e-4)
    assert report["review_agreement"][0]["kappa"] == pytest.approx(_kappa(pairs), abs=1e-4)
    assert {r["username"] for r in report["review_decisions_by_ra"]} == {"alice", "bob"}


BARRIER_VIEWS = [
    "ra_review_items",
    "ra_latest_decisions",
    "ra_active_claims",
    "ra_accounts",
    "ra_live_sessions",
    "ra_flag_precision",
    "ra_double_coded_pairs",
    "ra_agreement",
    "ra_decisions_per_ra",
    "ra_recall",
    "ra_calibration",
]


def test_console_views_are_security_barriers_except_search(results_db):
    found = db_rows(
        results_db, "SELECT relname, reloptions FROM pg_class WHERE relkind = 'v' AND relname LIKE 'ra\\_%%'"
    )
    options = {r["relname"]: r["reloptions"] for r in found}
    assert {name: options.get(name) for name in BARRIER_VIEWS} == {n: ["security_barrier=true"] for n in BARRIER_VIEWS}
    # Search is a plain view so the GIN index is usable (see sql/views/review_console.sql);
    # the estimation helpers are read by no role, only by the barrier views above.
    assert {name for name, value in options.items() if value is None} == {
        "ra_transcript_search",
        "ra_estimation_decisions",
        "ra_item_population",
    }


def test_ra_reader_sees_figures_but_not_accounts_or_sessions(results_db, ra_login_for_review):
    with psycopg2.connect(ra_login_for_review) as conn, conn.cursor() as cur:
        for view in ("ra_review_items", "ra_agreement", "ra_flag_precision", "ra_decisions_per_ra"):
            cur.execute(f"SELECT * FROM {view} LIMIT 1")
    assert_each_refused(
        ra_login_for_review,
        [f"SELECT * FROM {view} LIMIT 1" for view in ("ra_accounts", "ra_live_sessions", "ra_latest_decisions")],
    )


def test_a_claim_expires_and_the_item_returns_to_the_queue(console_dsn, results_db, seeded):
    import time

    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=1 / 60)  # one second
    users = _user_ids(results_db)
    item = seeded["clip2.mp3"].item_id
    assert store.claim(users["alice"], item)
    assert not store.claim(users["bob"], item)
    time.sleep(1.2)
    assert store.claim(users["bob"], item)  # alice walked away: the claim lapsed
    assert not store.claim(users["alice"], item)
    store.close()
