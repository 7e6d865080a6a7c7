"""What the console tells researchers beyond precision (issue 17): the recall audit sample,
recall and false-negative rate with Wilson intervals, calibrated thresholds applied without a
model call, and the decisions exported for analysis; plus the policy text each score was
computed with (issue 15, item 5). Every estimate is checked against a textbook computation
in Python."""

from __future__ import annotations

import csv
import math
import re

import pyarrow.parquet as pq
import pytest
from review_support import (
    AUDIT_DECISIONS,
    FLAG_DECISIONS,
    FLAGGED,
    MODEL,
    POLICY,
    RA_PASSWORD,
    UNFLAGGED,
    FlaggedItem,
    RAClient,
    db_rows,
    seed_flagged,
)

from operations.cli import main
from resources.results_db import classifications as classifications_db
from review import accounts, recall_audit
from review.store import QueueFilter, ReviewStore

Z = 1.959964


def wilson(successes: int, n: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_functions_match_the_formula(results_db):
    for k, n in [(0, 1), (1, 1), (3, 10), (45, 50), (0, 200), (999, 1000)]:
        (row,) = db_rows(
            results_db, "SELECT wilson_lower(%s, %s) AS low, wilson_upper(%s, %s) AS high", (k / n, n, k / n, n)
        )
        assert (row["low"], row["high"]) == pytest.approx(wilson(k, n), abs=1e-6)
    assert db_rows(results_db, "SELECT wilson_lower(0.5, 0) AS low")[0]["low"] is None


@pytest.fixture
def population(results_db, object_store, opus_bytes, ras):
    recall_audit.set_audit_share(results_db, 100)  # every unflagged item is in the audit sample
    return seed_flagged(results_db, object_store, opus_bytes, FLAGGED + UNFLAGGED)


def _ids(results_db) -> dict[str, int]:
    return {r["username"]: r["id"] for r in db_rows(results_db, "SELECT id, username FROM ra_users")}


def _decide(
    console_dsn, results_db, population, decisions: dict[str, str], ra: str = "alice", reason: str = "because"
) -> None:
    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=15)
    user = _ids(results_db)[ra]
    for name, decision in decisions.items():
        item = population[name].item_id
        assert store.claim(user, item), name
        assert store.record_decision(user, item, "v1", decision, reason)
    store.close()


def test_the_audit_sample_follows_each_items_draw_and_is_shown_blind(
    console_dsn, start_console, results_db, object_store, opus_bytes, ras
):
    seeded = seed_flagged(results_db, object_store, opus_bytes, FLAGGED[:2] + UNFLAGGED)
    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=15)
    alice = _ids(results_db)["alice"]
    queued = lambda: {r["item_id"] for r in store.queue(alice, QueueFilter(), limit=1000)}  # noqa: E731
    flagged = {seeded[i.name].item_id for i in FLAGGED[:2]}
    unflagged = {seeded[i.name].item_id: i for i in UNFLAGGED}
    # The default 2 %: exactly the unflagged items whose random draw (0..9,999) is below 200.
    buckets = {r["id"]: r["audit_bucket"] for r in db_rows(results_db, "SELECT id, audit_bucket FROM classifications")}
    assert queued() == flagged | {i for i in unflagged if buckets[i] < 200}
    recall_audit.set_audit_share(results_db, 100)
    assert queued() == flagged | set(unflagged)
    recall_audit.set_audit_share(results_db, 0)
    assert queued() == flagged
    recall_audit.set_audit_share(results_db, 100)
    store.close()

    # In the console an audit item looks exactly like a flagged one: no score, no flag, and the
    # same page once the item's own values (ids, names, times) are set aside.
    server = start_console(double_coding_percent=0)
    client = RAClient(server.url)
    client.sign_in("alice")
    _, _, queue = client.get("/queue")
    assert b"0.900" not in queue and b"score" not in queue.lower()
    pages = []
    for item_id in (min(flagged), min(unflagged)):
        _, _, page = client.get(f"/items/{item_id}")
        assert b"score" not in page.lower() and b"flagged" not in page.lower() and b"0.9" not in page
        pages.append(re.sub(rb"[0-9]+|flag\w*\.mp3|quiet\w*\.mp3|\d{4}-\d\d-\d\d \d\d:\d\d", b"#", page))
    assert pages[0] == pages[1]


