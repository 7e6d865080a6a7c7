"""Blind review that stays blind (issue 26): the recall audit sample and the double-coding
sample were an unsalted hash of the item id, which is in every URL, so an RA who read the
migrations told audit items from flagged ones 17 of 17 times. Each item now carries its own
random draws. Here an RA reads everything the console shows them (ids, URLs, queue order,
pages, headers, timing) and Fisher's exact test checks that none of it predicts either sample
better than chance; and the migration re-draws untouched items while items RAs have started
keep their samples."""

from __future__ import annotations

import hashlib
import math
import random
import re
import statistics
import time

from review_support import FlaggedItem, RAClient, db_rows, seed_flagged

from resources.results_db import ResultsDatabase
from review import accounts, recall_audit
from sql import migrate

# A guess "predicts better than chance" when Fisher's exact test rejects independence at
# this level. Small, so that a chance failure is rare (1 in 10,000 per guess) while the hash
# the issue found (right every time over ~100 items) still fails it by tens of orders of magnitude.
ALPHA = 1e-4


def fisher_exact_p(guess: list[bool], truth: list[bool]) -> float:
    """Two-sided p-value of Fisher's exact test on the 2 x 2 table of guess against truth:
    the probability, with the margins fixed, of a table at most as likely as the one seen."""
    a = sum(g and t for g, t in zip(guess, truth))
    row, col, n = sum(guess), sum(truth), len(truth)

    def chance(x: int) -> float:
        return math.comb(col, x) * math.comb(n - col, row - x) / math.comb(n, row)

    seen, low, high = chance(a), max(0, row + col - n), min(row, col)
    return min(1.0, sum(p for x in range(low, high + 1) if (p := chance(x)) <= seen * 1.000001))


def old_hash_bucket(purpose: str, item_id: int, buckets: int) -> int:
    """Migration 017's ra_hash_bucket, as anyone who reads it can compute it."""
    return int(hashlib.md5(f"{purpose}:{item_id}".encode()).hexdigest()[:7], 16) % buckets


def test_fisher_exact_p_matches_known_values():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70.
    assert math.isclose(fisher_exact_p([1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0]), 34 / 70)
    assert fisher_exact_p([True] * 20 + [False] * 20, [True] * 20 + [False] * 20) < 1e-10


def test_nothing_an_ra_reads_predicts_either_sample(start_console, results_db, object_store, opus_bytes, ras):
    rng = random.Random(26)
    flags = [n < 80 for n in range(240)]
    rng.shuffle(flags)  # flagged and unflagged items interleaved in id order, as uploads come
    recall_audit.set_audit_share(results_db, 50)  # half the unflagged items: the most telling split
    seed_flagged(
        results_db,
        object_store,
        opus_bytes,
        [FlaggedItem(f"clip{n:03d}.mp3", score=0.9 if f else 0.2, flagged=f) for n, f in enumerate(flags)],
    )
    sampled = "SELECT item_id, flagged, double_coding_bucket FROM ra_review_items"
    draws = {r["item_id"]: r for r in db_rows(results_db, sampled)}
    server = start_console(double_coding_percent=50, queue_page_size=1000)
    alice = RAClient(server.url)
    alice.sign_in("alice")

    _, _, queue = alice.get("/queue")
    shown = [int(i) for i in re.findall(rb'<tr data-item-id="(\d+)"', queue)]  # in the order shown
    assert 120 < len(shown) < 200  # 80 flagged and about 80 audit items
    audit = [not draws[i]["flagged"] for i in shown]
    double = [draws[i]["double_coding_bucket"] < 50 for i in shown]
    assert 20 < sum(audit) < len(shown) - 20 and 20 < sum(double) < len(shown) - 20

    # Every item page, three times in a shuffled order: its body, headers and time to answer.
    bodies, headers, seconds = {}, {}, {i: [] for i in shown}
    for _ in range(3):
        for item_id in rng.sample(shown, len(shown)):
            started = time.perf_counter()
            status, response_headers, body = alice.get(f"/items/{item_id}")
            seconds[item_id].append(time.perf_counter() - started)
            assert status == 200
            bodies[item_id] = body
            headers[item_id] = sorted((k.lower(), v) for k, v in response_headers.items() if k.lower() != "date")
    # The same page and the same headers for every item once its numbers (ids, times) are set
    # aside: content (the same audio and transcript here) is all that differs in real queues.
    masked = {re.sub(rb"[0-9]+", b"#", bodies[i]) for i in shown}
    assert len(masked) == 1
    assert len({tuple(h for h in headers[i] if h[0] != "content-length") for i in shown}) == 1

    def above_median(values: dict[int, float]) -> list[bool]:
        middle = statistics.median(values.values())
        return [values[i] > middle for i in shown]

    guesses = {
        "id parity": lambda sample: [i % 2 == 1 for i in shown],
        "first half of the queue": lambda sample: [n < len(shown) / 2 for n in range(len(shown))],
        "page length": lambda sample: above_median({i: len(bodies[i]) for i in shown}),
        "page time": lambda sample: above_median({i: min(seconds[i]) for i in shown}),
        # What the issue's attacker computed: migration 017's hash of the id, below the share.
        "the hash of the id": lambda sample: [
            old_hash_bucket(f"ra-{sample}", i, 10000 if sample == "recall-audit" else 100)
            < (5000 if sample == "recall-audit" else 50)
            for i in shown
        ],
    }
    for sample, truth in (("recall-audit", audit), ("double-coding", double)):
        for name, guess in guesses.items():
            p = fisher_exact_p(guess(sample), truth)
            assert p > ALPHA, f"{name} predicts the {sample} sample (Fisher's exact p = {p:.2g})"


