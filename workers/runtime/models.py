"""ModelHost: the one place where an engine's models are loaded, used and unloaded.

It guarantees that a model is never unloaded while a job is using it (unload waits, then answers
busy), asks the memory client for a lease before loading, and reports resident bytes. On CUDA a load ends
with the engine's warm-up, inside the lease; a warm-up that fails unloads the model and releases its lease
(the load fails with the reason), so no model is ever resident outside a lease. Each load
records the SHA-256 of the model's weight files (`fingerprints`, for provenance; cached by path, size
and mtime, so only a changed file is read again).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from common.errors import JobFailed, MemoryUnavailable, ModelBusy
from common.metrics import process_metrics
from workers import devices
from workers.runtime.provenance import WeightHashes

log = logging.getLogger(__name__)


class HostedEngine(Protocol):
    """What the host needs of an engine, any engine (workers/engines/base.py `Engine` provides it all): its
    models' lifecycle, their memory and weight files, and the warm-up after a load."""
    worker: str

    @property
    def warm_up_at_load(self) -> bool: ...

    def model_names(self) -> list[str]: ...
    def is_loaded(self, model: str) -> bool: ...
    def load(self, model: str) -> None: ...
    def unload(self, model: str) -> None: ...
    def memory_estimate(self, model: str) -> int: ...
    def resident_bytes(self, model: str) -> int: ...
    def weight_paths(self, model: str) -> list[str]: ...
    def warm_up(self, model: str) -> None: ...
    def warm_up_working_bytes(self, model: str) -> int: ...


class MemoryClient(Protocol):
    """A worker's memory client: LocalMemory (workers/runtime/local_memory.py) or BrokerMemory
    (workers/runtime/broker_client.py, the orchestrator's broker)."""

    def acquire(self, model: str, estimate_bytes: int, working_bytes: int) -> None: ...
    def admit(self, need_bytes: int) -> None: ...
    def loaded(self, model: str, resident_bytes: int) -> None: ...
    def release(self, model: str) -> None: ...
    def wait_turn(self, models: list[str]) -> None: ...
    def job_started(self, working_bytes: int) -> None: ...
    def grow_working(self, working_bytes: int) -> None: ...
    def job_finished(self) -> None: ...
    def touch(self, models: list[str]) -> None: ...
    def status(self) -> dict: ...


