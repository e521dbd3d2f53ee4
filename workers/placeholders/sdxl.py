"""Tiny SDXL: a diffusers StableDiffusionXLPipeline folder and the same weights as one original-format
single-file checkpoint (what community SDXL checkpoints look like), plus a config-only folder next to it.

Sizes follow stabilityai/stable-diffusion-xl-base-1.0's configs with every width shrunk: UNet
(32, 64) channels, sample_size 8 (native 64x64 px, vae_scale_factor 8 from a four-block VAE).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import ldm_convert
from .common import variance_preserving_init
from .tokenizer_builders import clip_tokenizer, save_clip_tokenizer

SEED = 1234
NATIVE_SIZE = 64  # pixels: unet sample_size 8 x vae_scale_factor 8
SINGLE_FILE_NAME = "placeholder_sdxl.safetensors"

TEXT_ENCODER: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
    hidden_act="quick_gelu"
)
# >= 10 layers: diffusers recognises an SDXL base checkpoint by
# conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias.
TEXT_ENCODER_2: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=10, num_attention_heads=4, projection_dim=32,
    hidden_act="gelu"
)
ADDITION_TIME_EMBED_DIM = 8
UNET: dict[str, Any] = dict(
    sample_size=NATIVE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 2), use_linear_projection=True, norm_num_groups=32,
    cross_attention_dim=TEXT_ENCODER["hidden_size"] + TEXT_ENCODER_2["hidden_size"],
    addition_embed_type="text_time", addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=6 * ADDITION_TIME_EMBED_DIM + TEXT_ENCODER_2["projection_dim"],
    upcast_attention=None, act_fn="silu", center_input_sample=False,
)
VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=8,
    block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=NATIVE_SIZE, scaling_factor=0.13025, force_upcast=True,
)
# stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json
SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False, steps_offset=1,
    timestep_spacing="leading", sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False,
)


def _round_to_fp16(module) -> None:
    """Make every weight exactly representable in fp16, so the fp16 single file (as community checkpoints are
    shipped) and the fp32 folder load to identical fp32 weights."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.float16).to(p.dtype))


def build_pipeline():
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer(pad_token="!")  # noqa: S106 (a tokenizer's pad token, not a password)
    # Token ids as in the real SDXL text encoder configs (eos_token_id 2 = legacy "eos is the highest id").
    common: dict[str, Any] = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                  pad_token_id=1, layer_norm_eps=1e-5, attention_dropout=0.0, initializer_factor=1.0,
                  initializer_range=0.02)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(**common, **TEXT_ENCODER)).eval()
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, **TEXT_ENCODER_2)).eval()
    torch.manual_seed(SEED + 2)
    unet = UNet2DConditionModel(**UNET).eval()
    variance_preserving_init(unet, SEED + 2)
    torch.manual_seed(SEED + 3)
    vae = AutoencoderKL(**VAE).eval()
    variance_preserving_init(vae, SEED + 3, gain=1.4)
    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER)
    for module in (text_encoder, text_encoder_2, unet, vae):
        _round_to_fp16(module)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def original_state_dict(pipe, dtype=None) -> dict:
    state = ldm_convert.sdxl_to_original(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    return {k: v.to(dtype) for k, v in state.items()} if dtype is not None else state


def build(pipeline_dir: Path, single_file: Path, config_dir: Path) -> None:
    """`pipeline_dir`: diffusers folder (fp32). `single_file`: the same weights, original key names, fp16.
    `config_dir`: the folder's configs and tokenizers without weights (what `from_single_file(config=...)` needs)."""
    import torch
    from safetensors.torch import save_file

    pipe = build_pipeline()
    pipe.save_pretrained(pipeline_dir, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        save_clip_tokenizer(getattr(pipe, name), pipeline_dir / name)
    single_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_state_dict(pipe, torch.float16), str(single_file), metadata={"format": "pt"})
    shutil.copytree(pipeline_dir, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