def test_the_migration_redraws_untouched_items_and_keeps_started_ones(
    postgres_dsn, object_store, opus_bytes, monkeypatch
):
    """Issue 26: the draws replace the hash in migration 021. An item nobody has started gets
    fresh draws; one an RA decided or holds keeps the samples it was in, so an audit item
    decided stays an audit item and a double-coded pair in progress still gets its second coder."""
    before = [m for m in migrate.bundled_migrations() if m.version < "021"]
    # The pipeline's own views (its writes read the thresholds in force), not the console's,
    # which need 021's columns.
    pipeline_views = [v for v in migrate.bundled_views() if v[0] == "classified_items.sql"]
    monkeypatch.setattr(migrate, "bundled_migrations", lambda: before)
    monkeypatch.setattr(migrate, "bundled_views", lambda: pipeline_views)
    migrate.apply_migrations(postgres_dsn)
    db = ResultsDatabase(dsn=postgres_dsn)
    seeded = seed_flagged(
        db,
        object_store,
        opus_bytes,
        [FlaggedItem(f"m{n:03d}.mp3", score=0.9 if n % 4 == 0 else 0.2, flagged=n % 4 == 0) for n in range(300)],
    )
    accounts.add_user(db, "alice", "correct horse battery")
    ids = sorted(s.item_id for s in seeded.values())
    decided, held, lapsed = ids[:20], ids[20:30], ids[30:40]

    def start(cur) -> None:
        cur.execute("SELECT id FROM ra_users")
        alice = cur.fetchone()["id"]
        for item_id in decided:
            cur.execute(
                "INSERT INTO ra_decisions (item_id, audio_file_id, policy, classifier_model, policy_version, "
                "flagged_at, decision, ra_user_id) SELECT id, audio_file_id, flag_category, model, policy_version, "
                "created_at, 'violates', %s FROM classifications WHERE id = %s",
                (alice, item_id),
            )
        for item_id, minutes in [(i, 15) for i in held] + [(i, -1) for i in lapsed]:
            cur.execute(
                "INSERT INTO ra_claims (item_id, ra_user_id, claimed_at, expires_at) "
                "VALUES (%s, %s, now() - interval '1 hour', now() + make_interval(mins => %s))",
                (item_id, alice, minutes),
            )

    db.transaction(start)
    monkeypatch.undo()
    assert migrate.apply_migrations(postgres_dsn)[0] == "021"

    rows = {r["id"]: r for r in db_rows(db, "SELECT id, audit_bucket, double_coding_bucket FROM classifications")}
    for item_id in decided + held:  # started: the samples they were in, for any share
        assert rows[item_id]["audit_bucket"] == old_hash_bucket("ra-recall-audit", item_id, 10000)
        assert rows[item_id]["double_coding_bucket"] == old_hash_bucket("ra-double-coding", item_id, 100)
    redrawn = [i for i in ids if i not in decided + held]  # a lapsed claim started nothing
    assert all(0 <= rows[i]["audit_bucket"] < 10000 and 0 <= rows[i]["double_coding_bucket"] < 100 for i in ids)
    for purpose, column, buckets in (
        ("ra-recall-audit", "audit_bucket", 10000),
        ("ra-double-coding", "double_coding_bucket", 100),
    ):
        old = [old_hash_bucket(purpose, i, buckets) < buckets // 2 for i in redrawn]
        new = [rows[i][column] < buckets // 2 for i in redrawn]
        assert fisher_exact_p(old, new) > ALPHA, f"the old hash still predicts {column}"
        assert 0.3 < sum(new) / len(new) < 0.7  # drawn uniformly
    assert db_rows(db, "SELECT count(*) AS n FROM pg_proc WHERE proname = 'ra_hash_bucket'")[0]["n"] == 0
