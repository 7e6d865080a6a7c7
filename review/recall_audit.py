"""The recall audit share: how much of what the classifier did not flag goes to RAs anyway.

Each classified, not flagged item is in the sample when its own random draw falls below the
share (ra_review_items, migration 021): a random sample of every policy and day, independent of
the score and of anything an RA can read, that RAs code blind beside the flagged items. Their
decisions estimate what the classifier misses (views ra_recall and ra_calibration). Set by the operator
(`audio-pipeline review-audit --percent P`, run as the pipeline's owner role); raising it adds
items at once, lowering it takes undecided ones out, and decisions already made stay valid.
"""

from __future__ import annotations

from sql.named_queries import queries

Q = queries("review_calibration")


def audit_share(results_db) -> float:
    def read(cur) -> float:
        cur.execute(Q.audit_share)
        return float(cur.fetchone()["share_percent"])

    return results_db.transaction(read, what="read the recall audit share")


def set_audit_share(results_db, percent: float) -> None:
    if not 0 <= percent <= 100:
        raise ValueError("the recall audit share is a percentage from 0 to 100")
    results_db.transaction(
        lambda cur: cur.execute(Q.set_audit_share, {"percent": round(percent, 2)}), what="set the recall audit share"
    )
