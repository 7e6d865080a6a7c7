"""What the console reads from the environment (`.env.example` lists every variable)."""

from __future__ import annotations

import ipaddress
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
    # Blind review: no score and no flag on any page an RA codes from, so recall-audit items
    # (not flagged) look exactly like flagged ones and the score cannot anchor a decision.
    blind: bool = True
    # Worker threads run every handler that touches the database, S3 or argon2. A request holds
    # at most one database connection at a time, and only inside a worker thread, so more
    # connections than threads could never be used; fewer leave threads for audio streaming and
    # sign-ins. A thread that finds no free connection waits db_wait_s, then the request gets
    # 503 with Retry-After instead of piling up behind a stuck database.
    worker_threads: int = 16
    db_connections: int = 8
    db_wait_s: float = 3.0
    # argon2id verifications at once (each takes ~50 ms of CPU and 64 MiB): a burst of sign-ins
    # queues here instead of exhausting memory.
    argon2_concurrency: int = 2
    # Addresses of reverse proxies whose X-Forwarded-For is believed (the sign-in limiter keys
    # on the client address). Empty: the peer address is the client, whatever the header says.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # The precision the calibration page looks for the lowest threshold to reach.
    target_precision: float = 0.9

    def __post_init__(self) -> None:
        # Given as text (tests, callers), kept as networks.
        object.__setattr__(self, "trusted_proxies", _networks(",".join(map(str, self.trusted_proxies))))
        if not 1 <= self.db_connections <= self.worker_threads:
            raise SettingsError(
                f"REVIEW_DB_CONNECTIONS ({self.db_connections}) must be between 1 and REVIEW_WORKER_THREADS "
                f"({self.worker_threads}): a request uses one connection at a time, inside a worker thread"
            )
        if not 0 < self.target_precision < 1:
            raise SettingsError("REVIEW_TARGET_PRECISION must be between 0 and 1 (e.g. 0.9)")

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> ReviewSettings:
        env = dict(os.environ if env is None else env)
        dsn = env.get("REVIEW_DATABASE_DSN")
        if not dsn:
            raise SettingsError(
                "REVIEW_DATABASE_DSN is not set: the console connects as its own login role, a member "
                "of ra_app (see deploy/README.md), never as the pipeline's owner"
            )
        reasons = frozenset(
            x.strip() for x in env.get("REVIEW_REASON_REQUIRED", "violates,unsure").split(",") if x.strip()
        )
        if not reasons <= set(DECISIONS):
            raise SettingsError(
                f"REVIEW_REASON_REQUIRED: {sorted(reasons - set(DECISIONS))} are not decisions {DECISIONS}"
            )
        percent = _number(env, "REVIEW_DOUBLE_CODING_PERCENT", "10", int)
        if not 0 <= percent <= 100:
            raise SettingsError("REVIEW_DOUBLE_CODING_PERCENT must be between 0 and 100")
        settings = cls(
            database_dsn=dsn,
            s3_endpoint=env.get("S3_ENDPOINT") or None,
            s3_bucket=env.get("S3_BUCKET", "audio-pipeline"),
            # A read-only key for processed/; in local mode the pipeline's key works too.
            s3_access_key=env.get("REVIEW_S3_ACCESS_KEY") or env.get("S3_ACCESS_KEY"),
            s3_secret_key=env.get("REVIEW_S3_SECRET_KEY") or env.get("S3_SECRET_KEY"),
            secure_cookies=_flag(env, "REVIEW_SECURE_COOKIES", True),
            session_hours=_number(env, "REVIEW_SESSION_HOURS", "8", float),
            claim_minutes=_number(env, "REVIEW_CLAIM_MINUTES", "15", float),
            double_coding_percent=percent,
            reason_required_for=reasons,
            blind=_flag(env, "REVIEW_BLIND", True),
            worker_threads=_number(env, "REVIEW_WORKER_THREADS", "16", int),
            db_connections=_number(env, "REVIEW_DB_CONNECTIONS", "8", int),
            db_wait_s=_number(env, "REVIEW_DB_WAIT_S", "3", float),
            argon2_concurrency=_number(env, "REVIEW_ARGON2_CONCURRENCY", "2", int),
            trusted_proxies=_networks(env.get("REVIEW_TRUSTED_PROXIES", "")),
            target_precision=_number(env, "REVIEW_TARGET_PRECISION", "0.9", float),
        )
        if env.get("AUDIO_PIPELINE_ENV", "local") == "production":
            _check_production(settings, env)
        return settings


def _check_production(settings: ReviewSettings, env: dict[str, str]) -> None:
    """Production refuses what is only fine on a developer's loopback: cookies without Secure
    (e.g. the demo's settings file copied over), and the pipeline's own S3 key, which can write
    and delete every object; the console needs a key that only reads processed/."""
    if not settings.secure_cookies:
        raise SettingsError("AUDIO_PIPELINE_ENV=production needs REVIEW_SECURE_COOKIES=true (serve it behind TLS)")
    review_key = env.get("REVIEW_S3_ACCESS_KEY")
    if not review_key or not env.get("REVIEW_S3_SECRET_KEY"):
        raise SettingsError(
            "AUDIO_PIPELINE_ENV=production needs REVIEW_S3_ACCESS_KEY and REVIEW_S3_SECRET_KEY: a key that "
            "only reads processed/, not the pipeline's S3 key"
        )
    if review_key == env.get("S3_ACCESS_KEY"):
        raise SettingsError("REVIEW_S3_ACCESS_KEY is the pipeline's S3_ACCESS_KEY; give the console a read-only key")


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _number(env: dict[str, str], name: str, default: str, kind: type):
    try:
        value = kind(env.get(name) or default)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {env.get(name)!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative")
    return value


def _networks(value: str) -> tuple:
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
    except ValueError as error:
        raise SettingsError(f"REVIEW_TRUSTED_PROXIES: {error}") from None
