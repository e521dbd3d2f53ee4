"""SDXL engine: text-to-image in one batched call, image-to-image sharing the same weights, compel
prompt weighting, directory or single-file checkpoints."""
from __future__ import annotations

import logging
import math
import re
from typing import Any

import torch

from common.errors import MODEL_NOT_CONFIGURED, JobFailed
from configuration import SINGLE_FILE_SUFFIXES, single_file_config_dir
from configuration.requests.sdxl import SDXLParams
from workers import devices
from workers.engines.base import GeneratedAsset, JobEngineBase, RunContext, step_callback
from workers.engines.images import resize_reference

log = logging.getLogger(__name__)

MODEL = "sdxl"
CLIP_MAX_TOKENS = 77


# ---- pure decisions (unit-tested on CPU) -------------------------------------------------------

def img2img_steps(requested_steps: int, strength: float) -> tuple[int, int]:
    """(steps to pass, denoising steps that run). diffusers runs int(steps * strength) steps; when that
    is 0 (exact copy with low strength) raise the step count until at least one step runs."""
    steps = requested_steps
    if int(steps * strength) < 1:
        steps = max(requested_steps, math.ceil(1.0 / strength))
        while int(steps * strength) < 1:
            steps += 1
    return steps, int(steps * strength)


def batch_seeds(seed: int, count: int) -> list[int]:
    return [(seed + i) % 2**32 for i in range(count)]


_A1111_WEIGHT = re.compile(r"\(([^()]+?):\s*([0-9]*\.?[0-9]+)\)")


def compel_prompt(prompt: str, weights: str | None) -> str:
    """The text compel conditions on: the prompt plus the weighted terms, with `(term:1.3)` weights
    (the syntax callers send) rewritten to compel's `(term)1.3`."""
    text = prompt if not weights else f"{prompt}, {weights}"
    return _A1111_WEIGHT.sub(lambda m: f"({m.group(1)}){m.group(2)}", text)


def gpu_plan(gpu: dict, device: str, batch: int, pixels: int, compile_setting: bool, fp16_fix_path: str = "",
             memory_saving: bool = False) -> dict:
    """Which GPU optimisations to apply for a job: all off on CPU, where they do nothing useful, except the
    memory-saving modes of the retry after an out-of-memory error (`memory_saving`: VAE slicing and tiling).
    With an fp16-fix VAE (`fp16_fix_path`) the VAE decodes in fp16; otherwise it is upcast to fp32 for the
    decode on every call (`vae_upcast`), which the stock SDXL VAE needs to avoid NaNs in fp16."""
    cuda = device == "cuda"
    return {
        "sdpa": cuda and gpu.get("attention") == "sdpa",
        "channels_last": cuda and bool(gpu.get("channels_last")),
        "torch_compile": cuda and (bool(gpu.get("torch_compile")) or compile_setting),
        "vae_fp16_fix": cuda and bool(fp16_fix_path),
        "vae_upcast": cuda and bool(gpu.get("vae_upcast")) and not fp16_fix_path,
        "vae_slicing": memory_saving or (cuda and batch >= int(gpu.get("vae_slicing_min_batch", 3))),
        "vae_tiling": memory_saving or (cuda and pixels >= int(gpu.get("vae_tiling_min_pixels", 4194304))),
    }


# ---- engine --------------------------------------------------------------------------------------

