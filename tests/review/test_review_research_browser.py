"""The recall audit sample and the calibration page in Chromium, with screenshots under
test-output/review/<test>/ (issue 17)."""

from __future__ import annotations

import pytest
from review_support import (
    AUDIT_DECISIONS,
    FLAG_DECISIONS,
    FLAGGED,
    POLICY,
    RA_PASSWORD,
    UNFLAGGED,
    db_rows,
    seed_flagged,
    signed_in_page,
)

from review import accounts, recall_audit
from review.store import ReviewStore

pytestmark = pytest.mark.integration


def test_audit_sample_and_calibration_in_the_browser(
    browser, start_console, console_dsn, results_db, object_store, opus_bytes, ras, output_dir
):
    accounts.add_user(results_db, "lena", RA_PASSWORD, role="lead")
    recall_audit.set_audit_share(results_db, 100)
    seeded = seed_flagged(results_db, object_store, opus_bytes, FLAGGED + UNFLAGGED)
    server = start_console(double_coding_percent=0)

    # The RA's queue mixes flagged and audit items with nothing to tell them apart.
    page = signed_in_page(browser, server, "alice")
    rows = page.locator("table.queue tbody tr[data-item-id]")
    assert rows.count() == len(FLAGGED) + len(UNFLAGGED)
    assert "Score" not in page.locator("table.queue thead").inner_text()
    page.screenshot(path=output_dir / "audit-sample-queue.png", full_page=True)
    audit_item = seeded[UNFLAGGED[-1].name].item_id
    page.goto(f"{server.url}/items/{audit_item}")
    page.keyboard.press("c")  # claim it from the keyboard
    page.wait_for_selector("#decision-form")
    assert "score" not in page.locator("main").inner_text().lower()
    page.screenshot(path=output_dir / "audit-sample-item.png", full_page=True)
    page.fill("#reason", "a threat the classifier missed")
    page.keyboard.press("Escape")
    page.keyboard.press("1")
    page.wait_for_url(lambda url: f"/items/{audit_item}" not in url)  # on to the next item
    (decision,) = db_rows(results_db, "SELECT flagged, threshold FROM ra_decisions")
    assert decision == {"flagged": False, "threshold": 0.5}  # recorded as an audit decision
    page.context.close()

    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=15)
    bob = db_rows(results_db, "SELECT id FROM ra_users WHERE username = 'bob'")[0]["id"]
    for name, choice in {**FLAG_DECISIONS, **AUDIT_DECISIONS}.items():
        if name != UNFLAGGED[-1].name:
            assert store.claim(bob, seeded[name].item_id)
            assert store.record_decision(bob, seeded[name].item_id, "v1", choice, "reason")
    store.close()

    lead = signed_in_page(browser, server, "lena")
    lead.goto(f"{server.url}/stats")
    recall = lead.locator("#recall tbody tr").first.inner_text()
    assert POLICY in recall and "[" in recall
    lead.screenshot(path=output_dir / "recall-stats.png", full_page=True)
    lead.goto(f"{server.url}/calibration")
    section = lead.locator(f"section.calibration[data-policy='{POLICY}']")
    assert section.locator("svg polyline.precision").count() == 1
    assert section.locator("svg polyline.recall").count() == 1
    assert section.locator("svg line.recommended").count() == 1
    recommended = section.locator("b.recommended").inner_text()
    assert recommended and f"--apply {recommended}" in section.locator("code.apply").inner_text()
    assert section.locator("tr.marked").count() >= 1
    lead.screenshot(path=output_dir / "calibration.png", full_page=True)
    lead.context.close()