def test_recall_and_false_negative_rate_match_a_reference(console_dsn, results_db, population):
    _decide(console_dsn, results_db, population, {**FLAG_DECISIONS, **AUDIT_DECISIONS})
    (row,) = db_rows(results_db, "SELECT * FROM ra_recall WHERE policy = %s", (POLICY,))
    p, q = 6 / 8, 2 / 20
    p_low, p_high = wilson(6, 8)
    q_low, q_high = wilson(2, 20)

    def recall(p_: float, q_: float) -> float:
        return p_ * 10 / (p_ * 10 + q_ * 40)

    assert (row["flagged_items"], row["unflagged_items"], row["flag_decisions"], row["audit_decisions"]) == (
        10,
        40,
        8,
        20,
    )
    expected = {
        "precision": p,
        "precision_low": p_low,
        "precision_high": p_high,
        "miss_rate": q,
        "miss_rate_low": q_low,
        "miss_rate_high": q_high,
        "recall": recall(p, q),
        "recall_low": recall(p_low, q_high),
        "recall_high": recall(p_high, q_low),
        "false_negative_rate": 1 - recall(p, q),
        "false_negative_rate_low": 1 - recall(p_high, q_low),
        "false_negative_rate_high": 1 - recall(p_low, q_high),
    }
    assert {k: float(row[k]) for k in expected} == pytest.approx(expected, abs=1e-4)
    # Precision of flags leaves the audit decisions out.
    (precision,) = db_rows(results_db, "SELECT * FROM ra_flag_precision")
    assert (precision["decisions"], precision["violates"]) == (8, 6)
    assert (float(precision["precision_low"]), float(precision["precision_high"])) == pytest.approx(
        (p_low, p_high), abs=1e-4
    )


def _reference_calibration(threshold: float) -> dict:
    """Weighted estimate: each flagged decision stands for 10/8 items, each audit one for 40/20."""
    rows = [(i.score, FLAG_DECISIONS[i.name] == "violates", 10 / 8) for i in FLAGGED if i.name in FLAG_DECISIONS]
    rows += [(i.score, AUDIT_DECISIONS[i.name] == "violates", 40 / 20) for i in UNFLAGGED if i.name in AUDIT_DECISIONS]
    above = [(v, w) for s, v, w in rows if s >= threshold]
    weight = sum(w for _, w in above)
    violating = sum(w for v, w in above if v)
    all_violating = sum(w for _, v, w in rows if v)
    n_eff = weight**2 / sum(w * w for _, w in above) if above else 0
    precision = violating / weight if weight else None
    low, high = wilson(violating / weight * n_eff, n_eff) if weight else (None, None)
    return {
        "decisions": len(above),
        "precision": precision,
        "precision_low": low,
        "precision_high": high,
        "recall": violating / all_violating,
    }


def test_calibration_matches_a_reference_and_finds_the_lowest_threshold(console_dsn, results_db, population):
    _decide(console_dsn, results_db, population, {**FLAG_DECISIONS, **AUDIT_DECISIONS})
    rows = db_rows(results_db, "SELECT * FROM ra_calibration WHERE policy = %s ORDER BY threshold", (POLICY,))
    assert [float(r["threshold"]) for r in rows] == [n / 100 for n in range(1, 100)]
    for row in rows:
        expected = _reference_calibration(float(row["threshold"]))
        if expected["precision"] is None:
            assert row["precision"] is None
            continue
        got = {k: (float(row[k]) if k != "decisions" else row[k]) for k in expected}
        assert got == pytest.approx(expected, abs=1e-4), row["threshold"]
    # Target 0.9: the lowest grid threshold whose precision reaches it.
    reference = min(n / 100 for n in range(1, 100) if (_reference_calibration(n / 100)["precision"] or 0) >= 0.9)
    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=15)
    (pick,) = store.recommended_thresholds(0.9)
    store.close()
    assert float(pick["threshold"]) == reference
    assert pick["decisions"] == _reference_calibration(reference)["decisions"]


