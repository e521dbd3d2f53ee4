"""What every engine provides to the model host and its worker process (`Engine`), what an engine that runs
queued jobs adds for the job runtime (`JobEngineBase`: `run` and what a job needs before it), and what `run`
hands back. The runtime's side of each seam is a Protocol where it is consumed: workers/runtime/models.py
`HostedEngine`, workers/runtime/jobs.py `JobEngine`, workers/runtime/worker_state.py `WorkerEngine`; the
chat engine is an `Engine` only (no `run`: its routes call it in the request, workers/http/chat.py)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from PIL import Image

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


class RunContext(Protocol):
    """What `run` gets from the job runtime (workers/runtime/jobs.py `JobContext` provides it): stages and
    steps reported (on_step raises JobCancelled once the job is cancelled, so a cancel lands on a step
    boundary), the reference images fetched before memory was leased, and whether this is the one retry
    after an out-of-memory error (the engine's memory-saving modes)."""
    references: dict[str, Image.Image]
    memory_saving: bool

    def stage(self, name: str, total_steps: int | None = None) -> None: ...
    def on_step(self, step: int, total_steps: int) -> None: ...


def step_callback(ctx: RunContext, total_steps: int):
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

    def start(self, host) -> None:
        """Start the engine's background work, if it has any (the app factory calls this once)."""

    def queue_depth(self) -> int:
        """Requests waiting in the engine's own queues (the chat engine's batchers); a job engine has none:
        its jobs wait in the runner's queue."""
        return 0

    def weight_paths(self, model: str) -> list[str]:
        """The files or folders holding a model's weights (provenance hashes them once at load)."""
        return [self.configs[model]["path"]]


class JobEngineBase(Engine[P]):
    """An engine that runs queued jobs (SDXL, WAN): the job runtime's `JobEngine`. Besides the lifecycle, a
    job names its models and memory before it is queued, may need reference images fetched, and runs in
    `run`, reporting its steps to the context."""

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

    @abstractmethod
    def run(self, params: P, ctx: RunContext) -> list[GeneratedAsset]:
        """The job's outputs, with `ctx.on_step` called at every denoising step."""

    @abstractmethod
    def pipeline_of(self, params: P) -> Any:
        """The diffusers pipeline a job's outputs came from, while its models are in use (provenance
        records its class and scheduler)."""
