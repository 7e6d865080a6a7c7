"""Slows, then refuses, repeated failed sign-ins: per user name (password guessing against one
account) and per client address (spraying many accounts).

In memory, on purpose: the console runs as one process (deploy/audio-pipeline-review.service),
and a restart forgetting the counts costs an attacker a restart they cannot cause. Every
failure also waits `delay_s` before answering, which alone caps guessing at a few per second.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class SignInLimiter:
    def __init__(self, per_user: int = 5, per_client: int = 20, window_s: float = 900, delay_s: float = 1.0):
        self.per_user, self.per_client, self.window_s, self.delay_s = per_user, per_client, window_s, delay_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, username: str, client: str) -> bool:
        """True while either the name or the address has too many recent failures."""
        with self._lock:
            return (
                self._recent(f"user:{username.lower()}") >= self.per_user
                or self._recent(f"client:{client}") >= self.per_client
            )

    def record_failure(self, username: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures[f"user:{username.lower()}"].append(now)
            self._failures[f"client:{client}"].append(now)

    def _recent(self, key: str) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        cutoff = time.monotonic() - self.window_s
        while times and times[0] < cutoff:
            times.popleft()
        return len(times)
