"""The memory broker's state and its waiting: one instance in the orchestrator process.

Workers call it over HTTP (workers/runtime/broker_client.py -> /broker/* in orchestrator/api.py). A
lease request is answered by `broker_policy.plan_lease` on a snapshot of the pool; an `evict` decision is carried
out by asking the idle workers to unload (their `POST /memory/unload`, which itself refuses to pull a
model out from under a job), a `wait` decision blocks the request on a condition until something is
released or the timeout passes, and `too_big` fails at once. Every decision is kept in a bounded
history that `GET /memory/status` shows.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from common.errors import MemoryUnavailable
from common.http import iso_time
from common.metrics import process_metrics
from configuration import worker_configs
from configuration.settings import Settings
from orchestrator.broker_policy import EVICTING, LOADED, LOADING, Decision, Lease, Pool, Request, plan_lease, pressure
from orchestrator.device_memory import DeviceReading

log = logging.getLogger(__name__)

HISTORY_LENGTH = 500
RECHECK_S = 1.0  # a waiting request re-reads the device at least this often (GPU use changes by itself)
PIN_S = 5.0      # a model whose unload was refused is not asked again for this long (or until it changes)


class DeviceReader(Protocol):
    """The device the broker shares out: orchestrator/device_memory.py `DeviceMemory`."""

    def read(self) -> DeviceReading: ...


class MemoryBroker:
    """`unload(worker, model) -> (ok: bool, reason: str)` asks a worker to unload one model; `device`
    is read before every decision; `clock` (monotonic) times leases and waits, `wall` stamps the history."""

    def __init__(self, settings: Settings, device: DeviceReader, unload: Callable[[str, str], tuple[bool, str]],
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.device = device
        self.reserve = settings.vram_reserve_mb * 1024 * 1024
        self._unload = unload
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        self._leases: dict[tuple[str, str], Lease] = {}
        self._working: dict[str, int] = {}
        self._jobs: dict[str, int] = {}
        self._pinned: dict[tuple[str, str], float] = {}   # refused an unload -> clock time it may be asked again
        self._tickets = itertools.count()
        self._waiting: dict[int, dict] = {}          # ticket -> what status() shows
        self._requests: dict[int, Request] = {}      # ticket -> the waiting request
        self._pids: dict[str, int] = {}
        self._loading_since: dict[tuple[str, str], float] = {}   # clock time of each `loading` lease's grant
        self._models = {name: set(config["models"]) for name, config in worker_configs().items()}
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY_LENGTH)
        self.counters: collections.Counter[str] = collections.Counter()

    # -- snapshot ---------------------------------------------------------------------------------
    def _busy(self) -> frozenset:
        loading = {w for (w, _m), lease in self._leases.items() if lease.state == LOADING}
        return frozenset(loading | {w for w, n in self._jobs.items() if n > 0})

    def check_model(self, worker: str, model: str) -> None:
        """ValueError unless `model` is one the worker is configured with (no lease for made-up models)."""
        if model not in self._models.get(worker, ()):
            raise ValueError(f"the {worker} worker has no model {model!r} "
                             f"(configured: {', '.join(sorted(self._models.get(worker, ()))) or 'none'})")

    def _expire_loads(self) -> None:
        """Called with the condition held: a `loading` lease whose load has not finished within
        LEASE_LOAD_TIMEOUT_S is dropped (a hung load, or a worker that died unseen, holds nothing forever)."""
        now = self._clock()
        for key, since in list(self._loading_since.items()):
            if now - since <= self.settings.lease_load_timeout_s:
                continue
            del self._loading_since[key]
            lease = self._leases.get(key)
            if lease is not None and lease.state == LOADING:
                del self._leases[key]
                self._event("load_expired", key[0], key[1], bytes=lease.bytes,
                            after_s=round(now - since, 1))
                self._cond.notify_all()

    def _pool(self) -> tuple[Pool, DeviceReading]:
        self._expire_loads()
        reading = self.device.read()
        leases = tuple(self._leases.values())
        busy = self._busy()
        external = 0
        if reading.used_bytes is not None:
            explained = sum(lease.bytes for lease in leases) + sum(v for w, v in self._working.items() if w in busy)
            external = max(0, reading.used_bytes - explained)
        now = self._clock()
        self._pinned = {k: until for k, until in self._pinned.items() if until > now}
        pinned = tuple(dataclasses.replace(lease, state=EVICTING) if (lease.worker, lease.model) in self._pinned
                       else lease for lease in leases)
        pool = Pool(capacity=reading.total_bytes, reserve=self.reserve, leases=pinned,
                    working=dict(self._working), busy=busy, external=external)
        return pool, reading

    def _event(self, event: str, worker: str, model: str | None = None, **detail: object) -> None:
        entry = {"at": iso_time(self._wall()), "event": event, "worker": worker, "model": model, **detail}
        self.history.append(entry)
        self.counters[event] += 1
        metrics = process_metrics()
        if event == "evicted":
            metrics.memory_evictions.labels(worker, model or "").inc()
        elif event == "wait":
            metrics.memory_lease_waits.labels(worker, model or "").inc()
        elif event in ("too_big", "timeout"):
            metrics.memory_refusals.labels(event).inc()
        notable = ("evicted", "too_big", "timeout", "worker_gone", "evict_refused")
        level = logging.INFO if event in notable else logging.DEBUG
        log.log(level, "memory %s %s/%s %s", event, worker, model or "-", detail or "")

    # -- leasing ----------------------------------------------------------------------------------
    def lease(self, request: Request, timeout_s: float) -> None:
        """Block until `request` is granted (evicting idle models, waiting for busy ones); raise
        MemoryUnavailable when it can never fit (too_big) or the timeout passes."""
        started = self._clock()
        deadline = started + timeout_s
        ticket = next(self._tickets)
        with self._cond:
            try:
                while True:
                    pool, _reading = self._pool()
                    decision = plan_lease(pool, request)
                    if decision.action == "grant":
                        self._grant(request, decision)
                        return
                    if decision.action == "too_big":
                        self._event("too_big", request.worker, request.model, **decision.numbers())
                        raise MemoryUnavailable(decision.message, details=self._details(request, decision),
                                                too_big=True)
                    if decision.action == "evict":
                        self._evict(request, decision.evict)
                        continue
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        self._event("timeout", request.worker, request.model, **decision.numbers())
                        raise MemoryUnavailable(
                            f"timed out after {timeout_s:.0f}s: {decision.message}; held by busy workers: "
                            f"{self._busy_summary(pool)}", details=self._details(request, decision))
                    if ticket not in self._waiting:
                        self._waiting[ticket] = {"worker": request.worker, "model": request.model,
                                                 "need_bytes": decision.need, "since": iso_time(self._wall())}
                        self._requests[ticket] = request
                        self._event("wait", request.worker, request.model, **decision.numbers())
                    self._cond.wait(min(remaining, RECHECK_S))
            finally:
                if self._waiting.pop(ticket, None) is not None:  # it waited: granted or refused now
                    process_metrics().memory_lease_wait.labels(request.worker).observe(self._clock() - started)
                self._requests.pop(ticket, None)

    def wait_turn(self, worker: str, timeout_s: float) -> None:
        """A worker is about to start a job (nothing of it in use yet). If an older request of another
        worker needs this worker's memory, let it be served first; without this, a worker with a queue
        of jobs would hold its models from one job to the next and starve the others until their
        timeout. Never fails: after the timeout the job goes ahead."""
        deadline = self._clock() + timeout_s
        with self._cond:
            mine = next(self._tickets)
            # At a job boundary none of its models is in use: earlier refusals no longer hold.
            if any(k[0] == worker for k in self._pinned):
                self._pinned = {k: v for k, v in self._pinned.items() if k[0] != worker}
                self._cond.notify_all()
            yielded = False
            while True:
                blocking = self._blocked_by(worker, mine)
                if not blocking:
                    return
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._event("turn_timeout", worker, None, waiting_for=blocking)
                    return
                if not yielded:
                    self._event("yield", worker, None, to=blocking)
                    yielded = True
                self._cond.wait(min(remaining, RECHECK_S))

    def _blocked_by(self, worker: str, before: int) -> str | None:
        """The older waiting request that is taking (or about to take) this worker's memory, if any."""
        for (w, m), lease in self._leases.items():
            if w == worker and lease.state == EVICTING:
                return f"eviction of {w}/{m}"
        pool, _ = self._pool()
        for ticket, request in sorted(self._requests.items()):
            if ticket > before or request.worker == worker:
                continue
            decision = plan_lease(pool, request)
            if decision.action == "evict" and any(lease.worker == worker for lease in decision.evict):
                return f"{request.worker}/{request.model or 'working memory'}"
        return None

    def _grant(self, request: Request, decision: Decision) -> None:
        now = self._wall()
        if request.model is not None:
            self._leases[(request.worker, request.model)] = Lease(request.worker, request.model, request.model_bytes,
                                                                  LOADING, now)
            self._loading_since[(request.worker, request.model)] = self._clock()
        if request.working_bytes:
            self._working[request.worker] = max(self._working.get(request.worker, 0), request.working_bytes)
        self._event("grant", request.worker, request.model, bytes=request.model_bytes,
                    working_bytes=request.working_bytes, free_bytes=decision.free)

    def _evict(self, request: Request, chosen: tuple[Lease, ...]) -> None:
        """Called with the condition held; releases it while the workers unload."""
        for lease in chosen:
            self._leases[(lease.worker, lease.model)] = dataclasses.replace(lease, state=EVICTING)
            self._event("evict_requested", lease.worker, lease.model, bytes=lease.bytes,
                        for_worker=request.worker, for_model=request.model)
        self._cond.release()
        try:
            results = [(lease, *self._unload(lease.worker, lease.model)) for lease in chosen]
        finally:
            self._cond.acquire()
        for lease, ok, reason in results:
            key = (lease.worker, lease.model)
            current = self._leases.get(key)
            if ok:
                # The worker reports its release itself; drop the lease here too in case that call was lost.
                if current is not None and current.state == EVICTING:
                    del self._leases[key]
                self._event("evicted", lease.worker, lease.model, bytes=lease.bytes,
                            for_worker=request.worker, for_model=request.model)
            else:
                if current is not None and current.state == EVICTING:
                    self._leases[key] = dataclasses.replace(current, state=LOADED)
                self._pinned[key] = self._clock() + PIN_S
                self._event("evict_refused", lease.worker, lease.model, reason=reason)
        self._cond.notify_all()

    def _busy_summary(self, pool: Pool) -> str:
        held = [f"{lease.worker}/{lease.model} ({lease.bytes} bytes)"
                for lease in pool.leases if lease.worker in pool.busy]
        return ", ".join(held) or "none"

    def _details(self, request: Request, decision: Decision) -> dict:
        return {"worker": request.worker, "model": request.model, "model_bytes": request.model_bytes,
                "working_bytes": request.working_bytes, **decision.numbers(), "reserve_bytes": self.reserve}

    # -- what workers report -------------------------------------------------------------------------
    def hello(self, worker: str, pid: int) -> None:
        """A worker process started: whatever an earlier process of it held is gone."""
        with self._cond:
            self._forget(worker)
            self._pids[worker] = pid
            self._event("hello", worker, pid=pid)
            self._cond.notify_all()

    def acquire(self, worker: str, model: str, estimate_bytes: int, working_bytes: int, timeout_s: float) -> None:
        self.check_model(worker, model)
        self.lease(Request(worker, model, estimate_bytes, working_bytes), timeout_s)

    def admit(self, worker: str, need_bytes: int) -> None:
        """Refuse at once a job that could never fit (the 409 a caller sees at submission)."""
        with self._cond:
            pool, _ = self._pool()
            if need_bytes > pool.usable:
                self._event("too_big", worker, None, need_bytes=need_bytes, usable_bytes=pool.usable)
                raise MemoryUnavailable(
                    f"the job needs {need_bytes} bytes (models + working memory) but the device offers "
                    f"{pool.usable} bytes ({pool.capacity} capacity - {pool.reserve} reserve) even with every "
                    "other model unloaded", too_big=True,
                    details={"worker": worker, "need_bytes": need_bytes, "usable_bytes": pool.usable,
                             "capacity_bytes": pool.capacity, "reserve_bytes": pool.reserve})

    def loaded(self, worker: str, model: str, resident_bytes: int) -> None:
        self.check_model(worker, model)
        with self._cond:
            self._loading_since.pop((worker, model), None)
            self._leases[(worker, model)] = Lease(worker, model, int(resident_bytes), LOADED, self._wall())
            self._pinned.pop((worker, model), None)
            self._event("loaded", worker, model, bytes=int(resident_bytes))
            self._cond.notify_all()

    def release(self, worker: str, model: str) -> None:
        with self._cond:
            lease = self._leases.pop((worker, model), None)
            self._loading_since.pop((worker, model), None)
            self._pinned.pop((worker, model), None)
            if not self._jobs.get(worker) and not any(lease.worker == worker and lease.state == LOADING
                                                      for lease in self._leases.values()):
                self._working.pop(worker, None)
            self._event("release", worker, model, bytes=lease.bytes if lease else 0)
            self._cond.notify_all()

    def job_started(self, worker: str, working_bytes: int, timeout_s: float) -> None:
        if working_bytes:
            self.lease(Request(worker, None, 0, working_bytes), timeout_s)
        with self._cond:
            self._jobs[worker] = self._jobs.get(worker, 0) + 1
            self._event("job_started", worker, working_bytes=working_bytes)

    def grow_working(self, worker: str, working_bytes: int, timeout_s: float) -> None:
        """A running job (a chat batch gaining rows) needs more working memory: the lease grows; the count
        of the worker's jobs does not (job_finished is sent once per job_started)."""
        self.lease(Request(worker, None, 0, working_bytes), timeout_s)

    def job_finished(self, worker: str) -> None:
        with self._cond:
            self._jobs[worker] = max(0, self._jobs.get(worker, 0) - 1)
            if not self._jobs[worker]:
                self._working.pop(worker, None)
                self._pinned = {k: v for k, v in self._pinned.items() if k[0] != worker}
            self._event("job_finished", worker)
            self._cond.notify_all()

    def touch(self, worker: str, models: list[str]) -> None:
        with self._cond:
            now = self._wall()
            for model in models:
                lease = self._leases.get((worker, model))
                if lease is not None:
                    self._leases[(worker, model)] = dataclasses.replace(lease, last_used=now)
            # A touch comes after the job let go of its models: an unload refused a moment ago may work now.
            if any(k[0] == worker for k in self._pinned):
                self._pinned = {k: v for k, v in self._pinned.items() if k[0] != worker}
                self._cond.notify_all()

    def worker_gone(self, worker: str, reason: str) -> None:
        """The worker's process ended: the device memory it held is free."""
        with self._cond:
            self._forget(worker)
            self._pids.pop(worker, None)
            self._event("worker_gone", worker, reason=reason)
            self._cond.notify_all()

    def _forget(self, worker: str) -> None:
        for key in [k for k in self._leases if k[0] == worker]:
            del self._leases[key]
            self._loading_since.pop(key, None)
        self._pinned = {k: v for k, v in self._pinned.items() if k[0] != worker}
        self._working.pop(worker, None)
        self._jobs.pop(worker, None)

    # -- operator view ------------------------------------------------------------------------------
    def status(self, history: int = 100) -> dict:
        with self._cond:
            pool, reading = self._pool()
            workers: dict[str, dict] = {}
            for lease in sorted(pool.leases, key=lambda x: (x.worker, x.model)):
                entry = workers.setdefault(lease.worker, {"models": {}})
                entry["models"][lease.model] = {
                    "bytes": lease.bytes, "state": self._leases[(lease.worker, lease.model)].state,
                    "last_used": iso_time(lease.last_used) if lease.last_used else None,
                    "pinned": (lease.worker, lease.model) in self._pinned}
            for worker in set(workers) | set(self._jobs) | set(self._working) | set(self._pids):
                entry = workers.setdefault(worker, {"models": {}})
                entry.update(busy=worker in pool.busy, jobs_running=self._jobs.get(worker, 0),
                             working_bytes=self._working.get(worker, 0), pid=self._pids.get(worker),
                             leased_bytes=sum(m["bytes"] for m in entry["models"].values()))
            leased = sum(lease.bytes for lease in pool.leases)
            working = sum(pool.working.values())
            used = reading.used_bytes if reading.used_bytes is not None else leased + working
            return {
                # One device today (the broker accounts the first visible GPU); a list, as the contract names it.
                "devices": [{"index": 0, "kind": reading.kind, "source": reading.source,
                             "total_bytes": reading.total_bytes, "used_bytes": used,
                             "free_bytes": reading.total_bytes - used}],
                "budget": {"capacity_bytes": pool.capacity, "reserve_bytes": pool.reserve,
                           "leased_bytes": leased, "working_bytes": working, "external_bytes": pool.external,
                           "available_bytes": pool.free},
                "pressure": pressure(pool, len(self._waiting)),
                "workers": workers,
                "waiting": list(self._waiting.values()),
                "counters": dict(self.counters),
                "history": list(self.history)[-history:] if history else [],
            }
