"""A test build of the worker app with a step hook for deadlines: the real app (`serve_app`) and the real
SDXL pipeline, with the engine's diffusers step hook wrapped so that
- a job whose id starts with SLOW_PREFIX sleeps SLOW_STEP_S at every step boundary before the real hook
  (which honours a stop): a job that surely overruns a short deadline on any machine;
- a job whose id starts with STUCK_PREFIX runs its first step and then never returns from the second
  step boundary, so the stop is never seen (as with a hung CUDA kernel).
Every other job runs unchanged.

gunicorn serves it as `tests.stuck_engine_app:serve_app('sdxl')` (tests/stack/test_job_deadlines.py); under the
orchestrator, whose supervisor starts the real command line, a `sitecustomize.py` calls `install()`.
"""
from __future__ import annotations

import threading
import time

from flask import Flask

from workers.engines import base, sdxl
from workers.http.app import serve_app as real_serve_app

SLOW_PREFIX = "slow-"
STUCK_PREFIX = "stuck-"
SLOW_STEP_S = 0.3
COMMAND_TARGET = "tests.stuck_engine_app:serve_app('sdxl')"


def _step_callback(ctx, total_steps: int):
    real = base.step_callback(ctx, total_steps)

    def on_step_end(pipe, step_index, timestep, callback_kwargs):
        if ctx.job_id.startswith(STUCK_PREFIX) and step_index >= 1:
            threading.Event().wait()  # a step that never ends: the stop at the step boundary is never seen
        if ctx.job_id.startswith(SLOW_PREFIX):
            time.sleep(SLOW_STEP_S)
        return real(pipe, step_index, timestep, callback_kwargs)

    return on_step_end


def install() -> None:
    """Wrap the SDXL engine's step hook in this process (also from a `sitecustomize.py` on PYTHONPATH, which
    is how the orchestrator's own worker processes get it)."""
    sdxl.step_callback = _step_callback


def serve_app(worker: str) -> Flask:
    install()
    return real_serve_app(worker)
