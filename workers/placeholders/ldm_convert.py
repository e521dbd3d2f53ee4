"""diffusers -> original (LDM / Stability "sgm") key conversion for SDXL single-file checkpoints.

The inverse of diffusers/loaders/single_file_utils.py's convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint and convert_open_clip_checkpoint (what
diffusers' scripts/convert_diffusers_to_original_sdxl.py does), written from the loader's source:

    model.diffusion_model.*                       UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*                           VAE (encoder.down.N.block.M, mid.block_1, mid.attn_1, ...)
    conditioner.embedders.0.transformer.text_model.*   CLIP ViT-L text encoder (transformers layout)
    conditioner.embedders.1.model.*               OpenCLIP ViT-bigG text encoder (resblocks, fused in_proj,
                                                  text_projection stored as (hidden, projection_dim))
Every diffusers key must be mapped; a key left over raises, so a model change cannot silently drop weights.
"""
from __future__ import annotations

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class _Mapper:
    def __init__(self, state_dict: dict):
        self.sd = state_dict
        self.left = set(state_dict)
        self.out: dict = {}

    def move(self, src_prefix: str, dst_prefix: str, rename: dict | None = None, transform=None) -> None:
        """Every key under `src_prefix.` goes to `dst_prefix.`; `rename` maps the first name(s) after the prefix."""
        for key in sorted(k for k in self.left if k.startswith(src_prefix + ".")):
            rest = key[len(src_prefix) + 1:]
            for old, new in (rename or {}).items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            value = self.sd[key]
            self.out[f"{dst_prefix}.{rest}"] = transform(value) if transform else value
            self.left.discard(key)

    def done(self, what: str) -> dict:
        if self.left:
            raise ValueError(f"{what}: no original-format name for {sorted(self.left)[:10]}")
        return self.out


def unet_to_ldm(state_dict: dict, config) -> dict:
    lpb = config["layers_per_block"]
    m = _Mapper(state_dict)
    for src, dst in [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
                     ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
                     ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")]:
        m.move(src, dst)
    for b in range(len(config["block_out_channels"])):
        for layer in range(lpb):
            i = 1 + b * (lpb + 1) + layer
            m.move(f"down_blocks.{b}.resnets.{layer}", f"input_blocks.{i}.0", _UNET_RESNET)
            m.move(f"down_blocks.{b}.attentions.{layer}", f"input_blocks.{i}.1")
        m.move(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op")
        has_attention = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state_dict)
        for layer in range(lpb + 1):
            i = b * (lpb + 1) + layer
            m.move(f"up_blocks.{b}.resnets.{layer}", f"output_blocks.{i}.0", _UNET_RESNET)
            m.move(f"up_blocks.{b}.attentions.{layer}", f"output_blocks.{i}.1")
        upsampler = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if has_attention else 1}.conv"
        m.move(f"up_blocks.{b}.upsamplers.0.conv", upsampler)
    m.move("mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    m.move("mid_block.attentions.0", "middle_block.1")
    m.move("mid_block.resnets.1", "middle_block.2", _UNET_RESNET)
    return {UNET_PREFIX + k: v for k, v in m.done("unet").items()}


def vae_to_ldm(state_dict: dict, config) -> dict:
    n = len(config["block_out_channels"])
    m = _Mapper(state_dict)

    def conv1x1(w):  # the original attention projections are 1x1 convolutions
        return w.reshape(*w.shape, 1, 1) if w.ndim == 2 else w

    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            m.move(f"{side}.{name}", f"{side}.{name}")
        m.move(f"{side}.conv_norm_out", f"{side}.norm_out")
        for j in range(2):
            m.move(f"{side}.mid_block.resnets.{j}", f"{side}.mid.block_{j + 1}")
        m.move(f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _VAE_ATTENTION, transform=conv1x1)
    for i in range(n):
        m.move(f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block")
        m.move(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        m.move(f"decoder.up_blocks.{i}.resnets", f"decoder.up.{n - 1 - i}.block")
        m.move(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
    for name in ("quant_conv", "post_quant_conv"):
        m.move(name, name)
    out = m.done("vae")
    # resnet shortcuts: "...block.M.conv_shortcut.*" -> "...block.M.nin_shortcut.*"
    out = {k.replace(".conv_shortcut.", ".nin_shortcut."): v for k, v in out.items()}
    return {VAE_PREFIX + k: v for k, v in out.items()}


def clip_l_to_ldm(state_dict: dict) -> dict:
    """CLIPTextModel -> conditioner.embedders.0.transformer.text_model.* (transformers >= 5.6 drops the
    `text_model.` level from CLIPTextModel's own keys; the original checkpoints keep it)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        out[CLIP_L_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return out


def open_clip_to_ldm(state_dict: dict) -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP layout under conditioner.embedders.1.model."""
    import torch

    sd = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
          for k, v in state_dict.items() if not k.endswith("position_ids")}
    m = _Mapper(sd)
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    m.left -= {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
               "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias", "text_projection.weight"}
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}"
        for kind in ("weight", "bias"):
            parts = [f"{src}.self_attn.{p}_proj.{kind}" for p in ("q", "k", "v")]
            out[f"{dst}.attn.in_proj_{kind}"] = torch.cat([sd[p] for p in parts], dim=0).contiguous()
            m.left -= set(parts)
        m.move(f"{src}.self_attn.out_proj", f"{dst}.attn.out_proj")
        m.move(f"{src}.layer_norm1", f"{dst}.ln_1")
        m.move(f"{src}.layer_norm2", f"{dst}.ln_2")
        m.move(f"{src}.mlp.fc1", f"{dst}.mlp.c_fc")
        m.move(f"{src}.mlp.fc2", f"{dst}.mlp.c_proj")
    out.update(m.done("text_encoder_2"))
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def sdxl_to_original(unet, vae, text_encoder, text_encoder_2) -> dict:
    """One original-format SDXL state dict from the four diffusers/transformers modules."""
    state = {}
    state.update(unet_to_ldm(unet.state_dict(), unet.config))
    state.update(vae_to_ldm(vae.state_dict(), vae.config))
    state.update(clip_l_to_ldm(text_encoder.state_dict()))
    state.update(open_clip_to_ldm(text_encoder_2.state_dict()))
    return {k: v.detach().contiguous() for k, v in state.items()}
