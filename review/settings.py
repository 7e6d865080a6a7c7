"""What the console reads from the environment (`.env.example` lists every variable)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DECISIONS = ("violates", "does_not_violate", "unsure")


class SettingsError(RuntimeError):
    """A required setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class ReviewSettings:
    database_dsn: str  # a login role that is a member of ra_app, nothing more
    s3_endpoint: str | None
    s3_bucket: str
    s3_access_key: str | None
    s3_secret_key: str | None
    # Secure cookies need HTTPS. Off only for plain-http loopback (tests, the demo).
    secure_cookies: bool = True
    session_hours: float = 8
    claim_minutes: float = 15
    double_coding_percent: int = 10
    reason_required_for: frozenset[str] = field(default_factory=lambda: frozenset({"violates", "unsure"}))
    queue_page_size: int = 100

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> "ReviewSettings":
        env = dict(os.environ if env is None else env)
        dsn = env.get("REVIEW_DATABASE_DSN")
        if not dsn:
            raise SettingsError(
                "REVIEW_DATABASE_DSN is not set: the console connects as its own login role, a member "
                "of ra_app (see deploy/README.md), never as the pipeline's owner"
            )
        reasons = frozenset(x.strip() for x in env.get("REVIEW_REASON_REQUIRED", "violates,unsure").split(",") if x.strip())
        if not reasons <= set(DECISIONS):
            raise SettingsError(f"REVIEW_REASON_REQUIRED: {sorted(reasons - set(DECISIONS))} are not decisions {DECISIONS}")
        percent = int(env.get("REVIEW_DOUBLE_CODING_PERCENT", "10"))
        if not 0 <= percent <= 100:
            raise SettingsError("REVIEW_DOUBLE_CODING_PERCENT must be between 0 and 100")
        return cls(
            database_dsn=dsn,
            s3_endpoint=env.get("S3_ENDPOINT") or None,
            s3_bucket=env.get("S3_BUCKET", "audio-pipeline"),
            # A read-only key for processed/ is enough; the pipeline's key works too.
            s3_access_key=env.get("REVIEW_S3_ACCESS_KEY") or env.get("S3_ACCESS_KEY"),
            s3_secret_key=env.get("REVIEW_S3_SECRET_KEY") or env.get("S3_SECRET_KEY"),
            secure_cookies=env.get("REVIEW_SECURE_COOKIES", "true").lower() not in ("0", "false", "no"),
            session_hours=float(env.get("REVIEW_SESSION_HOURS", "8")),
            claim_minutes=float(env.get("REVIEW_CLAIM_MINUTES", "15")),
            double_coding_percent=percent,
            reason_required_for=reasons,
        )
