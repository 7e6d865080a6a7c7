"""Pure parts of the console, no services: byte ranges, the sign-in limiter, search snippet
markers, settings, and password hashing."""

from __future__ import annotations

import pytest

from review.audio import ByteRange, UnsatisfiableRange, parse_range
from review.pages import _marked_parts
from review.passwords import hash_password, verify_password
from review.settings import ReviewSettings, SettingsError
from review.sign_in_limiter import SignInLimiter


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=100-", ByteRange(100, 999)),
        ("bytes=-10", ByteRange(990, 999)),
        ("bytes=900-5000", ByteRange(900, 999)),  # clipped to the file
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(UnsatisfiableRange):
        parse_range(header, 1000)


def test_limiter_counts_per_account_and_client_and_per_client():
    limiter = SignInLimiter(per_account_client=3, per_client=5, window_s=60)
    for _ in range(3):
        assert limiter.begin("Alice", "10.0.0.1") is not None
    assert limiter.begin("alice", "10.0.0.1") is None  # the pair is capped
    assert limiter.begin("alice", "10.0.0.2") is not None  # not the account: another client still may
    assert limiter.begin("bob", "10.0.0.1") is not None
    assert limiter.begin("carol", "10.0.0.1") is not None
    assert limiter.begin("dave", "10.0.0.1") is None  # the address is capped for every name


def test_a_successful_attempt_does_not_count():
    limiter = SignInLimiter(per_account_client=1, per_client=10, window_s=60)
    attempt = limiter.begin("alice", "x")
    limiter.succeeded(attempt)
    assert limiter.begin("alice", "x") is not None


def test_limiter_forgets_after_the_window_and_stays_bounded():
    limiter = SignInLimiter(per_account_client=1, per_client=10, window_s=0.0)
    limiter.begin("alice", "x")
    assert limiter.begin("alice", "x") is not None
    bounded = SignInLimiter(max_keys=10)
    for n in range(100):
        bounded.begin(f"user{n}", f"10.0.0.{n}")
    assert len(bounded._attempts) <= 10


def test_marked_parts_split_matches_without_markup():
    assert _marked_parts("say \x01hello\x02 to <b>\x01them\x02</b>") == [
        ("say ", False),
        ("hello", True),
        (" to <b>", False),
        ("them", True),
        ("</b>", False),
    ]


def test_settings_need_the_console_login_and_check_values():
    with pytest.raises(SettingsError, match="REVIEW_DATABASE_DSN"):
        ReviewSettings.from_environment({})
    with pytest.raises(SettingsError, match="REVIEW_REASON_REQUIRED"):
        ReviewSettings.from_environment({"REVIEW_DATABASE_DSN": "x", "REVIEW_REASON_REQUIRED": "maybe"})
    settings = ReviewSettings.from_environment(
        {"REVIEW_DATABASE_DSN": "x", "S3_ACCESS_KEY": "pipeline-key", "REVIEW_S3_ACCESS_KEY": "read-only-key"}
    )
    assert settings.secure_cookies and settings.double_coding_percent == 10 and settings.blind
    assert settings.s3_access_key == "read-only-key"
    assert settings.reason_required_for == {"violates", "unsure"}


def test_passwords_are_argon2id_and_verified():
    encoded = hash_password("a long enough password")
    assert encoded.startswith("$argon2id$")
    assert verify_password(encoded, "a long enough password")
    assert not verify_password(encoded, "a long enough passworD")
    assert not verify_password(None, "anything at all")  # unknown user: same work, no
    with pytest.raises(ValueError):
        hash_password("short")
