"""The review console in a real browser: Debian's Chromium driven by Playwright, against the
app under uvicorn, real PostgreSQL and real SeaweedFS, with a real Ogg Opus file.

Screenshots of the queue, an item and the stats page go to test-output/review/<test>/.
"""

from __future__ import annotations

import pytest
from review_support import RA_PASSWORD, FlaggedItem, db_rows, seed_flagged, signed_in_page

from review import accounts

pytestmark = pytest.mark.integration


@pytest.fixture
def lead(results_db) -> str:
    accounts.add_user(results_db, "lena", RA_PASSWORD, role="lead")
    return "lena"


def queue_item_ids(page, server) -> list[int]:
    page.goto(f"{server.url}/queue")
    return [
        int(x)
        for x in page.locator("table.queue tbody tr[data-item-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.itemId)"
        )
    ]


def decisions(results_db) -> list[dict]:
    return db_rows(
        results_db,
        "SELECT d.item_id, d.decision, d.reason, d.policy, d.classifier_model, d.policy_version, u.username "
        "FROM ra_decisions AS d JOIN ra_users AS u ON u.id = d.ra_user_id ORDER BY d.id",
    )


def open_claimed(page, server, item_id: int) -> None:
    """Open an item and claim it with its button (opening alone claims nothing), unless this
    RA holds it already (deciding an item claims the next one)."""
    page.goto(f"{server.url}/items/{item_id}")
    if page.locator("#claim").count():
        page.click("#claim")
    page.wait_for_selector("#decision-form")


def test_ra_reviews_an_item_with_player_transcript_and_keys(
    browser, start_console, results_db, object_store, opus_bytes, ras, lead, output_dir
):
    items = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("clip0.mp3"), FlaggedItem("clip1.mp3")])
    first, second = items["clip0.mp3"].item_id, items["clip1.mp3"].item_id
    server = start_console(double_coding_percent=0)
    page = signed_in_page(browser, server, "alice")

    # The queue: both items, oldest first, and the count per policy.
    assert queue_item_ids(page, server) == [first, second]
    assert "harassment_threats 2" in page.locator(".counts").inner_text()
    page.screenshot(path=output_dir / "queue.png", full_page=True)

    page.click(f"tr[data-item-id='{first}'] .open")  # Review: a POST that claims it
    page.wait_for_url(f"**/items/{first}**")
    assert page.locator("#decision-form").count() == 1
    page.keyboard.press("n")  # next and previous in queue order (each claims its item)
    page.wait_for_url(f"**/items/{second}**")
    page.keyboard.press("p")
    page.wait_for_url(f"**/items/{first}**")
    player = page.locator("#player")
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    assert player.evaluate("a => a.muted") is True  # wellness: muted until the RA unmutes
    assert page.locator("#segments").is_hidden()  # text hidden until asked for
    # The policy it was flagged under, from policies/harassment_threats.md, and the flag.
    assert "harass" in page.locator("details.policy pre").text_content().lower()
    assert "cope-a-test" in page.locator("section.flag").inner_text()
    page.keyboard.press("t")
    assert page.locator("#segments").is_visible()

    # Space plays; the highlight follows the audio into the second segment (2-4 s).
    page.keyboard.press(" ")
    page.wait_for_function("() => document.getElementById('player').currentTime > 2.2", timeout=10_000)
    page.wait_for_function("() => document.querySelector('.segment.current')?.dataset.start === '2.0'", timeout=5_000)
    assert "second part" in page.locator(".segment.current").inner_text()

    # Clicking the third segment seeks to it.
    page.click(".segment[data-start='4.0']")
    page.wait_for_function("() => document.getElementById('player').currentTime >= 4", timeout=5_000)
    page.wait_for_function("() => document.querySelector('.segment.current')?.dataset.start === '4.0'", timeout=5_000)
    page.keyboard.press(" ")  # pause for a steady screenshot
    page.screenshot(path=output_dir / "item.png", full_page=True)

    # 1 without a reason stores nothing and asks for one.
    page.keyboard.press("1")
    assert "Write a reason first" in page.locator("#decision-hint").inner_text()
    assert decisions(results_db) == []
    page.fill("#reason", "threatens the viewer by name")
    page.keyboard.press("Escape")  # leave the text box: keys are shortcuts again
    page.keyboard.press("1")
    page.wait_for_url(f"**/items/{second}**")  # the next item loads
    (row,) = decisions(results_db)
    assert row == {
        "item_id": first,
        "decision": "violates",
        "reason": "threatens the viewer by name",
        "policy": "harassment_threats",
        "classifier_model": "cope-a-test",
        "policy_version": "v1",
        "username": "alice",
    }

    # 2 needs no reason; with nothing after it, n and the decision lead back to the queue.
    page.wait_for_function("() => document.getElementById('player') !== null")
    page.keyboard.press("2")
    page.wait_for_url("**/queue**")
    assert [r["decision"] for r in decisions(results_db)] == ["violates", "does_not_violate"]
    assert "No items wait for you" in page.locator("table.queue").inner_text()

    page.goto(f"{server.url}/stats")  # an RA: their own decisions, no one else's
    assert "2" in page.locator("#own tbody tr").first.inner_text()
    assert page.locator("#per-ra").count() == 0
    page.context.close()
    page = signed_in_page(browser, server, lead)
    page.goto(f"{server.url}/stats")
    precision = page.locator("#precision tbody tr").first.inner_text()
    assert "harassment_threats" in precision and "cope-a-test" in precision and "0.5000" in precision
    assert "alice" in page.locator("#per-ra").inner_text()
    page.screenshot(path=output_dir / "stats.png", full_page=True)
    page.context.close()


