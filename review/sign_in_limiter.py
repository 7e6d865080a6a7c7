"""Caps password guessing: per (user name, client address) and per client address.

An attempt is counted when it starts, under a lock and before the password hash is checked,
and taken back only if it succeeds: forty wrong passwords sent at once get five argon2 checks,
not forty. The cap is per (account, client), not per account: a stranger's failures lock out
the stranger, never the RA signing in from their own address. The per-client cap stops one
address spraying many accounts. Guessing from many addresses is slowed by the delay on every
failure and by the argon2 limit (settings.argon2_concurrency), not by locking the account.

In memory, on purpose: the console runs as one process (deploy/audio-pipeline-review.service),
and a restart forgetting the counts costs an attacker a restart they cannot cause. The table is
bounded: expired entries are dropped, and past `max_keys` the oldest keys go first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    keys: tuple[str, str]
    started: float


class SignInLimiter:
    def __init__(
        self,
        per_account_client: int = 5,
        per_client: int = 20,
        window_s: float = 900,
        delay_s: float = 1.0,
        max_keys: int = 100_000,
    ):
        self.per_account_client, self.per_client = per_account_client, per_client
        self.window_s, self.delay_s, self.max_keys = window_s, delay_s, max_keys
        self._attempts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def begin(self, username: str, client: str) -> Attempt | None:
        """Count an attempt now; None (not counted) while the pair or the client is at its cap."""
        pair, by_client = f"pair:{username.lower()}|{client}", f"client:{client}"
        now = time.monotonic()
        with self._lock:
            if self._recent(pair, now) >= self.per_account_client or self._recent(by_client, now) >= self.per_client:
                return None
            if len(self._attempts) + 2 > self.max_keys:
                self._prune(now, room=2)
            for key in (pair, by_client):
                self._attempts.setdefault(key, deque()).append(now)
        return Attempt((pair, by_client), now)

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: this attempt no longer counts against anyone."""
        with self._lock:
            for key in attempt.keys:
                times = self._attempts.get(key)
                if times is not None:
                    try:
                        times.remove(attempt.started)
                    except ValueError:
                        pass
                    if not times:
                        del self._attempts[key]

    def _recent(self, key: str, now: float) -> int:
        times = self._attempts.get(key)
        if not times:
            return 0
        while times and times[0] < now - self.window_s:
            times.popleft()
        if not times:
            del self._attempts[key]
            return 0
        return len(times)

    def _prune(self, now: float, room: int) -> None:
        for key in list(self._attempts):
            self._recent(key, now)
        for key in list(self._attempts)[: max(0, len(self._attempts) + room - self.max_keys)]:
            del self._attempts[key]
