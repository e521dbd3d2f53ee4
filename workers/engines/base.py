"""What every engine provides to the job runtime and the model host, and what it hands back."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from configuration import model_config, worker_config
from configuration.settings import Settings
from workers import devices


@dataclass
class GeneratedAsset:
    """What an engine's `run` returns: pixels plus the parameters actually used for them."""
    kind: str                      # "image" or "video"
    frames: list                   # PIL images; one for an image
    metadata: dict
    fps: float | None = None


def step_callback(ctx, total_steps: int):
    """A diffusers `callback_on_step_end` reporting progress to the job context (which raises
    JobCancelled there, so cancellation lands on a step boundary)."""
    def on_step_end(pipe, step_index, timestep, callback_kwargs):
        ctx.on_step(step_index + 1, total_steps)
        return callback_kwargs
    return on_step_end


# An engine's normalised parameters: what its request model's to_params() builds (configuration/requests/).
P = TypeVar("P")


class Engine(ABC, Generic[P]):
    worker: str = ""

    def __init__(self, settings: Settings, device: str | None = None):
        self.settings = settings
        self.device = device or devices.pick_device()
        self.configs = {m: model_config(m, settings) for m in worker_config(self.worker)["models"]}
        self._measured: dict[str, int] = {}
        devices.apply_cuda_backend_settings(devices.cuda_backend_settings(self.device, self.worker))

    @property
    def warm_up_at_load(self) -> bool:
        """Run one small generation right after a load (lazy CUDA init, kernel and cuDNN plan selection and,
        with torch.compile, the compilation), so the first request does not pay for it: on CUDA only.
        ModelHost runs it (`warm_up`) inside the model's lease, with `warm_up_working_bytes` leased as a job's."""
        return self.device == "cuda"

    def warm_up(self, model: str) -> None:
        """One small generation on a model just loaded (an engine without one does nothing)."""

    def warm_up_working_bytes(self, model: str) -> int:
        """Activation memory the warm-up needs beyond the weights (leased like a job's)."""
        return 0

    def model_names(self) -> list[str]:
        return list(self.configs)

    def dtype(self, model: str):
        return devices.pick_dtype(self.configs[model]["dtype"], self.device)

    def memory_estimate(self, model: str) -> int:
        """Bytes a load will take: what the last load measured, else the configured estimate."""
        return self._measured.get(model, self.configs[model]["memory_bytes"])

    def resident_bytes(self, model: str) -> int:
        measured = devices.module_bytes(*self.modules(model)) if self.is_loaded(model) else 0
        if measured:
            self._measured[model] = measured
        return measured

    @abstractmethod
    def modules(self, model: str) -> list:
        """The torch modules a loaded model holds (for measuring resident bytes)."""

    @abstractmethod
    def is_loaded(self, model: str) -> bool: ...

    @abstractmethod
    def load(self, model: str) -> None: ...

    @abstractmethod
    def unload(self, model: str) -> None: ...

    def required_models(self, params: P) -> list[str]:
        return self.model_names()[:1]

    def working_bytes(self, params: P) -> int:
        """Activation memory a job needs beyond the weights (part of the memory lease)."""
        return 0

    def check_request(self, params: P) -> None:
        """Checks that need this worker's configuration (e.g. a model path that is not set); raise
        ValidationFailed to answer 400. Bounds and normalisation are the request model's."""

    def reference_urls(self, params: P) -> dict[str, str]:
        """role -> URL of the reference images a job needs; the runtime fetches them before it leases
        memory and hands them to `run` as `ctx.references` (role -> PIL image)."""
        return {}

    def start(self, host) -> None:
        """Start the engine's background work, if it has any (the app factory calls this once)."""

    def run(self, params: P, ctx) -> list[GeneratedAsset]:
        raise NotImplementedError(f"{type(self).__name__} does not run queued jobs")

    def weight_paths(self, model: str) -> list[str]:
        """The files or folders holding a model's weights (provenance hashes them once at load)."""
        return [self.configs[model]["path"]]

    def pipeline_of(self, params: P) -> Any:
        """The diffusers pipeline a job's outputs came from, while its models are in use (provenance
        records its class and scheduler); None for an engine without one."""
        return None
