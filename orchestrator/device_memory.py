"""What the memory broker knows of the device: its real capacity and use on a GPU, a configured budget
without one. The orchestrator never creates a CUDA context of its own: it reads NVML, which does not,
and uses torch only when NVML is missing on a machine that has an NVIDIA device (the context that
costs is then counted like any other memory in use)."""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

from configuration.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceReading:
    kind: str            # "cuda" or "cpu"
    source: str          # "nvml", "torch", "budget" (VRAM_BUDGET_MB) or "nominal" (48 GB)
    total_bytes: int
    used_bytes: int | None   # None where nothing can be measured (no GPU): leases are the use


def nvml_device(cuda_visible_devices: str | None) -> int | str:
    """The NVML handle key of the GPU the workers see first: an index, or a GPU-/MIG- UUID."""
    first = (cuda_visible_devices or "").split(",")[0].strip()
    if not first:
        return 0
    if first.isdigit():
        return int(first)
    return first


def read_nvml(nvml, device: int | str) -> tuple[int, int]:
    """(total, used) bytes of one device through an NVML binding (pynvml's functions)."""
    if isinstance(device, int):
        handle = nvml.nvmlDeviceGetHandleByIndex(device)
    else:
        handle = nvml.nvmlDeviceGetHandleByUUID(device)
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return int(info.total), int(info.used)


def budget_reading(settings: Settings) -> DeviceReading:
    return DeviceReading("cpu", "budget" if settings.vram_budget_mb > 0 else "nominal",
                         settings.budget_bytes_without_device, None)


def nvidia_device_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/proc/driver/nvidia/version")


class DeviceMemory:
    """Reads the device on every call (NVML takes microseconds); decides its source once."""

    def __init__(self, settings: Settings, nvml=None, nvidia_present: bool | None = None):
        self.settings = settings
        self._nvml = None
        self._device = nvml_device(os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.source = "budget"
        present = nvidia_device_present() if nvidia_present is None else nvidia_present
        if nvml is None and present:
            try:
                import pynvml
                pynvml.nvmlInit()
                nvml = pynvml
            except Exception as exc:  # pynvml raises its own NVMLError subclasses
                log.warning("NVIDIA device present but NVML unavailable (%s); reading memory through torch", exc)
        if nvml is not None:
            self._nvml = nvml
            self.source = "nvml"
        elif present and self._torch_cuda():
            self.source = "torch"
        if self.source == "budget":
            self._fixed = budget_reading(settings)

    @staticmethod
    def _torch_cuda() -> bool:
        import torch
        return torch.cuda.is_available()

    def read(self) -> DeviceReading:
        if self.source == "nvml":
            total, used = read_nvml(self._nvml, self._device)
            return DeviceReading("cuda", "nvml", total, used)
        if self.source == "torch":
            import torch
            free, total = torch.cuda.mem_get_info()
            return DeviceReading("cuda", "torch", int(total), int(total - free))
        return self._fixed
