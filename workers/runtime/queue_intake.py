"""Jobs from the app's Redis lists (`sdxl_queue`, `wan_queue`): at-least-once, never lost, FIFO,
shared by every pod on the same Redis.

The app pushes each job with RPUSH, so the oldest entry is on the left. A consumer:
- takes an entry only when its runtime would start it now (the executor idle; a job still fetching its
  reference images does not count, up to a bound), so an idle pod gets the next job rather than a busy
  one hoarding it, and a slow reference host holds only its own job;
- takes it with one atomic `BLMOVE <queue> <queue>:processing:<consumer> LEFT LEFT`, so an entry is
  always in the queue or in exactly one consumer's processing list, never only in a process's memory;
- removes it from its processing list (LREM) only once the job's terminal state is in the job journal;
- keeps a heartbeat key with a TTL; any consumer that finds a registered consumer without a heartbeat
  (its pod was killed) moves that consumer's entries back to the head of the queue, on start and
  periodically;
- acknowledges without running an entry whose job id its journal already shows finished (a
  redelivery), and fails a job delivered more than `max_deliveries` times without finishing (a job
  that kills every worker that takes it must not circle forever);
- moves an entry that is not a JSON object with a usable job id to `<queue>:dead` with the reason: read
  as an HTTP body is (strict JSON, the body size cap, the API's id pattern); so is an entry whose job id
  is held here by another job (another user's, or one submitted over HTTP or through the orchestrator),
  and one whose handling raised anything at all: no entry is handled twice for the same cause;
- survives Redis being down: it reconnects with backoff, reports the outage in `status()` within
  LIVENESS_S (the heartbeat thread notices it too, also while a long job keeps the intake loop quiet),
  and after every reconnect reconciles its processing list with what it tracks (a reply lost with the
  connection cannot strand an entry).

What a job is, how it is validated and run, is the `JobSink`'s business (the worker's runtime); this
module only moves queue entries and knows nothing of HTTP or engines.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis

from common import errors
from common.http import now_iso
from common.metrics import process_metrics
from common.queues import TERMINAL, Entry, QueueKeys, parse_entry, redis_state
from common.retry import backoff_delay

log = logging.getLogger(__name__)

DEAD_ENTRY_MAX_CHARS = 65536
LIVENESS_S = 2.0      # the heartbeat thread touches Redis at least this often: status() is this fresh


class JobSink(Protocol):
    """What the intake needs from the worker's runtime."""

    def can_take(self) -> bool:
        """True when the runtime would start one more job now (nothing running or waiting for the executor;
        jobs fetching their references do not count, up to the runtime's bound)."""

    def job_status(self, job_id: str) -> str | None:
        """The job's status in the journal, None when this worker has never accepted it."""

    def conflict(self, job_id: str, payload: dict) -> str | None:
        """Why `payload` may not use `job_id` here (another user's job, a job submitted over HTTP or through
        the orchestrator has it), or None: the id is free or names this same queued job (a redelivery)."""

    def submit(self, job_id: str, payload: dict) -> None:
        """Validate and accept the job, or end it `failed` with the reason (a field path for a bad field).
        Either way the journal holds the job when this returns; it never raises for bad input."""

    def reject(self, job_id: str, payload: dict, code: str, message: str) -> None:
        """End the job `failed` without running it (journal and callback), e.g. too many deliveries."""


@dataclass
class _Tracked:
    job_id: str
    raw: bytes | str  # exactly as stored in Redis (LREM matches it byte for byte)


@dataclass
class IntakeCounters:
    taken: int = 0
    acknowledged: int = 0
    redelivered_finished: int = 0
    dead_lettered: int = 0
    reaped: int = 0
    rejected_redeliveries: int = 0
    id_conflicts: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class IntakeState:
    connected: bool = False
    last_error: str | None = None
    disconnected_since: str | None = None
    problem: str = "unreachable"    # while not connected: common.queues.redis_state of the last error
    reconnects: int = 0
    counters: IntakeCounters = field(default_factory=IntakeCounters)


