"""WAN engine: Wan2.1 text-to-video and one-frame image jobs (`WanPipeline`, model `wan_t2v`) and
reference-frame modes (`WanVACEPipeline`, model `wan_vace`), both kept resident in the worker process.

The umT5 text encoder lives outside the pipelines (`PromptEncoder`, our own encode): on a GPU it runs there,
inside the model's memory lease (or on the CPU, Wan's `t5_cpu`, when configured or offloaded), the
embeddings of recent negative prompts are kept, and it, like the VAE, is shared between the two pipelines
when their files are byte-identical.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import MODEL_NOT_CONFIGURED, JobFailed
from configuration.requests.common import field_error
from configuration.requests.wan import WanParams
from workers import devices
from workers.engines.base import GeneratedAsset, JobEngineBase, RunContext, step_callback
from workers.engines.files import same_files
from workers.engines.images import resize_reference
from workers.engines.wan_plan import (
    conditioned_frame_indices,
    conditioning_frames,
    gpu_plan,
    make_scheduler,
    offload_decision,
    text_encoder_placement,
    vae_dtype,
    working_bytes_estimate,
)

log = logging.getLogger(__name__)

T2V, VACE = "wan_t2v", "wan_vace"
TEXT_LEN = 512  # UMT5 sequence length of Wan2.1 (`text_len` in the Wan repository)
NEGATIVE_CACHE = 8  # negative-prompt embeddings kept per encoder (4 MB each in bf16)


# ---- components ----------------------------------------------------------------------------------

class PromptEncoder:
    """Tokenizer + umT5 encoder, encoding as the Wan pipelines do (cleaned text, TEXT_LEN tokens, positions
    past the text zeroed) wherever the encoder lives; the embeddings are moved to the device the transformer
    runs on. `encode_negative` keeps the last NEGATIVE_CACHE negative prompts' embeddings (most jobs send
    the preset's): one encode per job instead of two."""

    def __init__(self, tokenizer, text_encoder, device: str):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self._negatives: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    def encode(self, text: str, target_device: str) -> torch.Tensor:
        """(1, TEXT_LEN, d_model) embeddings in the encoder's dtype on `target_device`."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = self.tokenizer([prompt_clean(text)], padding="max_length", max_length=TEXT_LEN, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        length = int(tokens.attention_mask[0].sum())
        with torch.no_grad():
            hidden = self.text_encoder(tokens.input_ids.to(self.device),
                                       tokens.attention_mask.to(self.device)).last_hidden_state
        hidden = hidden.to(target_device)
        hidden[:, length:] = 0  # the Wan pipelines keep only the text's positions and pad with zeros
        return hidden

    def encode_negative(self, text: str, target_device: str) -> torch.Tensor:
        key = (text, str(target_device), self.dtype)
        if key in self._negatives:
            self._negatives.move_to_end(key)
            return self._negatives[key]
        embeds = self.encode(text, target_device)
        self._negatives[key] = embeds
        while len(self._negatives) > NEGATIVE_CACHE:
            self._negatives.popitem(last=False)
        return embeds

    def token_count(self, text: str) -> int:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return len(self.tokenizer(prompt_clean(text), add_special_tokens=True).input_ids)


@dataclass
class LoadedModel:
    path: str
    pipe: Any  # the configured diffusers pipeline class (WanPipeline or WanVACEPipeline)
    prompts: PromptEncoder
    offload: bool
    scheduler_config: dict
    shared: list[str]

    def device_modules(self, device: str) -> list:
        modules = [self.pipe.transformer, getattr(self.pipe, "transformer_2", None), self.pipe.vae]
        if self.prompts.device == device:
            modules.append(self.prompts.text_encoder)
        return [m for m in modules if m is not None]


# ---- engine --------------------------------------------------------------------------------------

class WanEngine(JobEngineBase[WanParams]):
    worker = "wan"

    def __init__(self, settings, device=None):
        super().__init__(settings, device)
        self._loaded: dict[str, LoadedModel] = {}
        offload_decision(self.device, settings.wan_offload)  # WAN_OFFLOAD on a CPU-only machine: refuse to start

    # model lifecycle
    def is_loaded(self, model: str) -> bool:
        return model in self._loaded

    def pipeline(self, model: str):
        return self._loaded[model].pipe

    def loaded(self, model: str) -> LoadedModel:
        return self._loaded[model]

    def modules(self, model: str) -> list:
        """The modules this model holds on the device, minus those it shares with a model loaded before it
        (so shared weights are counted once, by whichever model holds them first)."""
        entries = list(self._loaded.items())
        earlier: set[int] = set()
        for name, loaded in entries:
            mods = loaded.device_modules(self.device)
            if name == model:
                return [m for m in mods if id(m) not in earlier]
            earlier.update(id(m) for m in mods)
        return []

    def resident_bytes(self, model: str) -> int:
        mods = self.modules(model)
        loaded = self._loaded.get(model)
        if not mods or loaded is None:
            return 0
        # Under model offload only one component is on the accelerator at a time: the largest is the peak.
        measured = max(devices.module_bytes(m) for m in mods) if loaded.offload else devices.module_bytes(*mods)
        self._measured[model] = measured
        return measured

    def memory_estimate(self, model: str) -> int:
        """Bytes a load will lease: the last measured bytes, else the configured footprint (`memory_mb`, or
        `offload_memory_mb` under WAN_OFFLOAD), less what a loaded WAN model already holds that this one
        would share (umT5 and the VAE are counted once, in the lease of the model that loaded them)."""
        if model in self._measured:
            return self._measured[model]
        cfg = self.configs[model]
        if offload_decision(self.device, self.settings.wan_offload):
            return cfg["offload_memory_bytes"]
        other = next((loaded for name, loaded in list(self._loaded.items()) if name != model), None)
        share_te, share_vae = self._sharing(model, other, offload=False)
        shared = []
        if other is not None and share_te and other.prompts.device == self.device:
            shared.append(other.prompts.text_encoder)
        if other is not None and share_vae:
            shared.append(other.pipe.vae)
        return max(0, cfg["memory_bytes"] - devices.module_bytes(*shared))

    def _sharing(self, model: str, other: LoadedModel | None, offload: bool) -> tuple[bool, bool]:
        """Whether `model` would share the text encoder (with its tokenizer) and the VAE of the loaded `other`:
        the same files, placed and typed alike; accelerate's offload hooks sit on the module itself, so an
        offloaded pipeline keeps its own VAE."""
        if other is None:
            return False, False
        cfg = self.configs[model]
        path, gpu, dtype = cfg["path"], cfg["gpu"], self.dtype(model)
        te_device, te_dtype = text_encoder_placement(gpu, self.device, dtype, offload)
        share_te = other.prompts.device == te_device and other.prompts.dtype == te_dtype \
            and same_files(Path(other.path, "text_encoder"), Path(path, "text_encoder")) \
            and same_files(Path(other.path, "tokenizer"), Path(path, "tokenizer"))
        share_vae = not offload and not other.offload and other.pipe.vae.dtype == vae_dtype(gpu, self.device, dtype) \
            and same_files(Path(other.path, "vae"), Path(path, "vae"))
        return share_te, share_vae

    def load(self, model: str) -> None:
        import diffusers
        from diffusers import AutoencoderKLWan
        from transformers import UMT5EncoderModel

        cfg = self.configs[model]
        path, gpu = cfg["path"], cfg["gpu"]
        if not path:
            setting = cfg["paths"]["production"]["path_setting"].upper()
            raise JobFailed(f"no {model} model path configured ({setting})", code=MODEL_NOT_CONFIGURED)
        dtype = self.dtype(model)
        offload = offload_decision(self.device, self.settings.wan_offload)
        te_device, te_dtype = text_encoder_placement(gpu, self.device, dtype, offload)
        other = next((loaded for name, loaded in list(self._loaded.items()) if name != model), None)
        share_te, share_vae = self._sharing(model, other, offload)
        shared = (["text_encoder", "tokenizer"] if share_te else []) + (["vae"] if share_vae else [])
        if share_te:
            if other is None:
                raise RuntimeError("sharing the text encoder needs another loaded model")
            prompts, text_encoder = other.prompts, None
        else:
            prompts = None
            text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=te_dtype,
                                                            local_files_only=True).eval()
            if te_device != "cpu":
                text_encoder.to(te_device)
        if share_vae:
            if other is None:
                raise RuntimeError("sharing the VAE needs another loaded model")
            vae = other.pipe.vae
        else:
            vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=vae_dtype(gpu, self.device, dtype),
                                                   local_files_only=True)

        pipeline_cls = getattr(diffusers, cfg["pipeline"])
        extra = {"tokenizer": prompts.tokenizer} if prompts else {}
        # text_encoder=None: prompts are encoded by PromptEncoder and passed as embeddings.
        pipe = pipeline_cls.from_pretrained(path, vae=vae, text_encoder=None, dtype=dtype, local_files_only=True,
                                            **extra)
        pipe.set_progress_bar_config(disable=True)
        if prompts is None:
            prompts = PromptEncoder(pipe.tokenizer, text_encoder, te_device)
        plan = gpu_plan(gpu, self.device, 0, self.settings.torch_compile, offload)
        if offload:
            pipe.enable_model_cpu_offload(device=self.device)
        elif self.device != "cpu":
            pipe.to(self.device)
        if plan["torch_compile"]:
            # Regional compilation of the repeated transformer blocks (one graph for 30 identical blocks:
            # compile time in seconds, not minutes), one shape per graph.
            pipe.transformer.compile_repeated_blocks(dynamic=False)
        self._loaded[model] = LoadedModel(path=path, pipe=pipe, prompts=prompts, offload=offload,
                                          scheduler_config=dict(pipe.scheduler.config), shared=shared)
        log.info("loaded %s from %s (text encoder on %s, offload %s, shared with the other model: %s)",
                 model, path, te_device, offload, shared or "nothing")

    def warm_up(self, model: str) -> None:
        """One step of the video_fast preset and its VAE decode right after the load (cuDNN's plans for the
        VAE's 3D convolutions, lazy CUDA init and, with torch.compile, the compilation for this shape); the
        negative prompt's embeddings land in the cache on the way. ModelHost runs it inside the model's
        lease, with `warm_up_working_bytes` leased. Only text-to-video warms up: VACE runs the same kernels."""
        if model != T2V:
            return
        preset = self._warm_up_preset()
        loaded = self._loaded[model]
        target = str(loaded.pipe._execution_device)
        with torch.no_grad():
            loaded.pipe(prompt_embeds=loaded.prompts.encode("", target),
                        negative_prompt_embeds=loaded.prompts.encode_negative(preset["negative_prompt"], target),
                        height=preset["height"], width=preset["width"], num_frames=preset["frames"],
                        num_inference_steps=1, guidance_scale=preset["guidance_scale"], output_type="np")
        devices.release_cached_memory(self.device)

    def _warm_up_preset(self) -> dict:
        from configuration import preset_defaults

        return preset_defaults("video_fast", self.settings)

    def warm_up_working_bytes(self, model: str) -> int:
        if model != T2V:
            return 0
        preset = self._warm_up_preset()
        return working_bytes_estimate(self.configs[model]["gpu"], preset["width"], preset["height"], preset["frames"])

    def unload(self, model: str) -> None:
        self._loaded.pop(model, None)
        devices.empty_cache(self.device)

    # requests
    def required_models(self, params: WanParams) -> list[str]:
        return [VACE] if params["reference"] else [T2V]

    def check_request(self, params: WanParams) -> None:
        """A job needs its model's path; sizes and frames were bounded by the schema."""
        reference = params["reference"]
        for model in self.required_models(params):
            cfg = self.configs[model]
            if not cfg["path"]:
                setting = cfg["paths"]["production"]["path_setting"].upper()
                if reference:
                    raise field_error(reference["source_field"],
                                      f"reference_mode {reference['mode']} needs the {model} model "
                                      f"(Wan VACE), which is not configured: {setting} is empty")
                raise field_error("/type", f"the {model} model is not configured: {setting} is empty")

    def reference_urls(self, params: WanParams) -> dict[str, str]:
        reference = params["reference"]
        if not reference:
            return {}
        urls = {"first": reference["first_url"], "last": reference["last_url"]}
        return {role: url for role, url in urls.items() if url}

    def working_bytes(self, params: WanParams) -> int:
        gpu = self.configs[self.required_models(params)[0]]["gpu"]
        return working_bytes_estimate(gpu, params["width"], params["height"], params["frames"])

    def pipeline_of(self, params: WanParams):
        return self._loaded[self.required_models(params)[0]].pipe

    # jobs
    def run(self, params: WanParams, ctx: RunContext) -> list[GeneratedAsset]:
        model = self.required_models(params)[0]
        loaded = self._loaded[model]
        pipe, reference = loaded.pipe, params["reference"]
        width, height, frames = params["width"], params["height"], params["frames"]
        memory_saving = ctx.memory_saving
        plan = gpu_plan(self.configs[model]["gpu"], self.device, width * height, self.settings.torch_compile,
                        loaded.offload, memory_saving)
        pipe.vae.enable_tiling() if plan["vae_tiling"] else pipe.vae.disable_tiling()
        pipe.scheduler = make_scheduler(params["sample_solver"], loaded.scheduler_config)

        call: dict[str, Any] = {}
        used: dict[str, Any] = {"model": model, "pipeline": type(pipe).__name__, "reference_mode": "none"}
        if reference:
            fetched = ctx.references
            policy = reference["resize_policy"]
            first = resize_reference(fetched["first"], width, height, policy) if "first" in fetched else None
            last = resize_reference(fetched["last"], width, height, policy) if "last" in fetched else None
            sizes = {role: list(image.size) for role, image in fetched.items()}
            video, mask = conditioning_frames(first, last, frames, width, height)
            call = {"video": video, "mask": mask, "conditioning_scale": reference["conditioning_scale"]}
            used.update(reference_mode=reference["mode"], conditioning_scale=reference["conditioning_scale"],
                        strength_source=reference["strength_source"], resize_policy=reference["resize_policy"],
                        reference_sizes=sizes, conditioned_frames=conditioned_frame_indices(reference["mode"], frames))

        execution_device = str(pipe._execution_device)
        cfg_on = params["guidance_scale"] > 1.0
        prompt_embeds = loaded.prompts.encode(params["prompt"], execution_device)
        negative = params["negative_prompt"]  # a string whenever guidance is on (configuration/requests/wan.py)
        negative_embeds = (loaded.prompts.encode_negative(negative, execution_device)
                           if cfg_on and negative is not None else None)
        tokens = loaded.prompts.token_count(params["prompt"])

        ctx.stage("generating", total_steps=params["steps"])
        output = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, height=height, width=width,
                      num_frames=frames, num_inference_steps=params["steps"], guidance_scale=params["guidance_scale"],
                      generator=devices.seeded_generator(params["seed"], self.device), output_type="pil",
                      callback_on_step_end=step_callback(ctx, params["steps"]), **call).frames[0]
        if len(output) != frames or output[0].size != (width, height):
            raise JobFailed(f"the pipeline returned {len(output)} frames of {output[0].size}, "
                            f"expected {frames} of {(width, height)}")

        used.update(width=width, height=height, frames=frames, frames_requested=params["frames_requested"],
                    seed=params["seed"], seed_source=params["seed_source"], steps=params["steps"],
                    guidance_scale=params["guidance_scale"], classifier_free_guidance=cfg_on,
                    negative_prompt_used=params["negative_prompt"], sample_solver=params["sample_solver"],
                    scheduler=type(pipe.scheduler).__name__, prompt_tokens=tokens, prompt_truncated=tokens > TEXT_LEN,
                    text_encoder_device=loaded.prompts.device, dtype=str(pipe.transformer.dtype).replace("torch.", ""),
                    gpu_settings=[k for k, v in plan.items() if v], memory_saving_retry=memory_saving)
        if params["output"] == "image":
            return [GeneratedAsset("image", output[:1], used)]
        fps = params["fps"]
        if fps is None:  # normalisation sets fps on every video job
            raise JobFailed("a video job without a playback rate")
        used.update(fps=fps, duration_seconds=frames / fps)
        return [GeneratedAsset("video", output, used, fps=fps)]

