"""The Redis job queues the app fills (`sdxl_queue`, `wan_queue`): key names, the client, how an entry
is read, and the operator's overview. Workers consume (workers/runtime/queue_intake.py); the
orchestrator only reads (GET /queues, `python -m orchestrator.queue_cli status`).

An entry is read as an HTTP body is (common/strict_json.py: UTF-8, no NaN/Infinity, bounded numbers and
depth; the MAX_BODY_MB cap) and its job id must match the API's `id` pattern; whatever else it holds is
data, so the overview shows what it finds (an unreadable heartbeat, an oversized or broken entry) as such
and never fails on it.
"""
from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common import strict_json
from common.jobs import TERMINAL
from common.redact import redacted_url
from configuration.requests.common import SAFE_ID
from configuration.settings import Settings

# A job id names a journal file and storage paths: the HTTP API's `id` pattern (ends at the end of input, not
# before a trailing newline as `$` would).
SAFE_JOB_ID = re.compile(SAFE_ID["pattern"])

_T = TypeVar("_T")
OVERVIEW_HELD_MAX = 100           # entries of one processing list the overview reads
OVERVIEW_TEXT_MAX = 200           # characters of an unreadable heartbeat or an odd consumer name shown
HEARTBEAT_MAX_BYTES = 4096        # a consumer's heartbeat (worker, pid, host, since) is far smaller


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
    the client: the intake's own loop reconnects and reconciles, so a lost reply is never retried blind.
    A URL the client cannot parse is a ValueError that does not repeat the URL (the parser's own message
    can quote part of a password: `redis://:pa#ss@host` has the "port" `pa`); so is one with a `#`, which
    the client reads as the end of the address (`redis://u:12#x@host` would connect to host `u`, port 12,
    and every connection error would then quote that part of the password)."""
    if "#" in url:
        raise ValueError(f"REDIS_URL ({redacted_url(url)}) contains `#`: percent-encode it (%23) in the password")
    try:
        return redis.Redis.from_url(url, socket_timeout=block_s + 10.0, socket_connect_timeout=5.0,
                                    health_check_interval=30, retry=Retry(NoBackoff(), 0))
    except ValueError:
        raise ValueError(f"REDIS_URL ({redacted_url(url)}) cannot be parsed; percent-encode `#`, `/`, `?` and `@` "
                         "in the password") from None


def redis_state(exc: Exception) -> str:
    """What a Redis error means for an operator or a probe, without its text: `password_refused` (Redis
    answered but refused the credentials) or `unreachable` (no answer, TLS failure, timeout)."""
    refused = isinstance(exc, redis.AuthenticationError) or any(
        word in str(exc) for word in ("WRONGPASS", "NOAUTH", "invalid password"))
    return "password_refused" if refused else "unreachable"


@dataclass(frozen=True)
class Entry:
    """A usable queue entry: a JSON object with a job id that can name files."""
    payload: dict
    job_id: str


def parse_entry(raw: bytes | str, max_bytes: int) -> Entry | str:
    """The entry, or the reason it goes to the dead-letter list. Never raises: a hostile entry (any
    depth, size or encoding) is a reason like any other."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return f"the entry is {size} bytes; at most {max_bytes} are accepted (MAX_BODY_MB)"
    try:
        payload = strict_json.loads(raw)
    except strict_json.InvalidJson as exc:
        return f"not valid JSON: {exc.reason[:200]}"
    except Exception as exc:  # strict_json turns every parser failure into InvalidJson; this is the last net
        return f"not valid JSON: {type(exc).__name__}"
    if not isinstance(payload, dict):
        return f"not a JSON object (a {type(payload).__name__})"
    job_id = payload.get("id") or payload.get("job_id")
    if not job_id:
        return "no job id (`id` or `job_id`)"
    if not isinstance(job_id, str) or not SAFE_JOB_ID.match(job_id):
        return "job id is not a string of letters, digits, `_`, `-`, `.` (1-128 characters)"
    return Entry(payload, job_id)


def queue_overview(client: redis.Redis, queue: str, max_entry_bytes: int) -> dict:
    """Depth, dead letters, consumers (alive or not) and what each holds: for operators (/queues, CLI).
    What is in Redis is shown as found: a key of the wrong type is an `error` on that queue, a heartbeat
    that is not a JSON object is `{"unreadable": ...}`, an entry that is not usable is named with the reason.
    Only connection failures (redis.ConnectionError, TimeoutError) raise."""
    keys = QueueKeys(queue)
    overview: dict[str, Any] = {"queue": queue, "depth": None, "dead_letters": None, "consumers": [], "errors": []}

    def read(what: str, command: Callable[..., _T], *args: object) -> _T | None:
        try:
            return command(*args)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.RedisError as exc:  # WRONGTYPE and the like: the key holds something else
            overview["errors"].append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
            return None

    overview["depth"] = read(queue, client.llen, queue)
    overview["dead_letters"] = read(keys.dead, client.llen, keys.dead)
    for member in sorted(read(keys.consumers, client.smembers, keys.consumers) or ()):
        consumer = _text(member)
        heartbeat = read(keys.heartbeat(consumer), client.get, keys.heartbeat(consumer))
        held = read(keys.processing(consumer), client.lrange, keys.processing(consumer), -OVERVIEW_HELD_MAX, -1)
        held_count = read(keys.processing(consumer), client.llen, keys.processing(consumer))
        in_flight = []
        for raw in reversed(held or []):
            entry = parse_entry(raw, max_entry_bytes)
            in_flight.append(entry.job_id if isinstance(entry, Entry) else f"<unusable entry: {entry}>")
        if held_count and held_count > len(in_flight):
            in_flight.append(f"<{held_count - len(in_flight)} more not shown>")
        overview["consumers"].append({"consumer_id": _shown(consumer), "alive": heartbeat is not None,
                                      "info": _heartbeat_info(heartbeat), "held": held_count or 0,
                                      "in_flight": in_flight})
    return overview


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _shown(text: str) -> str:
    return text if len(text) <= OVERVIEW_TEXT_MAX else f"{text[:OVERVIEW_TEXT_MAX]}...<{len(text)} characters>"


def _heartbeat_info(heartbeat: bytes | str | None) -> dict | None:
    """What a consumer says about itself (worker, pid, host, since), or what was found instead."""
    if heartbeat is None:
        return None
    info = None
    if len(heartbeat) <= HEARTBEAT_MAX_BYTES:
        try:
            info = strict_json.loads(heartbeat)
        except ValueError:
            pass
    if isinstance(info, dict):
        return info
    text = _text(heartbeat)
    return {"unreadable": text[:OVERVIEW_TEXT_MAX], "truncated": len(text) > OVERVIEW_TEXT_MAX}


__all__ = ["SAFE_JOB_ID", "TERMINAL", "Entry", "QueueKeys", "connect", "consumer_id", "parse_entry", "queue_name",
           "queue_overview", "redis_state"]