class QueueIntake:
    """One consumer of one queue, on its own thread (plus a heartbeat thread)."""

    def __init__(self, client: redis.Redis, queue: str, consumer_id: str, sink: JobSink, *,
                 info: dict | None = None, heartbeat_ttl_s: float = 30.0, reap_interval_s: float = 15.0,
                 block_s: float = 1.0, max_deliveries: int = 3, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_entry_bytes: int = 10 * 1024 * 1024):
        if heartbeat_ttl_s <= 0 or block_s <= 0:
            raise ValueError("heartbeat_ttl_s and block_s must be positive")
        self.redis = client
        self.keys = QueueKeys(queue)
        self.consumer_id = consumer_id
        self.sink = sink
        self.info = dict(info or {}, host=socket.gethostname(), since=now_iso())
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.reap_interval_s = reap_interval_s
        self.block_s = block_s
        self.max_deliveries = max_deliveries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_entry_bytes = max_entry_bytes
        self.state = IntakeState()
        self._tracked: list[_Tracked] = []  # entries held in the processing list, oldest first
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reconcile = True          # on start and after every reconnect
        self._next_reap = 0.0
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> QueueIntake:
        for target, name in ((self._run, "intake"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"{self.keys.queue}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop_taking(self, timeout_s: float = 5.0) -> None:
        """Stop taking entries (shutdown begins); jobs already accepted run on."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def close(self) -> None:
        """After the executor drained: acknowledge what finished and, holding nothing, deregister.
        Entries still held stay in the processing list: the next start with this consumer id
        resumes them, or a reaper hands them back once the heartbeat expires."""
        self._stop.set()
        try:
            self._acknowledge_finished()
            if not self.redis.llen(self.keys.processing(self.consumer_id)):
                pipe = self.redis.pipeline(transaction=True)
                pipe.srem(self.keys.consumers, self.consumer_id)
                pipe.delete(self.keys.heartbeat(self.consumer_id))
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("queue %s: could not acknowledge at exit (%s); the next start does it",
                        self.keys.queue, type(exc).__name__)

    def notify(self) -> None:
        """A job ended or the executor went idle: acknowledge and take the next entry now."""
        self._wake.set()

    def depth(self) -> int:
        """Entries waiting in the queue (LLEN), as this consumer sees it (metrics)."""
        return int(self.redis.llen(self.keys.queue))

    def status(self) -> dict:
        with self._lock:
            in_flight = [t.job_id for t in self._tracked]
        s = self.state
        return {"queue": self.keys.queue, "consumer_id": self.consumer_id, "connected": s.connected,
                "redis": self.redis_state(), "last_error": s.last_error, "disconnected_since": s.disconnected_since,
                "reconnects": s.reconnects, "in_flight": in_flight, **s.counters.as_dict()}

    def redis_state(self) -> str:
        """`connected`, `password_refused` (Redis answers but refuses the credentials) or `unreachable`:
        what /ready, the ops page and the `queue_redis_up` metric say without the error text."""
        return "connected" if self.state.connected else self.state.problem

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._step()
                if failures:
                    log.info("queue %s: Redis reachable again", self.keys.queue)
                    self.state.reconnects += 1
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                self._disconnected(exc)
                self._stop.wait(backoff_delay(failures, self.backoff_s, self.backoff_max_s))
            except Exception:  # the intake thread must survive anything a sink or an entry does
                log.exception("queue %s: unexpected intake error", self.keys.queue)
                self._reconcile = True  # an entry taken but not handled is handled again
                self._stop.wait(self.backoff_s)

    def _step(self) -> None:
        if self._reconcile:
            self._register()
            self._reconcile_processing()
            self._reconcile = False
            self._connected()
        self._acknowledge_finished()
        if time.monotonic() >= self._next_reap:
            self._reap()
            self._next_reap = time.monotonic() + self.reap_interval_s
        if not self._can_take():
            self._wake.wait(0.2)
            self._wake.clear()
            return
        raw = self.redis.blmove(self.keys.queue, self.keys.processing(self.consumer_id),
                                self.block_s, "LEFT", "LEFT")  # type: ignore[arg-type]  # Redis takes seconds as a float

        self._connected()
        if raw is not None:
            self.state.counters.taken += 1
            process_metrics().queue_taken.labels(self.keys.queue).inc()
            self._handle(raw)

    def _can_take(self) -> bool:
        return self.sink.can_take()

    def _connected(self) -> None:
        if not self.state.connected:
            self.state.connected = True
            self.state.disconnected_since = None

    def _disconnected(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.state.problem = redis_state(exc)
        if self.state.connected or self.state.last_error != reason:
            log.warning("queue %s: Redis unavailable (%s); HTTP keeps serving, retrying with backoff",
                        self.keys.queue, reason)
        if self.state.connected or self.state.disconnected_since is None:
            self.state.disconnected_since = now_iso()
        self.state.connected = False
        self.state.last_error = reason
        self._reconcile = True

    # -- entries ----------------------------------------------------------------------------------
    def _handle(self, raw: bytes | str) -> None:
        """One entry, handled once: accepted, acknowledged as a redelivery, or dead-lettered with the reason.
        Anything it raises but a lost connection (the loop reconnects and reconciles) dead-letters the entry:
        also a command Redis refuses (a key of the wrong type), which would fail the same way every time."""
        try:
            self._handle_entry(raw)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:  # a hostile entry or a defect must not wedge the queue on this entry
            log.exception("queue %s: handling an entry failed; moving it to %s", self.keys.queue, self.keys.dead)
            with self._lock:
                self._tracked = [t for t in self._tracked if t.raw != raw]
            self._dead_letter(raw, f"handling the entry failed: {type(exc).__name__}")  # no text of the entry

    def _handle_entry(self, raw: bytes | str) -> None:
        entry = parse_entry(raw, self.max_entry_bytes)
        if not isinstance(entry, Entry):
            self._dead_letter(raw, entry)
            return
        payload, job_id = entry.payload, entry.job_id
        conflict = self.sink.conflict(job_id, payload)
        if conflict is not None:
            # No callback: the app knows a job by its id alone, so one would report on the other job.
            self.state.counters.id_conflicts += 1
            self._dead_letter(raw, f"job id {job_id} is already in use: {conflict}")
            return
        status = self.sink.job_status(job_id)
        if status in TERMINAL:
            log.info("queue %s: job %s redelivered but already %s here; acknowledged without running",
                     self.keys.queue, job_id, status)
            self.state.counters.redelivered_finished += 1
            process_metrics().queue_redeliveries.labels(self.keys.queue).inc()
            self._ack(_Tracked(job_id, raw))
            return
        if status is not None:
            with self._lock:
                self._tracked.append(_Tracked(job_id, raw))
            return  # accepted earlier by this worker and still running: acknowledged when it ends
        # Counted before it is tracked: if Redis goes away here, the untracked entry is handled again by the
        # reconciliation after the reconnect. Tracked first, it was skipped there and never run (a job lost
        # across a Redis restart, seen once in a loaded run of test_redis_restarted_mid_run_loses_nothing).
        deliveries = int(self.redis.hincrby(self.keys.deliveries, job_id, 1))
        with self._lock:
            self._tracked.append(_Tracked(job_id, raw))
        if deliveries > 1:  # a consumer died holding it and it came back
            process_metrics().queue_redeliveries.labels(self.keys.queue).inc()
        if deliveries > self.max_deliveries:
            self.state.counters.rejected_redeliveries += 1
            self.sink.reject(job_id, payload, errors.REDELIVERY_LIMIT,
                             f"the job was delivered {deliveries} times and no worker finished it "
                             f"(each one stopped while holding it); not running it again")
        else:
            try:
                self.sink.submit(job_id, payload)
            except Exception as exc:  # a defect in accepting one job must not strand its entry
                log.exception("queue %s: job %s could not be accepted", self.keys.queue, job_id)
                conflict = self.sink.conflict(job_id, payload)
                if conflict is not None:  # another job took the id meanwhile (HTTP, between the check and now)
                    with self._lock:
                        self._tracked = [t for t in self._tracked if t.raw != raw]
                    self.state.counters.id_conflicts += 1
                    self._dead_letter(raw, f"job id {job_id} is already in use: {conflict}")
                elif self.sink.job_status(job_id) is None:
                    self.sink.reject(job_id, payload, errors.INTERNAL_ERROR,
                                     f"the worker could not accept the job ({type(exc).__name__})")

    def _acknowledge_finished(self) -> None:
        with self._lock:
            finished = [t for t in self._tracked if self.sink.job_status(t.job_id) in TERMINAL]
        for tracked in finished:
            self._ack(tracked)

    def _ack(self, tracked: _Tracked) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(self.keys.processing(self.consumer_id), 1, tracked.raw)  # type: ignore[arg-type]
        pipe.hdel(self.keys.deliveries, tracked.job_id)
        pipe.execute()
        with self._lock:
            self._tracked = [t for t in self._tracked if t is not tracked]
        self.state.counters.acknowledged += 1

    def _dead_letter(self, raw: bytes | str, reason: str) -> None:
        head = raw[:DEAD_ENTRY_MAX_CHARS * 4]  # a 50 MB entry is not decoded whole to keep its first 64 K
        text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
        record = {"reason": reason, "entry": text[:DEAD_ENTRY_MAX_CHARS],
                  "truncated": len(head) < len(raw) or len(text) > DEAD_ENTRY_MAX_CHARS, "bytes": len(raw),
                  "consumer": self.consumer_id, "at": now_iso()}
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(self.keys.dead, json.dumps(record))
        pipe.lrem(self.keys.processing(self.consumer_id), 1, raw)  # type: ignore[arg-type]
        pipe.execute()
        self.state.counters.dead_lettered += 1
        process_metrics().queue_dead_letters.labels(self.keys.queue).inc()
        log.warning("queue %s: entry moved to %s: %s", self.keys.queue, self.keys.dead, reason)

    def _reconcile_processing(self) -> None:
        """Handle every entry in this consumer's processing list that it does not track: left by a
        previous process with the same consumer id, or taken by a command whose reply was lost."""
        entries = self.redis.lrange(self.keys.processing(self.consumer_id), 0, -1)
        with self._lock:
            known = [t.raw for t in self._tracked]
        for raw in reversed(entries):  # oldest first (entries are pushed on the left)
            if raw in known:
                known.remove(raw)  # one tracked entry accounts for one copy in the list
            else:
                log.info("queue %s: resuming an entry held by this consumer before", self.keys.queue)
                self._handle(raw)

    # -- liveness ---------------------------------------------------------------------------------
    def _register(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self.keys.consumers, self.consumer_id)
        pipe.set(self.keys.heartbeat(self.consumer_id), json.dumps(self.info),
                 px=int(self.heartbeat_ttl_s * 1000))
        pipe.execute()

    def _heartbeat_loop(self) -> None:
        """Renew the heartbeat; it is also how an outage shows in status() while a long job keeps the intake
        loop from touching Redis (the loop itself reconnects and reconciles)."""
        interval = min(self.heartbeat_ttl_s / 3, LIVENESS_S)
        while not self._stop.wait(interval):
            try:
                self._register()
            except redis.RedisError as exc:
                self._disconnected(exc)
            else:
                self._connected()

    def _reap(self) -> None:
        """Hand entries of consumers without a heartbeat back to the head of the queue, oldest first."""
        for member in self.redis.smembers(self.keys.consumers):
            consumer = member.decode() if isinstance(member, bytes) else member
            if consumer == self.consumer_id or self.redis.exists(self.keys.heartbeat(consumer)):
                continue
            moved = 0
            # Processing lists hold the newest entry on the left: moving left-to-left one at a time
            # leaves the oldest at the head of the queue, ahead of everything pushed since.
            while self.redis.lmove(self.keys.processing(consumer), self.keys.queue, "LEFT", "LEFT") is not None:
                moved += 1
            self.redis.srem(self.keys.consumers, consumer)
            if moved:
                self.state.counters.reaped += moved
                log.warning("queue %s: consumer %s has no heartbeat; %d entr%s handed back to the queue",
                            self.keys.queue, consumer, moved, "y" if moved == 1 else "ies")
                self._wake.set()
