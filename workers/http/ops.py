"""What a worker shows the operator beyond its API: `GET /ops/summary` (its recent jobs, executor queue and
callback backlog and Redis queue intake, which the orchestrator's ops page merges; no prompts) and the gauges
its `GET /metrics` refreshes at each scrape (common/metrics.py serves the route)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from flask import Blueprint, jsonify

from common.body import query_float
from common.metrics import Metrics
from configuration.openapi import RouteTable
from workers import devices
from workers.http.common import state

if TYPE_CHECKING:
    from workers.runtime.worker_state import WorkerState

bp = Blueprint("ops", __name__)

RECENT_JOBS = 50
MAX_JOBS = 200

ROUTES: RouteTable = {
    "/ops/summary": {"get": ("Recent jobs (no prompts), executor queue, callback backlog; "
                             "`?limit=` (default 50, at most 200).", None, (401,))},
}


@bp.get("/ops/summary")
def summary():
    requested = query_float("limit", 0, MAX_JOBS)
    limit = RECENT_JOBS if requested is None else int(requested)
    s = state()
    runner = s.runner
    return jsonify({
        "worker": s.name,
        "pid": s.pid,
        "queue_depth": s.queue_depth(),
        "jobs": runner.summaries(limit) if runner is not None else [],
        "callbacks": s.callbacks.stats() if s.callbacks is not None else None,
        "queue_intake": s.intake.status() if s.intake is not None else None,
    })


def refresh_metrics(metrics: Metrics, s: WorkerState) -> None:
    """Scrape hook: the gauges that mirror the state of this worker (`s`, its WorkerState)."""
    name = s.name
    metrics.jobs_queued.labels(name).set(s.queue_depth())
    if s.runner is not None:
        metrics.jobs_running.labels(name).set(s.runner.running_count())
    if s.callbacks is not None:
        metrics.callbacks_pending.set(s.callbacks.pending())
        metrics.callback_oldest_age.set(s.callbacks.oldest_pending_age_s())
    for model, info in s.host.status().items():
        metrics.model_resident.labels(model).set(info["resident_bytes"])
    memory = s.memory.status()
    for model in s.host.model_names():
        metrics.memory_leased.labels(name, model).set(memory["held_bytes"].get(model, 0))
    if "budget_bytes" in memory:  # a worker alone (LocalMemory) budgets its device itself
        metrics.memory_budget.labels(s.engine.device).set(memory["budget_bytes"])
    reading = devices.device_memory(s.engine.device)
    if reading:
        device = s.engine.device
        metrics.device_total.labels(device).set(reading["total_bytes"])
        metrics.device_free.labels(device).set(reading["free_bytes"])
        metrics.device_used.labels(device).set(reading["total_bytes"] - reading["free_bytes"])
    if s.intake is not None:
        queue = s.intake.keys.queue
        intake = s.intake.status()
        metrics.queue_in_flight.labels(queue).set(len(intake["in_flight"]))
        metrics.queue_redis_up.labels(queue).set(1 if intake["connected"] else 0)
        try:
            metrics.queue_depth.labels(queue).set(s.intake.depth())
        except redis.RedisError:
            pass  # Redis is down: the intake reports it (status, log); the last depth stays
