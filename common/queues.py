"""The Redis job queues the app fills (`sdxl_queue`, `wan_queue`): key names, the client, how an entry
is read, and the operator's overview. Workers consume (workers/runtime/queue_intake.py); the
orchestrator only reads (GET /queues, `python -m orchestrator.queue_cli status`).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.jobs import TERMINAL
from configuration.settings import Settings

# A job id names a journal file and storage paths: the same rule as the HTTP API's `id`.
SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class QueueKeys:
    """Every Redis key one queue uses, named after the queue (one place for the intake and readers)."""
    queue: str

    @property
    def dead(self) -> str:
        return f"{self.queue}:dead"

    @property
    def consumers(self) -> str:
        return f"{self.queue}:consumers"

    @property
    def deliveries(self) -> str:
        return f"{self.queue}:deliveries"

    def processing(self, consumer: str) -> str:
        return f"{self.queue}:processing:{consumer}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.queue}:consumer:{consumer}"


def queue_name(worker: str, settings: Settings) -> str | None:
    """The Redis list this worker consumes, or None (no REDIS_URL, or a worker that takes no queued jobs)."""
    if not settings.redis_url:
        return None
    return {"sdxl": settings.sdxl_queue, "wan": settings.wan_queue}.get(worker)


def consumer_id(worker: str, settings: Settings) -> str:
    """Stable across restarts of this worker with this job journal, so a restarted process resumes the
    entries it held; distinct for every journal (every pod, every worker)."""
    prefix = settings.queue_consumer_id or settings.runpod_pod_id or socket.gethostname()
    journal = str(settings.effective_state_dir.resolve() / worker)
    return f"{prefix}-{worker}-{hashlib.sha256(journal.encode()).hexdigest()[:8]}"


def connect(url: str, block_s: float = 0.0) -> redis.Redis:
    """A client for `redis://` or `rediss://` (TLS) URLs, password in the URL. No silent retries inside
    the client: the intake's own loop reconnects and reconciles, so a lost reply is never retried blind."""
    return redis.Redis.from_url(url, socket_timeout=block_s + 10.0, socket_connect_timeout=5.0,
                                health_check_interval=30, retry=Retry(NoBackoff(), 0))


@dataclass(frozen=True)
class Entry:
    """A usable queue entry: a JSON object with a job id that can name files."""
    payload: dict
    job_id: str


def parse_entry(raw: bytes | str) -> Entry | str:
    """The entry, or the reason it goes to the dead-letter list."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not valid JSON: {str(exc)[:200]}"
    if not isinstance(payload, dict):
        return f"not a JSON object (a {type(payload).__name__})"
    job_id = payload.get("id") or payload.get("job_id")
    if not job_id:
        return "no job id (`id` or `job_id`)"
    if not isinstance(job_id, str) or not SAFE_JOB_ID.match(job_id):
        return "job id is not a string of letters, digits, `_`, `-`, `.` (1-128 characters)"
    return Entry(payload, job_id)


def queue_overview(client: redis.Redis, queue: str) -> dict:
    """Depth, dead letters, consumers (alive or not) and what each holds: for operators (/queues, CLI)."""
    keys = QueueKeys(queue)
    consumers = []
    for member in sorted(client.smembers(keys.consumers)):
        consumer = member.decode() if isinstance(member, bytes) else member
        heartbeat = client.get(keys.heartbeat(consumer))
        held = client.lrange(keys.processing(consumer), 0, -1)
        in_flight = []
        for raw in reversed(held):
            entry = parse_entry(raw)
            in_flight.append(entry.job_id if isinstance(entry, Entry) else f"<unusable entry: {entry}>")
        consumers.append({"consumer_id": consumer, "alive": heartbeat is not None,
                          "info": json.loads(heartbeat) if heartbeat else None, "in_flight": in_flight})
    return {"queue": queue, "depth": client.llen(queue), "dead_letters": client.llen(keys.dead),
            "consumers": consumers}


__all__ = ["SAFE_JOB_ID", "TERMINAL", "Entry", "QueueKeys", "connect", "consumer_id", "parse_entry", "queue_name",
           "queue_overview"]
