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
