"""The operator's view of the pod: the ops page (`GET /`, orchestrator/static/ops.html), the document it
reads (`GET /ops/state`), and the gauges the orchestrator's `GET /metrics` refreshes at each scrape.

`/ops/state` gathers, in one answer: each worker's supervision (state, restarts, readiness) and its
executor queue, the memory status (devices, budget, leases per model, eviction history), the Redis
queues when the pod has them, the running and last 50 jobs (routed ones from the router, direct and
queued ones from each worker's `GET /ops/summary`), and the callback backlog of every process. No
prompt, no user id, no parameter is in it.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from common.http import bearer_session, now_iso
from common.job_status import ACTIVE, JobStatus
from common.metrics import Metrics
from configuration import worker_config

if TYPE_CHECKING:
    from orchestrator.pod import Pod

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "ops.html"
RECENT_JOBS = 50
SUMMARY_TIMEOUT_S = 2.0


class OpsView:
    """What the operator sees of the pod (its supervisors, broker, router, callbacks, memory and workers)."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self._session = bearer_session(pod.settings.api_key)
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="ops")

    def page(self) -> bytes:
        return PAGE.read_bytes()

    # -- /ops/state ------------------------------------------------------------------------------------
    def state(self, limit: int = RECENT_JOBS) -> dict:
        pod = self.pod
        names = list(pod.supervisors)
        summaries = dict(zip(names, self._pool.map(self._summary, names), strict=True))
        workers = []
        for info in pod.workers_info():
            summary = summaries.get(info["name"]) or {}
            workers.append({**info, "ready": info["state"] == "ready", "queue_depth": summary.get("queue_depth")})
        routed = pod.router.summaries(limit)
        seen = {job["job_id"] for job in routed}
        direct = [job for name in names for job in (summaries.get(name) or {}).get("jobs", [])
                  if job["job_id"] not in seen]   # a routed job is on its worker too: the router's record wins
        callbacks = [{"process": "orchestrator", **pod.callbacks.stats()}]
        callbacks += [{"process": name, **reported["callbacks"]} for name in names
                      if (reported := summaries.get(name)) and reported.get("callbacks")]
        return {
            "generated_at": now_iso(),
            "workers": workers,
            "memory": pod.memory_status(history=100),
            **self._queues(),
            "jobs": merge_jobs(routed + direct, limit),
            "callbacks": callbacks,
        }

    def _summary(self, name: str) -> dict | None:
        """A ready worker's GET /ops/summary; None when it is not ready or does not answer in time."""
        supervisor = self.pod.supervisors[name]
        if not supervisor.is_ready():
            return None
        try:
            response = self._session.get(f"{supervisor.url}/ops/summary", timeout=SUMMARY_TIMEOUT_S)
            return response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError) as exc:
            log.debug("ops summary of %s unavailable: %s", name, type(exc).__name__)
            return None

    def _queues(self) -> dict:
        """`redis` (null without REDIS_URL; else its state: connected, unreachable or password_refused, and
        the error) and `queues`, the app's Redis queues this pod consumes (orchestrator/queues.py): depth,
        held, dead letters; a number that could not be read is null, never a failed page."""
        try:
            status = self.pod.queues.status()
        except Exception as exc:  # the page must answer whatever the queue view meets
            log.exception("the queue view failed")
            return {"redis": {"state": "unknown", "connected": False, "error": f"the queue view failed: "
                                                                                 f"{type(exc).__name__}"}, "queues": []}
        redis_info = status.get("redis")
        queues = [{"name": q["queue"], "worker": q["worker"], "depth": q["depth"], "dead_letters": q["dead_letters"],
                   "in_flight": sum(c.get("held", len(c["in_flight"])) for c in q["consumers"]),
                   "consumers_alive": sum(1 for c in q["consumers"] if c["alive"]),
                   "error": (redis_info or {}).get("error") or "; ".join(q.get("errors") or []) or None}
                  for q in status["queues"]]
        shown = None if redis_info is None else {k: redis_info[k] for k in ("state", "connected", "error")}
        return {"redis": shown, "queues": queues}

    # -- metrics ---------------------------------------------------------------------------------------
    def refresh_metrics(self, metrics: Metrics) -> None:
        """Scrape hook: supervision, the broker's memory view, routed jobs, the callback backlog."""
        pod = self.pod
        for name, supervisor in pod.supervisors.items():
            metrics.worker_state.labels(name).state(supervisor.state)
            metrics.worker_ready.labels(name).set(1 if supervisor.is_ready() else 0)
            metrics.worker_restarts.labels(name)  # shown as 0 before the first restart
        status = pod.broker.status(history=0)
        for device in status["devices"]:
            index = str(device["index"])
            metrics.device_total.labels(index).set(device["total_bytes"])
            metrics.device_used.labels(index).set(device["used_bytes"])
            metrics.device_free.labels(index).set(device["free_bytes"])
        budget = status["budget"]
        metrics.memory_budget.labels("0").set(budget["capacity_bytes"] - budget["reserve_bytes"])
        leased = status["workers"]
        for name in pod.supervisors:
            entry = leased.get(name, {})
            metrics.memory_working.labels(name).set(entry.get("working_bytes", 0))
            for model in worker_config(name)["models"]:
                metrics.memory_leased.labels(name, model).set(entry.get("models", {}).get(model, {}).get("bytes", 0))
        counts = pod.router.counts()
        for name in pod.supervisors:
            metrics.jobs_queued.labels(name).set(counts.get((name, JobStatus.QUEUED), 0))
            metrics.jobs_running.labels(name).set(counts.get((name, JobStatus.PROCESSING), 0))
        metrics.callbacks_pending.set(pod.callbacks.pending())
        metrics.callback_oldest_age.set(pod.callbacks.oldest_pending_age_s())


def merge_jobs(jobs: list[dict], limit: int) -> list[dict]:
    """Unfinished jobs first (oldest first), then the `limit` most recently finished."""
    active = sorted((j for j in jobs if j["status"] in ACTIVE), key=lambda j: j["created_at"])
    done = sorted((j for j in jobs if j["status"] not in ACTIVE),
                  key=lambda j: j.get("finished_at") or "", reverse=True)[:limit]
    return active + done