def test_applying_a_threshold_reflags_stored_scores_only(cli_env, console_dsn, results_db, population, capsys):
    before = {
        r["id"]: r
        for r in db_rows(results_db, "SELECT id, flag_score, flagged, created_at, scored_at FROM classifications")
    }
    assert main(["review-thresholds", "--policy", POLICY, "--model", MODEL, "--apply", "0.7"]) == 0
    assert "re-flagged without a model call" in capsys.readouterr().out
    after = {
        r["id"]: r
        for r in db_rows(
            results_db, "SELECT id, flag_score, flagged, threshold, created_at, scored_at FROM classifications"
        )
    }
    for item_id, row in after.items():
        assert row["flagged"] == (row["flag_score"] >= 0.7) and row["threshold"] == 0.7
        assert row["scored_at"] == before[item_id]["scored_at"]  # not scored again
        changed = row["flagged"] != before[item_id]["flagged"]
        assert (row["created_at"] != before[item_id]["created_at"]) == changed
    # What the pipeline's next run reads: this threshold, and every score already current under it.
    assert classifications_db.policy_thresholds(results_db, MODEL) == {POLICY: 0.7}
    scored = classifications_db.scored(
        results_db,
        [r["audio_file_id"] for r in db_rows(results_db, "SELECT audio_file_id FROM classifications")],
        MODEL,
    )
    assert {t for *_, t in scored} == {0.7}
    # Recommended: from the calibration, with what it rests on recorded.
    _decide(console_dsn, results_db, population, {f"flag{n:02d}.mp3": "violates" for n in range(4, 10)})
    assert main(["review-thresholds", "--target", "0.9"]) == 0
    assert POLICY in capsys.readouterr().out
    assert (
        main(["review-thresholds", "--policy", POLICY, "--model", MODEL, "--apply", "recommended", "--target", "0.9"])
        == 0
    )
    (latest,) = db_rows(results_db, "SELECT threshold, basis FROM current_policy_thresholds")
    assert "lowest to reach precision 0.9" in latest["basis"] and "decisions" in latest["basis"]
    assert main(["review-thresholds", "--policy", "nope", "--model", MODEL, "--apply", "0.5"]) == 1
    assert main(["review-thresholds", "--policy", POLICY, "--model", MODEL, "--apply", "1.5"]) == 1


