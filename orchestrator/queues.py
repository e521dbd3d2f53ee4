"""The pod's view of the app's Redis queues (GET /queues, `python -m orchestrator.queue_cli status`):
depth and dead letters of each queue a worker of this pod consumes, every consumer registered on it
(this pod's and other pods'), whether its heartbeat is alive, and the jobs each holds."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from common.queues import connect, consumer_id, queue_name, queue_overview
from configuration.settings import Settings


def redacted(url: str) -> str:
    """The Redis URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class QueueStatus:
    def __init__(self, settings: Settings, workers: list[str]):
        self.settings = settings
        self.queues = {w: q for w in workers if (q := queue_name(w, settings))}
        self.ours = {consumer_id(w, settings): w for w in self.queues}
        self._client = connect(settings.redis_url) if self.queues else None

    def status(self) -> dict[str, Any]:
        if self._client is None:
            return {"redis": None, "queues": [],
                    "message": "REDIS_URL is not set: the workers take jobs over HTTP only"}
        redis_info: dict[str, Any] = {"url": redacted(self.settings.redis_url), "connected": True, "error": None}
        queues = []
        try:
            for worker, queue in self.queues.items():
                overview = queue_overview(self._client, queue)
                for consumer in overview["consumers"]:
                    consumer["this_pod"] = consumer["consumer_id"] in self.ours
                queues.append({"worker": worker, **overview})
        except redis.RedisError as exc:
            redis_info.update(connected=False, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return {"redis": redis_info, "queues": queues}
