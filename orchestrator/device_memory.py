"""What the memory broker knows of the device: its real capacity and use on a GPU, a configured budget
without one. The orchestrator never creates a CUDA context of its own: it reads NVML, which does not,
and uses torch only when NVML is missing on a machine that has an NVIDIA device (the context that
costs is then counted like any other memory in use)."""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Any

from configuration.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceReading:
    kind: str            # "cuda" or "cpu"
    source: str          # "nvml", "torch", "budget" (VRAM_BUDGET_MB) or "nominal" (48 GB)
    total_bytes: int
    used_bytes: int | None   # None where nothing can be measured (no GPU): leases are the use


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# `nvml`: an NVML binding, pynvml (which has no type hints) or a stand-in; its handles are opaque.
def _devices(nvml: Any) -> list[tuple[str, Any, list]]:
    """(PCI bus id, handle, MIG slice handles) of every GPU NVML sees, in PCI bus order."""
    gpus = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        gpus.append((_text(nvml.nvmlDeviceGetPciInfo(handle).busId), handle, _mig_slices(nvml, handle)))
    return sorted(gpus, key=lambda gpu: gpu[0])


def _mig_slices(nvml: Any, handle: Any) -> list:
    try:
        if not nvml.nvmlDeviceGetMigMode(handle)[0]:
            return []
    except Exception:  # NVMLError_NotSupported: a GPU without MIG
        return []
    slices = []
    for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle) if hasattr(nvml, "nvmlDeviceGetMaxMigDeviceCount")
                   else 1):
        try:
            slices.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
        except Exception:  # NVMLError_NotFound: no slice at this index  # noqa: S112 (an empty MIG index is normal, nothing to log)
            continue
    return slices


def _by_uuid(nvml: Any, wanted: str, gpus: list[tuple[str, Any, list]]) -> str:
    """The device CUDA means by a UUID entry: the full UUID or a unique prefix of one (CUDA accepts both),
    a GPU in MIG mode read through its first slice, and the older MIG-GPU-<uuid>/<gi>/<ci> form."""
    legacy = wanted.startswith("MIG-GPU-") and "/" in wanted
    if legacy:
        parent, gi = wanted[len("MIG-"):].split("/")[:2]
    candidates = []
    for _bus, handle, slices in gpus:
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        if legacy:
            if uuid == parent and slices:
                chosen = next((h for h in slices if hasattr(nvml, "nvmlDeviceGetGpuInstanceId")
                               and str(nvml.nvmlDeviceGetGpuInstanceId(h)) == gi), slices[0])
                return _text(nvml.nvmlDeviceGetUUID(chosen))
            continue
        if uuid.startswith(wanted):
            candidates.append(_text(nvml.nvmlDeviceGetUUID(slices[0])) if slices else uuid)
        candidates += [u for u in (_text(nvml.nvmlDeviceGetUUID(h)) for h in slices) if u.startswith(wanted)]
    if len(set(candidates)) == 1:
        return candidates[0]
    if not candidates:  # NVML's own lookup by UUID decides when the device is read (and says so there)
        return wanted
    raise LookupError(f"CUDA_VISIBLE_DEVICES names {wanted}, a prefix of several devices' UUIDs")


def resolve_device_uuid(nvml: Any, cuda_visible_devices: str | None) -> str:
    """The UUID (GPU-... or MIG-...) of the device the workers' CUDA uses first. A UUID in
    CUDA_VISIBLE_DEVICES is looked up among NVML's devices as CUDA reads it: the full UUID or a unique prefix,
    the older MIG-GPU-<uuid>/<gi>/<ci> form, and a GPU in MIG mode means its slice. A numeric index is not an
    NVML index (CUDA orders devices fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and NVML promises no
    order): it is the index-th GPU by PCI bus id, which is CUDA's order under PCI_BUS_ID, and the pod gives its
    workers that UUID. A GPU in MIG mode is read through its first MIG device (the slice CUDA runs on), never
    as the parent GPU."""
    first = (cuda_visible_devices or "").split(",")[0].strip()
    gpus = _devices(nvml)
    if first.startswith(("GPU-", "MIG-")):
        return _by_uuid(nvml, first, gpus)
    index = int(first) if first.isdigit() else 0
    _bus, handle, slices = gpus[index]
    return _text(nvml.nvmlDeviceGetUUID(slices[0] if slices else handle))


def read_nvml(nvml: Any, uuid: str) -> tuple[int, int]:
    """(total, used) bytes of one device (a GPU or a MIG slice), by UUID, through an NVML binding."""
    info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByUUID(uuid))
    return int(info.total), int(info.used)


def budget_reading(settings: Settings) -> DeviceReading:
    return DeviceReading("cpu", "budget" if settings.vram_budget_mb > 0 else "nominal",
                         settings.budget_bytes_without_device, None)


def nvidia_device_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/proc/driver/nvidia/version")


class DeviceMemory:
    """Reads the device on every call (NVML takes microseconds); decides its source once."""

    def __init__(self, settings: Settings, nvml: Any = None, nvidia_present: bool | None = None) -> None:
        self.settings = settings
        self._nvml = None
        self.uuid: str | None = None  # the device the workers run on, when NVML can name it
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
            self.uuid = resolve_device_uuid(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
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
        if self.source == "nvml" and self.uuid is not None:  # NVML's source always names its device
            total, used = read_nvml(self._nvml, self.uuid)
            return DeviceReading("cuda", "nvml", total, used)
        if self.source == "torch":
            import torch
            free, total = torch.cuda.mem_get_info()
            return DeviceReading("cuda", "torch", int(total), int(total - free))
        return self._fixed