class ModelHost:
    def __init__(self, engine: HostedEngine, memory: MemoryClient, weights: WeightHashes | None = None) -> None:
        self.engine = engine
        self.memory = memory
        self.weights = weights or WeightHashes()
        self.fingerprints: dict[str, list[dict]] = {}   # model -> its weight files' hashes, from its last load
        self._cond = threading.Condition()
        self._in_use: dict[str, int] = {m: 0 for m in engine.model_names()}
        self._loading: set[str] = set()
        self._last_used: dict[str, float] = {}
        self.load_counts: dict[str, int] = {m: 0 for m in engine.model_names()}

    def model_names(self) -> list[str]:
        return list(self._in_use)

    def resolve(self, which: str | None) -> list[str]:
        if which in (None, "", "all"):
            return self.model_names()
        if which not in self._in_use:
            raise KeyError(which)
        return [which]

    @contextlib.contextmanager
    def use(self, models: list[str], working_bytes: int = 0) -> Iterator[None]:
        """Mark `models` in use for the duration of a job, loading any that are not resident."""
        # Before anything is marked in use: on a device shared with other workers, an older request for
        # this worker's memory is served first (it may unload these models), so no worker starves.
        self.memory.wait_turn(models)
        with self._cond:
            for m in models:
                self._in_use[m] += 1
        try:
            for m in models:
                self._ensure_loaded(m, working_bytes)
            self.memory.job_started(working_bytes)
            try:
                yield
            finally:
                self.memory.job_finished()
        finally:
            with self._cond:
                now = time.time()
                for m in models:
                    self._in_use[m] -= 1
                    self._last_used[m] = now
                self._cond.notify_all()
            self.memory.touch(models)

    def _ensure_loaded(self, model: str, working_bytes: int = 0) -> None:
        with self._cond:
            while model in self._loading:
                self._cond.wait()
            if self.engine.is_loaded(model):
                return
            self._loading.add(model)
        try:
            warm_up = self.engine.warm_up_at_load
            warm_bytes = self.engine.warm_up_working_bytes(model) if warm_up else 0
            self.memory.acquire(model, self.engine.memory_estimate(model), max(working_bytes, warm_bytes))
            try:
                started = time.monotonic()
                fingerprints = [self.weights.fingerprint(model, path) for path in self.engine.weight_paths(model)]
                self.engine.load(model)
                if warm_up:
                    self._warm_up(model, warm_bytes)
            except BaseException:
                # Nothing stays resident outside a lease: a load or warm-up that fails half-way unloads
                # what it loaded before the lease goes.
                if self.engine.is_loaded(model):
                    self.engine.unload(model)
                self.memory.release(model)
                raise
            self.fingerprints[model] = fingerprints
            self.load_counts[model] += 1
            seconds = time.monotonic() - started
            metrics = process_metrics()
            metrics.model_loads.labels(self.engine.worker, model).inc()
            metrics.model_load_duration.labels(self.engine.worker, model).observe(seconds)
            resident = self.engine.resident_bytes(model)
            self.memory.loaded(model, resident)
            log.info("loaded %s (%d bytes) in %.2fs", model, resident, seconds,
                     extra={"model": model, "resident_bytes": resident,
                            "weights_sha256": [f["sha256"] for f in fingerprints]})
        finally:
            with self._cond:
                self._loading.discard(model)
                self._cond.notify_all()

    def _warm_up(self, model: str, working_bytes: int) -> None:
        """The engine's warm-up, its activations leased like a job's. A failure fails the load with the
        reason (the caller unloads the model); running out of memory is a memory refusal."""
        self.memory.job_started(working_bytes)
        try:
            self.engine.warm_up(model)
        except (MemoryUnavailable, JobFailed):
            raise
        except Exception as exc:
            if devices.is_out_of_memory(exc):
                raise MemoryUnavailable(f"{model} loaded but ran out of device memory in its warm-up; unloaded",
                                        details={"model": model, "working_bytes": working_bytes}) from exc
            raise JobFailed(f"{model} loaded but its warm-up failed ({type(exc).__name__}: {exc}); "
                            "unloaded") from exc
        finally:
            self.memory.job_finished()

    def admit(self, models: list[str], working_bytes: int) -> None:
        """Raise MemoryUnavailable (too_big) before queueing a job that could never fit in memory."""
        self.memory.admit(sum(self.engine.memory_estimate(m) for m in models) + working_bytes)

    def load(self, which: str | None) -> list[str]:
        models = self.resolve(which)
        for m in models:
            self._ensure_loaded(m)
            with self._cond:
                self._last_used[m] = time.time()
        return models

    def unload(self, which: str | None, wait_s: float = 0.0) -> list[str]:
        """Unload models; a model in use is waited for up to `wait_s`, then ModelBusy is raised."""
        models = self.resolve(which)
        deadline = time.monotonic() + wait_s
        unloaded = []
        for m in models:
            with self._cond:
                while self._in_use[m] > 0 or m in self._loading:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ModelBusy(f"model {m} is running a job")
                    self._cond.wait(remaining)
                if not self.engine.is_loaded(m):
                    continue
                # Unload while holding the condition so no job can start using it half-way.
                self.engine.unload(m)
            self.memory.release(m)
            unloaded.append(m)
            log.info("unloaded %s", m)
            self._report_remaining()
        return unloaded

    def _report_remaining(self) -> None:
        """After an unload: the models still loaded report what they now hold. Modules the unloaded model
        shared with them (WAN's text encoder and VAE, counted by whichever model loaded them first) stay
        resident, so their leases grow to cover them instead of leaving them outside every lease."""
        for other in self.model_names():
            if self.engine.is_loaded(other):
                self.memory.loaded(other, self.engine.resident_bytes(other))

    def status(self) -> dict:
        with self._cond:
            models = {}
            for m in self._in_use:
                loaded = self.engine.is_loaded(m)
                models[m] = {
                    "loaded": loaded,
                    "resident_bytes": self.engine.resident_bytes(m) if loaded else 0,
                    "estimate_bytes": self.engine.memory_estimate(m),
                    "busy": self._in_use[m] > 0,
                    "loading": m in self._loading,
                    "last_used": self._last_used.get(m),
                    "load_count": self.load_counts[m],
                }
        return models

    def busy(self) -> bool:
        with self._cond:
            return any(self._in_use.values())
