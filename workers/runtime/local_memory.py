"""Memory clients: how a worker's ModelHost gets permission to load a model.

`LocalMemory` is used by a worker started alone: it accounts against the device's real capacity
(or VRAM_BUDGET_MB on a machine without a GPU). Under the orchestrator, workers use the broker
client (workers/runtime/broker_client.py) instead, which leases across processes.
"""
from __future__ import annotations

import threading
import time

from common.errors import MemoryUnavailable
from common.metrics import process_metrics
from configuration.settings import Settings
from workers import devices


def budget_bytes(settings: Settings, device: str) -> int:
    """Device capacity on a GPU, else the configured budget, else a nominal 48 GB card."""
    info = devices.device_memory(device)
    return info["total_bytes"] if info is not None else settings.budget_bytes_without_device


class LocalMemory:
    def __init__(self, settings: Settings, device: str):
        self.budget = budget_bytes(settings, device)
        self.reserve = settings.vram_reserve_mb * 1024 * 1024
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._last_used: dict[str, float] = {}

    def acquire(self, model: str, estimate_bytes: int, working_bytes: int) -> None:
        with self._lock:
            held = sum(v for k, v in self._held.items() if k != model)
            need = estimate_bytes + working_bytes + self.reserve
            if need > self.budget:
                process_metrics().memory_refusals.labels("too_big").inc()
                raise MemoryUnavailable(
                    f"{model} needs {need} bytes (model {estimate_bytes} + working {working_bytes} + reserve "
                    f"{self.reserve}) but the budget is {self.budget}", too_big=True,
                    details={"model": model, "need_bytes": need, "budget_bytes": self.budget})
            if held + need > self.budget:
                process_metrics().memory_refusals.labels("occupied").inc()
                raise MemoryUnavailable(
                    f"{model} needs {need} bytes but only {self.budget - held} of {self.budget} are free; "
                    "unload another model first",
                    details={"model": model, "need_bytes": need, "free_bytes": self.budget - held})
            self._held[model] = estimate_bytes

    def admit(self, need_bytes: int) -> None:
        """Refuse at once a job that could never fit in the budget (its submission answers 409)."""
        if need_bytes + self.reserve > self.budget:
            process_metrics().memory_refusals.labels("too_big").inc()
            raise MemoryUnavailable(
                f"the job needs {need_bytes} bytes (models + working memory) plus the {self.reserve} byte reserve "
                f"but the budget is {self.budget}", too_big=True,
                details={"need_bytes": need_bytes, "reserve_bytes": self.reserve, "budget_bytes": self.budget,
                         "too_big": True})

    def loaded(self, model: str, resident_bytes: int) -> None:
        with self._lock:
            self._held[model] = resident_bytes

    def release(self, model: str) -> None:
        with self._lock:
            self._held.pop(model, None)

    def wait_turn(self, models: list[str]) -> None:
        """Alone on the device: no other worker's request to let go first."""

    def job_started(self, working_bytes: int) -> None:
        pass

    def grow_working(self, working_bytes: int) -> None:
        """Alone on the device, working memory is checked at admission only (as in job_started)."""

    def job_finished(self) -> None:
        pass

    def touch(self, models: list[str]) -> None:
        with self._lock:
            for m in models:
                self._last_used[m] = time.time()

    def status(self) -> dict:
        with self._lock:
            return {"mode": "local", "budget_bytes": self.budget, "reserve_bytes": self.reserve,
                    "held_bytes": dict(self._held)}
