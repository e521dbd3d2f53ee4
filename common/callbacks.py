"""Terminal-status callbacks, delivered from their own thread with retry and backoff.

Delivery never blocks, delays or fails a job: `send` only enqueues. Each callback carries an
`Idempotency-Key` stable per job and status, so a receiver can drop the duplicates that retries of
a slow-but-successful delivery may cause.

A callback is retried with a doubling delay capped at CALLBACK_BACKOFF_MAX_S until it is delivered, the
receiver refuses it for good (a 4xx other than 401/403/408/409/425/429), or CALLBACK_RETRY_HORIZON_S (a day
by default) has passed since the job ended. A 401/403 is retried like a 5xx: it means the receiver does not
accept our signature or key (JOB_CALLBACK_SECRET differs between the pod and the app), which an operator
fixes, and the results are kept until then; while the receiver's latest answer is such a refusal,
`refusal_warning()` says so (the process's /ready, the ops page, `ourvidz_callbacks_refused_by_receiver`).
The sender itself keeps nothing on disk: the job journal is the outbox (common/jobs.py keeps each
attempt, its time and error in the record, and a restarted process sends every callback the journal
shows pending, with the attempts and the horizon it had). Deliveries of one job go out in the order they
were queued.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from common import strict_json
from common.http import now_iso
from common.logging import log_context
from common.metrics import process_metrics
from common.retry import backoff_delay
from configuration.settings import Settings

log = logging.getLogger(__name__)
_RETRYABLE_4XX = {408, 409, 425, 429}
_REFUSED = {401, 403}  # the receiver refuses our credentials: retried, and shown as a warning
REFUSED_WARNING = "callbacks refused by the receiver: check JOB_CALLBACK_SECRET"


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    body: bytes = field(compare=False)
    key: str = field(compare=False)
    attempt: int = field(compare=False, default=0)
    on_result: Callable[[bool, int], None] | None = field(compare=False, default=None)
    queued_at: float = field(compare=False, default=0.0)
    max_attempts: int = field(compare=False, default=0)  # 0: the sender's CALLBACK_MAX_ATTEMPTS
    since: float = field(compare=False, default=0.0)     # wall time the first attempt was queued (the horizon)
    on_attempt: Callable[[int, str, float], None] | None = field(compare=False, default=None)

    @property
    def job_id(self) -> str:
        return self.key.rpartition(":")[0]


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class CallbackSender:
    def __init__(self, settings: Settings):
        self.url = settings.effective_callback_url
        self.service_key = settings.supabase_service_key
        self.secret = settings.callback_secret
        self.processing = settings.callback_processing  # also notify when a job starts
        self.max_attempts = max(0, settings.callback_max_attempts)  # 0: no cap, the horizon decides
        self.backoff_s = settings.callback_backoff_s
        self.backoff_max_s = settings.callback_backoff_max_s
        self.horizon_s = settings.callback_retry_horizon_s
        self._seq = itertools.count()
        self._order: dict[str, list[int]] = {}   # job id -> seqs of its outstanding deliveries, oldest first
        self.timeout_s = settings.callback_timeout_s
        self._queue: queue.PriorityQueue[_Delivery] = queue.PriorityQueue()
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._outstanding = 0  # queued or being attempted
        self._open: dict[int, float] = {}   # id(delivery) -> when it was queued (the backlog's age)
        self.delivered = 0
        self.abandoned = 0
        self.refused = 0  # attempts answered 401/403
        self._refusal: dict | None = None  # the current streak of refusals (cleared by an accepted callback)
        self._metrics = process_metrics()
        self._thread = threading.Thread(target=self._loop, name="callbacks", daemon=True)
        if self.url:
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def send(self, payload: dict, on_result: Callable[[bool, int], None] | None = None,
             max_attempts: int = 0, attempts: int = 0, since: float | None = None,
             on_attempt: Callable[[int, str, float], None] | None = None) -> bool:
        """Queue `payload` for delivery; `on_result(delivered: bool, attempts: int)` is called at the end,
        `on_attempt(attempts, error, retry_in_s)` after each failed attempt that will be retried.
        `attempts` and `since` (wall time of the first queueing) carry a delivery over from an earlier
        process. `max_attempts=1` for a notice that must not arrive late (a `processing` callback is never
        retried, so it can never land after the job's terminal callback)."""
        if not self.url:
            return False
        body = strict_json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        key = f"{payload['job_id']}:{payload['status']}"
        now = time.monotonic()
        seq = next(self._seq)
        delivery = _Delivery(now, seq, body, key, attempts, on_result, queued_at=now, max_attempts=max_attempts,
                             since=time.time() if since is None else since, on_attempt=on_attempt)
        with self._lock:
            self._outstanding += 1
            self._open[id(delivery)] = now
            self._order.setdefault(delivery.job_id, []).append(seq)
        self._queue.put(delivery)
        return True

    def pending(self) -> int:
        with self._lock:
            return self._outstanding

    def oldest_pending_age_s(self) -> float:
        """Seconds since the oldest undelivered callback was queued (0 when none is)."""
        with self._lock:
            return time.monotonic() - min(self._open.values()) if self._open else 0.0

    def stats(self) -> dict:
        """The backlog for the ops page and the metrics: pending, oldest age, delivered, abandoned, refused
        attempts and the refusal warning (None unless the receiver's latest answer was a 401/403)."""
        with self._lock:
            pending, delivered, abandoned, refused = self._outstanding, self.delivered, self.abandoned, self.refused
        return {"enabled": self.enabled, "pending": pending, "oldest_pending_age_s": round(self.oldest_pending_age_s(),
                                                                                           3),
                "delivered": delivered, "abandoned": abandoned, "refused": refused, "warning": self.refusal_warning()}

    def refusal_warning(self) -> dict | None:
        """While the receiver's latest answer was a 401/403: what /ready and the ops page show."""
        with self._lock:
            return dict(self._refusal) if self._refusal else None

    def _note_answer(self, status: int | None, ok: bool) -> None:
        """Keep the refusal streak: a 401/403 starts or extends it, an accepted callback ends it."""
        refused = status in _REFUSED
        if not refused and not ok:
            return  # no answer or a 5xx says nothing about our credentials
        with self._lock:
            if refused:
                self.refused += 1
                if self._refusal is None:
                    self._refusal = {"code": "callbacks_refused", "message": REFUSED_WARNING, "since": now_iso(),
                                     "refused_attempts": 0}
                self._refusal.update(status=status, last_at=now_iso(),
                                     refused_attempts=self._refusal["refused_attempts"] + 1)
            else:
                self._refusal = None
        if refused:
            self._metrics.callbacks_refused.inc()
        self._metrics.callbacks_refused_by_receiver.set(1 if refused else 0)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued callback is delivered or abandoned. Ones still pending at exit stay
        `pending` in the job journal and are sent again by the next process."""
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending()

    def _headers(self, delivery: _Delivery) -> dict:
        headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.key}
        if self.service_key:
            headers["Authorization"] = f"Bearer {self.service_key}"
        if self.secret:
            # The app's job-callback answers 401 without it (JOB_CALLBACK_SECRET on both sides).
            headers["X-Callback-Signature"] = sign(delivery.body, self.secret)
        return headers

    def _loop(self) -> None:
        while True:
            delivery = self._queue.get()
            wait = delivery.due - time.monotonic()
            if wait > 0:
                # Not due yet: put it back and sleep until it is (or a new delivery arrives).
                self._queue.put(delivery)
                time.sleep(min(wait, 0.2))
                continue
            with self._lock:
                first = self._order.get(delivery.job_id, [delivery.seq])[0]
            if first != delivery.seq:  # an earlier delivery of this job is still outstanding: it goes first
                delivery.due = time.monotonic() + 0.05
                self._queue.put(delivery)
                continue
            with log_context(job_id=delivery.job_id):
                self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        """One attempt; then the end of the delivery (delivered or abandoned) or its next try."""
        delivery.attempt += 1
        ok, retry, reason, status = self._attempt(delivery)
        self._note_answer(status, ok)
        metrics = self._metrics
        outcome = ("delivered" if ok else "refused" if status in _REFUSED else "retryable" if retry else "rejected")
        metrics.child(metrics.callback_attempts, outcome).inc()
        cap = delivery.max_attempts or self.max_attempts
        expired = time.time() - delivery.since >= self.horizon_s
        if ok or not retry or (cap and delivery.attempt >= cap) or expired:
            if ok:
                metrics.callbacks_delivered.inc()
            else:
                metrics.callbacks_abandoned.inc()
                why = "the retry horizon passed" if expired and retry else reason
                log.error("callback %s abandoned after %d attempt(s): %s (%s)", delivery.key, delivery.attempt,
                          why, reason)
            if delivery.on_result:
                try:
                    delivery.on_result(ok, delivery.attempt)
                except Exception:  # a bookkeeping failure must not stop other deliveries
                    log.exception("callback result hook failed")
            with self._lock:
                self._outstanding -= 1
                self._open.pop(id(delivery), None)
                order = self._order.get(delivery.job_id, [])
                if delivery.seq in order:
                    order.remove(delivery.seq)
                if not order:
                    self._order.pop(delivery.job_id, None)
                if ok:
                    self.delivered += 1
                else:
                    self.abandoned += 1
            return
        metrics.callback_retries.inc()
        delay = backoff_delay(delivery.attempt, self.backoff_s, self.backoff_max_s)
        log.warning("callback %s attempt %d failed (%s); retrying in %.1fs", delivery.key, delivery.attempt, reason,
                    delay)
        if delivery.on_attempt:
            try:
                delivery.on_attempt(delivery.attempt, reason, delay)
            except Exception:  # a bookkeeping failure must not stop the delivery
                log.exception("callback attempt hook failed")
        delivery.due = time.monotonic() + delay
        self._queue.put(delivery)

    def _attempt(self, delivery: _Delivery) -> tuple[bool, bool, str, int | None]:
        """(delivered, worth retrying, reason, HTTP status or None without an answer)."""
        try:
            response = self._session.post(self.url, data=delivery.body, headers=self._headers(delivery),
                                          timeout=self.timeout_s)
        except requests.RequestException as exc:
            return False, True, type(exc).__name__, None
        status = response.status_code
        if 200 <= status < 300:
            return True, False, "", status
        if status in _REFUSED:
            return False, True, f"HTTP {status}: {REFUSED_WARNING}", status
        retry = status >= 500 or status in _RETRYABLE_4XX
        return False, retry, f"HTTP {status}", status
