"""Retrying, written once: `retry_call` for the bounded retries, `backoff_delay` for the unbounded ones.

Bounded (a few quick tries, then the caller hears the last error): storage uploads
(workers/runtime/storage.py) and the memory-broker reports (workers/runtime/broker_client.py). The
caller says how many attempts, the delay before each retry and which exceptions are worth retrying;
anything else, or the error of the last attempt, reaches it unchanged, and nothing sleeps after the
last attempt.

Unbounded (never give up, wait longer each time, up to a cap): registration with Supabase
(orchestrator/registration.py), callback redelivery (common/callbacks.py), the Redis queue intake's
reconnects (workers/runtime/queue_intake.py) and worker restarts (orchestrator/supervisor.py). Those
loops wait on their own stop events (a shutdown must cut a wait short), so they take only the delay
from here.

Logging stays with the callers: they know what may be shown (no secret or prompt text in a log line).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_MAX_DOUBLINGS = 62  # 2**62 times any sensible first delay is past every cap; keeps the float finite


def backoff_delay(failures: int, first_s: float, cap_s: float) -> float:
    """The wait after failure number `failures` (1-based) of an unbounded retry: `first_s`, doubling
    with every further failure, never more than `cap_s`."""
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    return min(cap_s, first_s * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))


def linear_delay(step_s: float) -> Callable[[int], float]:
    """A `delay_s` for `retry_call`: `step_s` after the first failed attempt, twice that after the
    second, and so on."""
    return lambda attempt: step_s * attempt


def retry_call(call: Callable[[], T], *, attempts: int, delay_s: Callable[[int], float],
               retryable: Callable[[Exception], bool], sleep: Callable[[float], object] = time.sleep) -> T:
    """`call()`'s result, calling it at most `attempts` times. After failed attempt number n (1-based)
    whose exception `retryable` accepts, it waits `delay_s(n)` seconds (through `sleep`) and calls again.
    An exception `retryable` refuses, or the one of the last attempt, propagates unchanged."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if attempt >= attempts or not retryable(exc):
                raise
        sleep(delay_s(attempt))
        attempt += 1