class SDXLEngine(JobEngineBase[SDXLParams]):
    worker = "sdxl"

    def __init__(self, settings, device=None):
        super().__init__(settings, device)
        # diffusers pipelines once loaded (None when unloaded): StableDiffusionXLPipeline and its img2img twin
        self.txt2img: Any = None
        self.img2img: Any = None
        self._compel: Any = None
        self.load_source: str | None = None

    # model lifecycle
    def modules(self, model: str) -> list:
        return list(self.txt2img.components.values()) if self.txt2img is not None else []

    def is_loaded(self, model: str) -> bool:
        return self.txt2img is not None

    def load(self, model: str) -> None:
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        cfg = self.configs[MODEL]
        path, dtype = cfg["path"], self.dtype(MODEL)
        if not path:
            raise JobFailed("no SDXL model path configured (SDXL_MODEL_PATH)", code=MODEL_NOT_CONFIGURED)
        if path.endswith(SINGLE_FILE_SUFFIXES):
            config_dir = single_file_config_dir(cfg)
            if not config_dir:
                raise JobFailed("single-file SDXL checkpoints need SDXL_CONFIG_DIR (a local diffusers SDXL "
                                "config directory); hub lookups are disabled", code=MODEL_NOT_CONFIGURED)
            pipe = StableDiffusionXLPipeline.from_single_file(path, config=config_dir, local_files_only=True,
                                                              dtype=dtype)
            self.load_source = "single_file"
        else:
            pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True, dtype=dtype)
            self.load_source = "directory"
        pipe.set_progress_bar_config(disable=True)
        self._apply_static_gpu_settings(pipe, cfg, dtype)
        if self.device != "cpu":
            pipe.to(self.device)
        self.txt2img = pipe
        # One set of weights: the img2img pipeline is built from the same component objects. Without `dtype`,
        # from_pipe casts the shared components to fp32 in place (the fp16 UNet, text encoders and VAE too).
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe, dtype=dtype)
        self.img2img.set_progress_bar_config(disable=True)
        self._compel = None

    def warm_up(self, model: str) -> None:
        """One 2-step image at the preset size right after the load (kernel selection, lazy CUDA init and,
        with torch.compile, the compilation for this shape), so the first request does not pay for it.
        ModelHost runs it inside the model's lease, with `warm_up_working_bytes` leased."""
        from configuration import preset_defaults

        size = preset_defaults("sdxl_image_fast", self.settings)
        with torch.no_grad():
            self.txt2img(prompt="", width=size["width"], height=size["height"], num_inference_steps=2,
                         guidance_scale=size["guidance_scale"], output_type="pil")
        devices.release_cached_memory(self.device)

    def warm_up_working_bytes(self, model: str) -> int:
        from configuration import preset_defaults

        size = preset_defaults("sdxl_image_fast", self.settings)
        return self._activation_bytes(1, size["width"], size["height"])

    def unload(self, model: str) -> None:
        self.txt2img = self.img2img = self._compel = None
        devices.empty_cache(self.device)

    def _apply_static_gpu_settings(self, pipe, cfg: dict, dtype) -> None:
        plan = gpu_plan(cfg["gpu"], self.device, batch=1, pixels=0, compile_setting=self.settings.torch_compile,
                        fp16_fix_path=cfg["vae_fp16_fix_path"])
        if plan["vae_fp16_fix"]:
            from diffusers import AutoencoderKL
            pipe.vae = AutoencoderKL.from_pretrained(cfg["vae_fp16_fix_path"], local_files_only=True, dtype=dtype)
            pipe.vae.register_to_config(force_upcast=False)
        if plan["vae_upcast"]:
            pipe.vae.register_to_config(force_upcast=True)
        if plan["sdpa"]:
            from diffusers.models.attention_processor import AttnProcessor2_0
            pipe.unet.set_attn_processor(AttnProcessor2_0())
        if plan["channels_last"]:
            pipe.unet.to(memory_format=torch.channels_last)
        if plan["torch_compile"]:
            # dynamic=False: one graph per shape (the warm-up compiles the preset's), no recompile-per-size
            # guessing; default mode: no CUDA graphs, whose private memory pool would sit outside the lease.
            pipe.unet = torch.compile(pipe.unet, dynamic=False)

    def _apply_job_gpu_settings(self, params: SDXLParams, memory_saving: bool = False) -> dict:
        cfg = self.configs[MODEL]
        plan = gpu_plan(cfg["gpu"], self.device, params["num_images"], params["width"] * params["height"],
                        self.settings.torch_compile, cfg["vae_fp16_fix_path"], memory_saving)
        vae = self.txt2img.vae
        vae.enable_slicing() if plan["vae_slicing"] else vae.disable_slicing()
        vae.enable_tiling() if plan["vae_tiling"] else vae.disable_tiling()
        return plan

    # jobs
    def pipeline_of(self, params: SDXLParams):
        return self.img2img if params["reference"] is not None else self.txt2img

    def reference_urls(self, params: SDXLParams) -> dict[str, str]:
        return {"image": params["reference"]["url"]} if params["reference"] else {}

    def working_bytes(self, params: SDXLParams) -> int:
        return self._activation_bytes(params["num_images"], params["width"], params["height"])

    def _activation_bytes(self, images: int, width: int, height: int) -> int:
        # Activations scale with batch x pixels; about 1.2 GB per 1024x1024 image in fp16 with CFG.
        if self.settings.model_profile == "placeholder":
            return 0
        return int(1.2 * 1024**3 * images * width * height / (1024 * 1024))

    def run(self, params: SDXLParams, ctx: RunContext) -> list[GeneratedAsset]:
        memory_saving = ctx.memory_saving
        plan = self._apply_job_gpu_settings(params, memory_saving)
        reference = params["reference"]
        seeds = batch_seeds(params["seed"], params["num_images"])
        generators = [devices.seeded_generator(s, self.device) for s in seeds]
        prompt_args, prompt_report = self._prompt_arguments(params)
        common = dict(guidance_scale=params["guidance_scale"], num_images_per_prompt=params["num_images"],
                      generator=generators, output_type="pil", **prompt_args)
        used = {"width": params["width"], "height": params["height"], "guidance_scale": params["guidance_scale"],
                "negative_prompt_used": params["negative_prompt"], "steps_requested": params["steps"],
                "gpu_settings": [k for k, v in plan.items() if v], "memory_saving_retry": memory_saving,
                **prompt_report}

        if reference is None:
            total = params["steps"]
            ctx.stage("generating", total_steps=total)
            images = self.txt2img(width=params["width"], height=params["height"], num_inference_steps=params["steps"],
                                  callback_on_step_end=step_callback(ctx, total), **common).images
            used.update(pipeline="StableDiffusionXLPipeline", steps=params["steps"], effective_steps=params["steps"])
        else:
            source = ctx.references["image"]
            init = resize_reference(source, params["width"], params["height"], reference["resize_policy"])
            strength = reference["denoise_strength"]
            steps, effective = img2img_steps(params["steps"], strength)
            ctx.stage("generating", total_steps=effective)
            images = self.img2img(image=init, strength=strength, num_inference_steps=steps,
                                  callback_on_step_end=step_callback(ctx, effective), **common).images
            used.update(pipeline="StableDiffusionXLImg2ImgPipeline", steps=steps, effective_steps=effective,
                        denoise_strength=strength, strength_source=reference["strength_source"],
                        reference_mode=reference["mode"], resize_policy=reference["resize_policy"],
                        reference_size=list(source.size))
        if len(images) != params["num_images"]:
            raise JobFailed(f"pipeline returned {len(images)} images for num_images={params['num_images']}")
        return [GeneratedAsset("image", [img], dict(used, seed=seed)) for img, seed in zip(images, seeds, strict=True)]

    # prompts
    def _prompt_arguments(self, params: SDXLParams) -> tuple[dict, dict]:
        if params["compel_enabled"]:
            text = compel_prompt(params["prompt"], params["compel_weights"])
            compel = self._compel_for_pipe()
            positive, pooled = compel(text)
            negative, negative_pooled = compel(params["negative_prompt"])
            positive, negative = self._pad_to_same_length(compel, positive, negative)
            # Embeddings only: passing negative_prompt too is what crashed the previous img2img path.
            return ({"prompt_embeds": positive, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": negative,
                     "negative_pooled_prompt_embeds": negative_pooled},
                    {"compel": True, "compel_prompt": text, "prompt_tokens": self._token_count(text),
                     "prompt_truncated": False})
        tokens = self._token_count(params["prompt"])
        return ({"prompt": params["prompt"], "negative_prompt": params["negative_prompt"]},
                {"compel": False, "prompt_tokens": tokens, "prompt_truncated": tokens > CLIP_MAX_TOKENS})

    @staticmethod
    def _pad_to_same_length(compel, positive, negative):
        """Long prompts encode to several 77-token chunks; pad the shorter conditioning with the
        empty prompt's embedding (what compel's own padding does, which fails with two encoders)."""
        if positive.shape[1] == negative.shape[1]:
            return positive, negative
        empty, _ = compel("")
        def pad(t, length):
            while t.shape[1] < length:
                t = torch.cat([t, empty.to(t.dtype)[:, : length - t.shape[1]]], dim=1)
            return t
        length = max(positive.shape[1], negative.shape[1])
        return pad(positive, length), pad(negative, length)

    def _token_count(self, text: str) -> int:
        return len(self.txt2img.tokenizer(text, truncation=False).input_ids)

    def _compel_for_pipe(self):
        if self._compel is None:
            from compel import Compel, ReturnedEmbeddingsType
            pipe = self.txt2img
            # truncate_long_prompts=False: prompts over 77 tokens are encoded in chunks, not cut.
            self._compel = Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                                  text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                                  returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                                  requires_pooled=[False, True], truncate_long_prompts=False, device=self.device)
        return self._compel
