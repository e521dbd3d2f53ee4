"""Device, dtype and memory-measurement decisions. The CUDA-only branches live here, each behind a
small function whose logic is tested on CPU by passing the facts (is CUDA there, does it do bf16)."""
from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(cuda_available: bool | None = None) -> str:
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return "cuda" if cuda_available else "cpu"


def pick_dtype(configured: str, device: str, bf16_supported: bool | None = None) -> torch.dtype:
    """The configured dtype on CUDA (bf16 falls back to fp16 on cards without bf16); fp32 on CPU,
    where half precision is slow or unsupported for several kernels."""
    if configured not in _DTYPES:
        raise ValueError(f"unknown dtype {configured!r}; known: {sorted(_DTYPES)}")
    if device == "cpu":
        return torch.float32
    if configured == "bfloat16":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_supported else torch.float16
    return _DTYPES[configured]


def module_bytes(*modules) -> int:
    """Bytes held by the parameters and buffers of torch modules (shared tensors counted once)."""
    seen, total = set(), 0
    for module in modules:
        if module is None or not isinstance(module, torch.nn.Module):
            continue
        for tensor in list(module.parameters()) + list(module.buffers()):
            key = (tensor.data_ptr(), tensor.numel())
            if key in seen or tensor.device.type == "meta":
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def device_memory(device: str) -> dict | None:
    """Total/free/used bytes of an accelerator, or None on CPU."""
    if device != "cuda":
        return None
    free, total = torch.cuda.mem_get_info()
    return {"total_bytes": int(total), "free_bytes": int(free), "used_bytes": int(total - free)}


def empty_cache(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def seeded_generator(seed: int, device: str) -> torch.Generator:
    # CPU generators give the same noise everywhere; diffusers moves the latents to the device.
    return torch.Generator(device="cpu").manual_seed(int(seed))


class NoAcceleratorError(RuntimeError):
    """The production profile was started where no usable CUDA device is."""


def require_accelerator(profile: str, cuda_available: bool | None = None) -> None:
    """Production weights on a CPU would run in fp32 at a small fraction of the speed (an SDXL image in
    minutes): a worker serving them refuses to start instead, saying why."""
    if profile != "production":
        return
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        build = torch.version.cuda
        raise NoAcceleratorError(
            f"MODEL_PROFILE=production needs a usable CUDA device and torch.cuda.is_available() is False (torch "
            f"{torch.__version__}, {'CUDA ' + build if build else 'a CPU-only build'}). On a GPU image, run with the "
            "torch it ships (infrastructure/bootstrap.sh reuses it; docs/OPERATIONS.md); the placeholder profile "
            "runs on CPU.")


def cuda_backend_settings(device: str, worker: str) -> dict:
    """Process-wide CUDA backend flags for a worker: TF32 for the matrix products and convolutions that stay
    in fp32 (the WAN VAE, umT5 on a GPU without bf16, attention softmax paths), and cuDNN's autotuner for the
    WAN worker, whose VAE runs the same 3D convolution shapes job after job. Nothing on CPU."""
    if device != "cuda":
        return {}
    return {"tf32": True, "cudnn_benchmark": worker == "wan"}


def apply_cuda_backend_settings(settings: dict) -> None:
    if settings.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "cudnn_benchmark" in settings:
        torch.backends.cudnn.benchmark = bool(settings["cudnn_benchmark"])


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.OutOfMemoryError, or the RuntimeError text older paths raise)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def release_cached_memory(device: str, empty_cache=None) -> bool:
    """After a job on CUDA: unreferenced tensors collected and the allocator's cached blocks returned
    (`empty_cache`, torch.cuda.empty_cache unless given), so device-wide readings (NVML, mem_get_info, the
    broker) show what is really held. Nothing on CPU. Returns whether it released."""
    if device != "cuda":
        return False
    import gc

    gc.collect()
    (empty_cache or torch.cuda.empty_cache)()
    return True