def test_claims_and_the_blind_double_coding_sample_across_ras(
    browser, start_console, results_db, object_store, opus_bytes, ras, lead, output_dir
):
    items = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem(f"c{n}.mp3") for n in range(4)])
    ids = sorted(item.item_id for item in items.values())
    sampled, single = ids[:2], ids[2:]
    # The items' random draws set so that the double-coding sample is two of the four.
    results_db.transaction(
        lambda cur: cur.execute(
            "UPDATE classifications SET double_coding_bucket = CASE WHEN id = ANY(%s) THEN 0 ELSE 99 END", (sampled,)
        )
    )
    server = start_console(double_coding_percent=50)
    alice, bob, carol = (signed_in_page(browser, server, name) for name in ("alice", "bob", "carol"))

    # An item alice has open is not handed to bob, in his queue or by its address.
    alice.goto(f"{server.url}/items/{single[0]}")
    assert single[0] in queue_item_ids(bob, server)  # opening it claimed nothing
    open_claimed(alice, server, single[0])
    assert single[0] not in queue_item_ids(bob, server)
    response = bob.goto(f"{server.url}/items/{single[0]}")
    assert response.status == 409 and "Item taken" in bob.locator("h1").inner_text()

    # Each sampled item goes to alice and bob, blind to each other, and never to carol.
    for item_id, decision in zip(sampled, ("does_not_violate", "violates")):
        for page in (alice, bob):
            open_claimed(page, server, item_id)
            assert "Your decision" not in page.content()  # nobody else's decision is shown
            assert "alice" not in page.locator("main").inner_text()
            page.fill("#reason", f"reason of {decision}")
            page.click(f"button.decide.{decision}")
            page.wait_for_load_state()
        assert item_id not in queue_item_ids(carol, server)
        assert carol.goto(f"{server.url}/items/{item_id}").status == 409
    assert sorted((r["item_id"], r["username"]) for r in decisions(results_db)) == sorted(
        (i, name) for i in sampled for name in ("alice", "bob")
    )

    # Both coders agreed on items with different answers: kappa = 1 on the lead's stats page.
    carol.goto(f"{server.url}/stats")
    assert carol.locator("#agreement").count() == 0  # agreement is for the lead
    lena = signed_in_page(browser, server, lead)
    lena.goto(f"{server.url}/stats")
    agreement = lena.locator("#agreement tbody tr").first.inner_text()
    assert "harassment_threats" in agreement and "2" in agreement
    assert lena.locator("#agreement .kappa").first.inner_text() == "1.0000"
    lena.screenshot(path=output_dir / "stats-kappa.png", full_page=True)
    for page in (alice, bob, carol, lena):
        page.context.close()


