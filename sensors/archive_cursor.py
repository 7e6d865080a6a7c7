"""The archive sensor's cursor: what has been seen, kept small however big the bucket gets.

S3 lists keys in name order, not by time, so every tick lists the prefix; the cursor only has
to say which (key, ETag) pairs were already requested. It keeps a LastModified watermark and
short hashes of the objects modified within a look-back window before it. The window covers
LastModified's 1-second resolution and multipart uploads, whose LastModified is when the
upload *started* and which become visible later. Its size depends on how many archives
arrive within the window, not on how many the bucket holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def object_fingerprint(key: str, etag: str) -> str:
    # 12 hex digits: a collision inside one look-back window is vanishingly unlikely.
    return hashlib.sha1(f"{key}\0{etag}".encode("utf-8", "surrogateescape")).hexdigest()[:12]


@dataclass
class ArchiveCursor:
    watermark: datetime = _EPOCH
    recent: dict[str, str] = field(default_factory=dict)  # fingerprint -> LastModified ISO

    @classmethod
    def parse(cls, raw: str | None) -> "ArchiveCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(watermark=datetime.fromisoformat(data["watermark"]), recent=dict(data["recent"]))

    def serialize(self) -> str:
        return json.dumps({"watermark": self.watermark.isoformat(), "recent": self.recent}, sort_keys=True)

    def is_candidate(self, last_modified: datetime, lookback: timedelta) -> bool:
        return last_modified >= self.watermark - lookback

    def has_seen(self, key: str, etag: str) -> bool:
        return object_fingerprint(key, etag) in self.recent

    def advance(self, seen: list[tuple[str, str, datetime]], lookback: timedelta) -> "ArchiveCursor":
        """The cursor after a tick that saw `seen` (key, etag, last_modified) candidates."""
        watermark = max([self.watermark] + [lm for _, _, lm in seen])
        horizon = watermark - lookback
        recent = {fp: iso for fp, iso in self.recent.items() if datetime.fromisoformat(iso) >= horizon}
        for key, etag, last_modified in seen:
            if last_modified >= horizon:
                recent[object_fingerprint(key, etag)] = last_modified.isoformat()
        return ArchiveCursor(watermark=watermark, recent=recent)
