"""Terminal-status callbacks, delivered from their own thread with retry and backoff.

Delivery never blocks, delays or fails a job: `send` only enqueues. Each callback carries an
`Idempotency-Key` stable per job and status, so a receiver can drop the duplicates that retries of
a slow-but-successful delivery may cause.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from common.logging import log_context
from common.metrics import process_metrics
from configuration.settings import Settings

log = logging.getLogger(__name__)
_RETRYABLE_4XX = {408, 409, 425, 429}


@dataclass(order=True)
class _Delivery:
    due: float
    body: bytes = field(compare=False)
    key: str = field(compare=False)
    attempt: int = field(compare=False, default=0)
    on_result: Callable[[bool, int], None] | None = field(compare=False, default=None)
    queued_at: float = field(compare=False, default=0.0)
    max_attempts: int = field(compare=False, default=0)  # 0: the sender's CALLBACK_MAX_ATTEMPTS

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
        self.max_attempts = max(1, settings.callback_max_attempts)
        self.backoff_s = settings.callback_backoff_s
        self.timeout_s = settings.callback_timeout_s
        self._queue: queue.PriorityQueue[_Delivery] = queue.PriorityQueue()
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._outstanding = 0  # queued or being attempted
        self._open: dict[int, float] = {}   # id(delivery) -> when it was queued (the backlog's age)
        self.delivered = 0
        self.abandoned = 0
        self._metrics = process_metrics()
        self._thread = threading.Thread(target=self._loop, name="callbacks", daemon=True)
        if self.url:
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def send(self, payload: dict, on_result: Callable[[bool, int], None] | None = None,
             max_attempts: int = 0) -> bool:
        """Queue `payload` for delivery; `on_result(delivered: bool, attempts: int)` is called at the end.
        `max_attempts=1` for a notice that must not arrive late (a `processing` callback is never
        retried, so it can never land after the job's terminal callback)."""
        if not self.url:
            return False
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        key = f"{payload['job_id']}:{payload['status']}"
        now = time.monotonic()
        delivery = _Delivery(now, body, key, 0, on_result, queued_at=now, max_attempts=max_attempts)
        with self._lock:
            self._outstanding += 1
            self._open[id(delivery)] = now
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
        """The backlog for the ops page and the metrics: pending, oldest age, delivered, abandoned."""
        with self._lock:
            pending, delivered, abandoned = self._outstanding, self.delivered, self.abandoned
        return {"enabled": self.enabled, "pending": pending, "oldest_pending_age_s": round(self.oldest_pending_age_s(), 3),
                "delivered": delivered, "abandoned": abandoned}

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
            with log_context(job_id=delivery.job_id):
                self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        """One attempt; then the end of the delivery (delivered or abandoned) or its next try."""
        delivery.attempt += 1
        ok, retry, reason = self._attempt(delivery)
        metrics = self._metrics
        metrics.callback_attempts.labels("delivered" if ok else "retryable" if retry else "rejected").inc()
        if ok or not retry or delivery.attempt >= (delivery.max_attempts or self.max_attempts):
            if ok:
                metrics.callbacks_delivered.inc()
            else:
                metrics.callbacks_abandoned.inc()
                log.error("callback %s abandoned after %d attempt(s): %s", delivery.key, delivery.attempt, reason)
            if delivery.on_result:
                try:
                    delivery.on_result(ok, delivery.attempt)
                except Exception:  # a bookkeeping failure must not stop other deliveries
                    log.exception("callback result hook failed")
            with self._lock:
                self._outstanding -= 1
                self._open.pop(id(delivery), None)
                if ok:
                    self.delivered += 1
                else:
                    self.abandoned += 1
            return
        metrics.callback_retries.inc()
        delay = min(60.0, self.backoff_s * 2 ** (delivery.attempt - 1))
        log.warning("callback %s attempt %d failed (%s); retrying in %.1fs", delivery.key, delivery.attempt, reason, delay)
        delivery.due = time.monotonic() + delay
        self._queue.put(delivery)

    def _attempt(self, delivery: _Delivery) -> tuple[bool, bool, str]:
        try:
            response = self._session.post(self.url, data=delivery.body, headers=self._headers(delivery),
                                          timeout=self.timeout_s)
        except requests.RequestException as exc:
            return False, True, type(exc).__name__
        if 200 <= response.status_code < 300:
            return True, False, ""
        retry = response.status_code >= 500 or response.status_code in _RETRYABLE_4XX
        return False, retry, f"HTTP {response.status_code}"