XSS = {
    "name": '<img src=x onerror="window.__xss=1">clip.mp3',
    "archive": "archives/<script>window.__xss=2</script>.tar",
    "transcript": "hello <script>window.__xss=3</script> there <img src=x onerror=window.__xss=4> world",
    "policy": 'x"><img src=x onerror=window.__xss=5>',
}


def test_script_payloads_in_archive_text_stay_inert(
    browser, start_console, results_db, object_store, opus_bytes, ras, lead, output_dir
):
    payload_segments = [
        {"start": 0.0, "end": 3.0, "text": "<script>window.__xss=6</script>"},
        {"start": 3.0, "end": 7.0, "text": '"><svg onload="window.__xss=7"></svg>'},
    ]
    items = seed_flagged(
        results_db,
        object_store,
        opus_bytes,
        [
            FlaggedItem(
                XSS["name"],
                policy=XSS["policy"],
                transcript=XSS["transcript"],
                segments=payload_segments,
                metadata={
                    "title": "<img src=x onerror=alert(1)>",
                    "<script>alert(2)</script>": "key payload",
                    "nested": {"html": "</td><script>window.__xss=8</script>"},
                },
            )
        ],
        archive_key=XSS["archive"],
    )
    item_id = items[XSS["name"]].item_id
    server = start_console()
    page = signed_in_page(browser, server, "alice")
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    def assert_inert():
        assert page.evaluate("window.__xss") is None
        assert dialogs == []
        # Escaped, not merely blocked by the CSP: no element the payloads would have made.
        assert page.locator("img, svg").count() == 0
        assert page.evaluate("Array.from(document.scripts).map(s => s.getAttribute('src'))") == ["/static/review.js"]

    page.goto(f"{server.url}/queue")
    assert XSS["name"] in page.locator("table.queue").inner_text()  # shown as text
    assert_inert()
    page.goto(f"{server.url}/items/{item_id}")
    page.keyboard.press("t")
    text = page.locator("main").inner_text()
    assert "<script>window.__xss=6</script>" in text and XSS["archive"] in text
    assert "<img src=x onerror=alert(1)>" in page.locator(".metadata").inner_text()
    page.click(".segment[data-start='3.0']")
    assert_inert()
    page.screenshot(path=output_dir / "item-with-payloads.png", full_page=True)
    page.goto(f"{server.url}/search?q=hello")
    results = page.locator(".results").inner_text()
    # ts_headline drops tag-like words from snippets; the rest, and the file name, are text.
    assert "hello window.__xss=3 there" in results and XSS["name"] in results
    assert page.locator(".results mark").first.inner_text() == "hello"
    assert_inert()
    page.goto(f"{server.url}/stats")
    assert_inert()
    open_claimed(page, server, item_id)  # decided, the payloads reach the lead's figures
    page.fill("#reason", "<img src=x onerror=window.__xss=9>")
    page.click("button.decide.violates")
    page.wait_for_load_state()
    page.context.close()
    page = signed_in_page(browser, server, lead)
    dialogs.clear()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in ("/stats", "/calibration"):
        page.goto(f"{server.url}{path}")
        assert XSS["policy"] in page.locator("main").inner_text()
        assert page.evaluate("window.__xss") is None and dialogs == []
        assert page.locator("img").count() == 0
        assert page.evaluate("Array.from(document.scripts).map(s => s.getAttribute('src'))") == ["/static/review.js"]
    page.context.close()
