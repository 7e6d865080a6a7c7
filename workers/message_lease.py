"""Keep the broker messages of the steps a worker is running invisible while it lives.

With Redis, kombu parks a message a worker has taken but not yet acknowledged (late acks)
in the `unacked` hash, with the time it was taken in the `unacked_index` sorted set. Any
live worker puts such a message back on its queue once that time is older than the
transport's `visibility_timeout`: that is how a step of a GPU host that died comes back.
Left alone, though, a step that merely runs longer than the timeout would be handed to a
second worker while the first is still on it. So the worker's main process renews the
time of every message it holds, every lease / 4 seconds: a live worker's steps are never
handed out twice, a dead worker's come back one lease after its last renewal.

Runs in the main process (it holds the messages and acknowledges them), in a daemon
thread, so it goes on while the pool process runs a step.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery, signals
from celery.worker import state

log = logging.getLogger(__name__)

KOMBU_UNACKED_INDEX = "unacked_index"  # kombu's default name for the sorted set


class MessageLease:
    def __init__(self, broker_url: str, index_key: str, lease_s: float):
        import redis  # only Redis brokers need (and have) a lease

        self._client = redis.Redis.from_url(broker_url, socket_timeout=10)
        self._index_key = index_key
        self.renew_every_s = lease_s / 4
        self._stop = threading.Event()

    def renew(self, delivery_tags: list[str]) -> int:
        """Stamp the held messages with now; XX: never re-add one that was acknowledged."""
        if not delivery_tags:
            return 0
        now = time.time()
        changed = self._client.zadd(self._index_key, dict.fromkeys(delivery_tags, now), xx=True, ch=True)
        return int(changed or 0)

    def run(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self.renew(_held_delivery_tags())
            except Exception:  # a broker hiccup: the next renewal tries again, well within the lease
                log.warning("could not renew the lease of held messages", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


def _held_delivery_tags() -> list[str]:
    """Delivery tags of the requests this worker has taken and not finished."""
    for _ in range(3):
        try:
            requests = list(state.reserved_requests)
            break
        except RuntimeError:  # the set changed while we copied it
            continue
    else:
        return []
    return [r.message.delivery_tag for r in requests if r.message is not None]


def install(app: Celery) -> None:
    """Start the lease when a worker of `app` is ready; stop it when the worker shuts down."""
    leases: list[MessageLease] = []

    @signals.worker_ready.connect(weak=False)
    def start_lease(sender=None, **_):
        conf = app.conf
        if not str(conf.broker_url or "").startswith(("redis://", "rediss://")):
            return  # AMQP brokers notice a lost consumer's connection themselves
        options = conf.broker_transport_options or {}
        lease = MessageLease(
            conf.broker_url,
            options.get("unacked_index_key", KOMBU_UNACKED_INDEX),
            float(options.get("visibility_timeout", 3600)),
        )
        leases.append(lease)
        threading.Thread(target=lease.run, name="message-lease", daemon=True).start()
        log.info("renewing held messages every %.0f s", lease.renew_every_s)

    @signals.worker_shutdown.connect(weak=False)
    def stop_lease(**_):
        for lease in leases:
            lease.stop()
