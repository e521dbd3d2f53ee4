"""Tiny Wan2.1: a WanPipeline folder (text-to-video) and a WanVACEPipeline folder (reference-frame
conditioning) laid out like Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-VACE-1.3B-diffusers.
Both folders hold the same VAE, text encoder and tokenizer weights, so the components are interchangeable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import variance_preserving_init
from .tokenizer_builders import save_umt5_tokenizer, umt5_tokenizer

SEED = 2345

TEXT_ENCODER: dict[str, Any] = dict(
    d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
    layer_norm_epsilon=1e-6, scalable_attention=True, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0
)
# z_dim 16: the default latents_mean/latents_std (16 values) and the transformer's in_channels depend on it.
# dim_mult has four entries (three downsamplings): vae_scale_factor_spatial 8; temporal factor 4.
VAE: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0
)
TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=TEXT_ENCODER["d_model"], freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024
)
# VACE context: 2 x z_dim latents (inactive + reactive video) + 8x8 mask channels = 96, as in the real model.
VACE_TRANSFORMER: dict[str, Any] = dict(TRANSFORMER, vace_layers=[0], vace_in_channels=2 * VAE["z_dim"] + 8 * 8)
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers/scheduler/scheduler_config.json
SCHEDULER: dict[str, Any] = dict(
    beta_end=0.02, beta_schedule="linear", beta_start=0.0001, disable_corrector=[], dynamic_thresholding_ratio=0.995,
    final_sigmas_type="zero", flow_shift=3.0, lower_order_final=True, num_train_timesteps=1000, predict_x0=True,
    prediction_type="flow_prediction", rescale_betas_zero_snr=False, sample_max_value=1.0, solver_order=2,
    solver_p=None, solver_type="bh2", steps_offset=0, thresholding=False, timestep_spacing="linspace",
    trained_betas=None, use_beta_sigmas=False, use_exponential_sigmas=False, use_flow_sigmas=True,
    use_karras_sigmas=False,
)


def build_components():
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel, WanVACETransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer, spiece = umt5_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_ENCODER)).eval()
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKLWan(**VAE).eval()
    variance_preserving_init(vae, SEED + 1, gain=1.4)
    torch.manual_seed(SEED + 2)
    transformer = WanTransformer3DModel(**TRANSFORMER).eval()
    variance_preserving_init(transformer, SEED + 2)
    torch.manual_seed(SEED + 3)
    vace_transformer = WanVACETransformer3DModel(**VACE_TRANSFORMER).eval()
    variance_preserving_init(vace_transformer, SEED + 3)
    scheduler = UniPCMultistepScheduler.from_config(SCHEDULER)
    return dict(tokenizer=tokenizer, spiece=spiece, text_encoder=text_encoder, vae=vae, transformer=transformer,
                vace_transformer=vace_transformer, scheduler=scheduler)


def build(t2v_dir: Path, vace_dir: Path) -> None:
    from diffusers import WanPipeline, WanVACEPipeline

    c = build_components()
    shared = dict(tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"], scheduler=c["scheduler"])
    WanPipeline(transformer=c["transformer"], **shared).save_pretrained(t2v_dir, safe_serialization=True)
    WanVACEPipeline(transformer=c["vace_transformer"], **shared).save_pretrained(vace_dir, safe_serialization=True)
    for directory in (t2v_dir, vace_dir):
        save_umt5_tokenizer(c["tokenizer"], c["spiece"], directory / "tokenizer")