def test_export_pseudonymises_ras_unless_asked(cli_env, console_dsn, results_db, population, tmp_path, capsys):
    _decide(console_dsn, results_db, population, dict(list(FLAG_DECISIONS.items())[:3]))
    _decide(
        console_dsn,
        results_db,
        population,
        dict(list(AUDIT_DECISIONS.items())[:2]),
        ra="bob",
        reason='=HYPERLINK("http://attacker.example/","see")',
    )
    assert main(["review-export", "--output", str(tmp_path / "d.parquet")]) == 0
    table = pq.read_table(tmp_path / "d.parquet").to_pylist()
    assert len(table) == 5 and "ra_username" not in table[0]
    pseudonyms = {r["ra"] for r in table}
    assert len(pseudonyms) == 2 and not pseudonyms & {"alice", "bob"}
    raw = (tmp_path / "d.parquet").read_bytes()
    assert b"alice" not in raw and b"bob" not in raw
    assert {r["flagged"] for r in table} == {True, False} and {r["threshold"] for r in table} == {0.5}
    assert set(table[0]) >= {
        "item_id",
        "policy",
        "classifier_model",
        "policy_version",
        "flag_score",
        "threshold",
        "decision",
        "ra",
        "standing",
    }
    assert main(["review-export", "--output", str(tmp_path / "d.csv"), "--with-ra-names"]) == 0
    with (tmp_path / "d.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["ra_username"] for r in rows} == {"alice", "bob"} and {r["ra"] for r in rows} == pseudonyms
    # A reason (or a file name) a spreadsheet would run as a formula is made inert in CSV only.
    assert {r["reason"] for r in rows} == {"because", '\'=HYPERLINK("http://attacker.example/","see")'}
    assert '=HYPERLINK("http://attacker.example/","see")' in {r["reason"] for r in table}
    assert main(["review-export", "--output", str(tmp_path / "d.xlsx")]) == 1


# Reasons a spreadsheet would run as a formula once it splits the line on some delimiter.
FORMULAS = [
    ";=1+1",
    ",=1+1",
    "\t=1+1",
    "|=1+1",
    "a;=cmd|' /C calc'!A0",
    "see, @SUM(A1)",
    'x";"=1+1',
    '; " =1+1',
    "first line\n=1+1",
    "first line\r\n+1+1",
    "=1+1",
    "-2+3",
    "harmless - with a dash",
]


def test_csv_cells_stay_inert_whatever_the_delimiter(cli_env, console_dsn, results_db, population, tmp_path):
    """Issue 26: a reason starting with ';' was written unquoted, so a spreadsheet that splits
    on ';' saw a cell starting with '='. Every field is quoted now, and no cell starts with a
    formula character for a reader splitting on ',', ';', tab or '|', with or without quoting."""
    names = list(FLAG_DECISIONS) + list(AUDIT_DECISIONS)
    for name, reason in zip(names, FORMULAS):
        _decide(console_dsn, results_db, population, {name: "unsure"}, reason=reason)
    assert main(["review-export", "--output", str(tmp_path / "d.csv")]) == 0
    with (tmp_path / "d.csv").open(newline="") as handle:
        text = handle.read()
    assert text.startswith('"decision_id","item_id",')
    # Read as written, every reason comes back, with an apostrophe before each formula character.
    reasons = [row["reason"] for row in csv.DictReader(text.splitlines(keepends=True))]
    assert sorted(r.replace("'", "") for r in reasons) == sorted(f.replace("'", "") for f in FORMULAS)
    for delimiter in (",", ";", "\t", "|"):
        cells = [c for row in csv.reader(text.splitlines(keepends=True), delimiter=delimiter) for c in row]
        cells += [c for line in re.split(r"[\r\n]", text) for c in line.split(delimiter)]  # no quoting at all
        formulas = [c for c in cells if c.strip(' \t"')[:1] in ("=", "+", "-", "@")]
        assert formulas == [], (delimiter, formulas)


def test_the_daily_report_carries_recall_with_intervals(console_dsn, results_db, population):
    _decide(console_dsn, results_db, population, {**FLAG_DECISIONS, **AUDIT_DECISIONS})
    day = str(db_rows(results_db, "SELECT (now() AT TIME ZONE 'UTC')::date AS day")[0]["day"])
    results_db.reports.store_daily_summary(results_db.reports.daily_summary(day))
    (report,) = db_rows(results_db, "SELECT review_precision, review_recall FROM daily_report WHERE day = %s", (day,))
    (recall,) = report["review_recall"]
    assert recall["recall_low"] < recall["recall"] < recall["recall_high"]
    assert recall["audit_decisions"] == 20 and recall["false_negative_rate"] == pytest.approx(1 - recall["recall"])
    (precision,) = report["review_precision"]
    assert precision["precision_low"] < precision["precision"] < precision["precision_high"]


def test_the_item_shows_the_policy_text_it_was_scored_with(start_console, results_db, object_store, opus_bytes, ras):
    """Issue 15 item 5: the console showed the packaged text even when POLICIES_DIR scored the
    item with another one. The text is kept by version and shown from there."""
    db_rows(
        results_db,
        "INSERT INTO policy_texts (policy, policy_version, policy_text) VALUES (%s, 'v1', %s) RETURNING policy",
        (POLICY, "OUR OWN <b>revised</b> policy text"),
    )
    item = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("p.mp3")])["p.mp3"].item_id
    server = start_console()
    client = RAClient(server.url)
    client.sign_in("alice")
    _, _, page = client.get(f"/items/{item}")
    assert b"OUR OWN &lt;b&gt;revised&lt;/b&gt; policy text" in page
    (queued,) = db_rows(results_db, "SELECT policy_text FROM ra_queue")
    assert queued["policy_text"] == "OUR OWN <b>revised</b> policy text"


def test_the_lead_pages_show_recall_and_calibration(start_console, console_dsn, results_db, population):
    accounts.add_user(results_db, "lena", RA_PASSWORD, role="lead")
    _decide(console_dsn, results_db, population, {**FLAG_DECISIONS, **AUDIT_DECISIONS})
    server = start_console()
    lena = RAClient(server.url)
    lena.sign_in("lena")
    _, _, stats = lena.get("/stats")
    assert b'id="recall"' in stats and b"[" in stats
    status, _, page = lena.get("/calibration")
    assert status == 200 and b"<svg" in page and b'class="precision"' in page and b"--apply" in page
