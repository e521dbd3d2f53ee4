"""The pod's view of the app's Redis queues (GET /queues, `python -m orchestrator.queue_cli status`, the ops
page): depth and dead letters of each queue a worker of this pod consumes, every consumer registered on it
(this pod's and other pods'), whether its heartbeat is alive, and the jobs each holds.

It never fails on what it finds: Redis unreachable or refusing the password is `redis.state` with the error
(every queue is still listed, its numbers unknown); a key of the wrong type, an unreadable heartbeat or a
broken entry is shown as such (common/queues.py). The URL is shown without credentials (common/redact.py).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import redis

from common.queues import connect, consumer_id, queue_name, queue_overview, redis_state
from common.redact import redacted_url
from configuration.settings import Settings

PROBE_MAX_AGE_S = 2.0


class QueueStatus:
    def __init__(self, settings: Settings, workers: list[str]):
        self.settings = settings
        self.queues = {w: q for w in workers if (q := queue_name(w, settings))}
        self.ours = {consumer_id(w, settings): w for w in self.queues}
        self._client = connect(settings.redis_url) if self.queues else None
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, str] = (float("-inf"), "unreachable")

    def probe_redis(self, max_age_s: float = PROBE_MAX_AGE_S) -> str | None:
        """What the orchestrator's public /ready says about Redis: `connected`, `unreachable` or
        `password_refused` (None without REDIS_URL). One PING at most every `max_age_s`, however often
        /ready is asked (it needs no key)."""
        if self._client is None:
            return None
        with self._probe_lock:
            at, state = self._probed
            if time.monotonic() - at < max_age_s:
                return state
            try:
                self._client.ping()
                state = "connected"
            except redis.RedisError as exc:
                state = redis_state(exc)
            self._probed = (time.monotonic(), state)
            return state

    def status(self) -> dict[str, Any]:
        if self._client is None:
            return {"redis": None, "queues": [],
                    "message": "REDIS_URL is not set: the workers take jobs over HTTP only"}
        redis_info: dict[str, Any] = {"url": redacted_url(self.settings.redis_url), "connected": True,
                                      "state": "connected", "error": None}
        queues = []
        for worker, queue in self.queues.items():
            try:
                if not redis_info["connected"]:
                    raise _Skipped()
                overview = queue_overview(self._client, queue, self.settings.max_body_bytes)
                for consumer in overview["consumers"]:
                    consumer["this_pod"] = consumer["consumer_id"] in self.ours
            except _Skipped:
                overview = _unknown(queue)
            except redis.RedisError as exc:
                redis_info.update(connected=False, state=redis_state(exc),
                                  error=f"{type(exc).__name__}: {str(exc)[:200]}")
                overview = _unknown(queue)
            except Exception as exc:  # a view must answer: what could not be read is said, not raised
                overview = _unknown(queue, f"could not be read: {type(exc).__name__}")
            queues.append({"worker": worker, **overview})
        return {"redis": redis_info, "queues": queues}


class _Skipped(Exception):
    """Redis already failed for an earlier queue of this answer: do not wait for it again."""


def _unknown(queue: str, error: str | None = None) -> dict[str, Any]:
    return {"queue": queue, "depth": None, "dead_letters": None, "consumers": [], "errors": [error] if error else []}
