"""The archive sensor's cursor: a LastModified watermark, a few dozen bytes however big the
bucket gets or however many archives arrive at once.

S3 lists keys in name order, not by time, so every tick lists the prefix. Objects modified
within a look-back window before the watermark are candidates; whether a candidate's version
was already requested is answered by the archive registry (`archives.requested_etag`), not by
the cursor, so a bootstrap over 100,000 archives does not grow it. The window covers
LastModified's 1-second resolution and multipart uploads, whose LastModified is when the
upload *started* and which become visible later.

A tick that finds more new archives than it may request leaves a backlog: the watermark then
stops at the oldest archive not yet requested, so the next tick still sees it as a candidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ArchiveCursor:
    watermark: datetime = _EPOCH
    backlog: int = 0  # archives found but left for later ticks (shown to the operator)

    @classmethod
    def parse(cls, raw: str | None) -> ArchiveCursor:
        if not raw:
            return cls()
        data = json.loads(raw)  # cursors of the earlier format also carry "recent": not needed now
        return cls(watermark=datetime.fromisoformat(data["watermark"]), backlog=int(data.get("backlog", 0)))

    def serialize(self) -> str:
        return json.dumps({"watermark": self.watermark.isoformat(), "backlog": self.backlog}, sort_keys=True)

    def is_candidate(self, last_modified: datetime, lookback: timedelta) -> bool:
        return last_modified >= self.watermark - lookback

    def advance(self, candidates: list[datetime], left_for_later: list[datetime]) -> ArchiveCursor:
        """The cursor after a tick that listed `candidates` (their LastModified) and left
        `left_for_later` of them unrequested."""
        if left_for_later:
            return ArchiveCursor(max(self.watermark, min(left_for_later)), backlog=len(left_for_later))
        return ArchiveCursor(max([self.watermark, *candidates]), backlog=0)
