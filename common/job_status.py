"""The statuses of a job and of its terminal callback, declared once.

`StrEnum`s: a member is a `str` equal to its value and serialises as it, so JSON answers, callbacks, the
journal, log fields and metric labels carry the same strings as ever. Its own module, importing nothing,
so that `common/metrics.py` (below `common/jobs.py`, which re-exports these) can use it too.
"""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's `status`, on the wire and in the journal (a `StrEnum`: it serialises as its value, so JSON
    answers and callbacks carry the same strings as ever)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})  # a job ends in one of these
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})  # not ended yet


class CallbackStatus(StrEnum):
    """The delivery state of a job's terminal callback (`record.callback["status"]`)."""

    NOT_SENT = "not_sent"
    DISABLED = "disabled"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
