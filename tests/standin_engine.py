"""One stand-in engine for the tests of the job runtime (JobRunner, ModelHost, the output pipeline): the
methods the runtime asks of an engine besides `run`, answered for one weightless model "m", so each
runtime test's engine holds only its own `run` and state. The real engines' side of the same contract is
tests/app/test_engine_contract.py."""
from __future__ import annotations

from typing import Any

from configuration.settings import Settings


class StandInEngine:
    """Model "m", 1000 bytes when resident, no weight files (provenance lists no models), no pipeline, no
    reference images, no activation memory. `always_loaded`: resident from the start and never unloaded
    (for tests about jobs, not about loading); otherwise `loaded` follows load and unload."""
    device = "cpu"
    worker = "test"
    warm_up_at_load = False   # ModelHost runs no warm-up after a load

    def __init__(self, settings: Settings, always_loaded: bool = False):
        self.settings = settings
        self.always_loaded = always_loaded
        self.loaded = False

    def model_names(self) -> list[str]:
        return ["m"]

    def is_loaded(self, model: str) -> bool:
        return self.always_loaded or self.loaded

    def load(self, model: str) -> None:
        self.loaded = True

    def unload(self, model: str) -> None:
        self.loaded = False

    def memory_estimate(self, model: str) -> int:
        return 1000

    def resident_bytes(self, model: str) -> int:
        return 1000 if self.is_loaded(model) else 0

    def required_models(self, params: Any) -> list[str]:
        return ["m"]

    def working_bytes(self, params: Any) -> int:
        return 0

    def reference_urls(self, params: Any) -> dict[str, str]:
        return {}

    def weight_paths(self, model: str) -> list[str]:
        return []

    def pipeline_of(self, params: Any) -> None:
        return None
