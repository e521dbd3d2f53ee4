"""Exceptions with which engines and the runtime end a job, each mapped to an error code."""
from __future__ import annotations


class JobFailed(Exception):
    """A job cannot complete for a reason the caller should read (bad reference image, ...)."""

    code = "job_failed"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class JobCancelled(Exception):
    """Raised at a step boundary once a job has been asked to cancel."""


class ModelBusy(Exception):
    """A model is running a job and cannot be unloaded now."""


class MemoryUnavailable(Exception):
    """GPU memory for a model cannot be granted (too big, or busy workers hold it past the timeout)."""

    def __init__(self, message: str, details: dict | None = None, too_big: bool = False):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.too_big = too_big
