"""Pure decisions of the WAN engine (unit-tested on CPU): where the text encoder and VAE run, when to
offload, GPU settings, working memory, VACE conditioning frames, the scheduler of a solver."""
from __future__ import annotations

import torch
from PIL import Image

from workers import devices

GRAY = (128, 128, 128)  # VACE's "nothing known here" pixel value for frames to generate


def text_encoder_placement(gpu: dict, device: str, model_dtype: torch.dtype,
                           offload: bool = False) -> tuple[str, torch.dtype]:
    """(device, dtype) of the umT5-XXL encoder (5.7 B parameters: 11.4 GB in bfloat16, 22.7 GB as the fp32
    files ship). By default it runs on the accelerator, inside the model's lease (about 4.8 TFLOP per 512-token
    encode, two per job with guidance: seconds on a CPU, milliseconds on a GPU). With `text_encoder_on_cpu`, or
    when the model is offloaded for lack of memory, it stays in host memory (Wan's t5_cpu) in bfloat16. umT5
    overflows in float16, so a float16 model dtype (a GPU without bf16) gets float32 instead."""
    if device != "cpu" and (gpu.get("text_encoder_on_cpu") or offload):
        return "cpu", torch.bfloat16 if model_dtype != torch.float32 else torch.float32
    return device, torch.float32 if model_dtype == torch.float16 else model_dtype


def vae_dtype(gpu: dict, device: str, model_dtype: torch.dtype) -> torch.dtype:
    """The Wan VAE is small and loses detail in half precision; the model config says what it runs in."""
    if device == "cpu":
        return torch.float32
    return devices.pick_dtype(gpu["vae_dtype"], device) if gpu.get("vae_dtype") else model_dtype


def offload_decision(device: str, chosen: bool) -> bool:
    """Model CPU offload (one component on the accelerator at a time, umT5 on the CPU) when the operator chose
    it (WAN_OFFLOAD) for a card smaller than a WAN model's footprint; the lease is then the model's
    `offload_memory_mb`. diffusers needs an accelerator for it: chosen on a CPU-only machine is an error."""
    if chosen and device == "cpu":
        raise ValueError("WAN_OFFLOAD needs a CUDA device: model CPU offload moves components onto an accelerator")
    return chosen


def gpu_plan(gpu: dict, device: str, pixels: int, compile_setting: bool, offload: bool,
             memory_saving: bool = False) -> dict:
    """GPU settings of a job: all off on the CPU, where they do nothing useful, except VAE tiling for the
    retry after an out-of-memory error (`memory_saving`)."""
    cuda = device != "cpu"
    return {
        "text_encoder_on_cpu": cuda and (bool(gpu.get("text_encoder_on_cpu")) or offload),
        "model_cpu_offload": cuda and offload,
        "vae_tiling": memory_saving or (cuda and pixels >= int(gpu.get("vae_tiling_min_pixels", 409600))),
        # Compiled modules and accelerate's offload hooks do not mix; offload wins.
        "torch_compile": cuda and not offload and (bool(gpu.get("torch_compile")) or compile_setting),
    }


def working_bytes_estimate(gpu: dict, width: int, height: int, frames: int) -> int:
    """Activation memory of one job (latents, attention, VAE decode), linear in pixels x frames."""
    return int(float(gpu["working_bytes_per_pixel_frame"]) * width * height * frames)


def conditioning_frames(first: Image.Image | None, last: Image.Image | None, frames: int, width: int,
                        height: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """VACE `video` and `mask`: known frames (black mask) where references are given, gray frames to
    generate (white mask) everywhere else."""
    gray = Image.new("RGB", (width, height), GRAY)
    white, black = Image.new("L", (width, height), 255), Image.new("L", (width, height), 0)
    video, mask = [gray] * frames, [white] * frames
    if first is not None:
        video[0], mask[0] = first, black
    if last is not None:
        video[-1], mask[-1] = last, black
    return video, mask


def conditioned_frame_indices(mode: str, frames: int) -> list[int]:
    return {"single": [0], "start": [0], "end": [frames - 1], "both": [0, frames - 1]}[mode]


def make_scheduler(solver: str, config):
    """The scheduler for `sample_solver`, built from the model's own scheduler config (flow shift etc.)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if solver == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if solver == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_type="midpoint", solver_order=2, use_flow_sigmas=True,
            prediction_type="flow_prediction", flow_shift=config["flow_shift"])
    raise ValueError(f"unknown sample_solver {solver!r}")
