"""Tiny output safety classifier: a ViTForImageClassification folder laid out like the published NSFW
image classifiers (e.g. Falconsai/nsfw_image_detection: config.json with id2label {0: "normal",
1: "nsfw"}, model.safetensors, preprocessor_config.json for ViTImageProcessor), loaded by
workers/runtime/safety.py with the same from_pretrained code as a real one.

Its weights are random except the head, which is set so the "nsfw" probability of any picture stays
in a narrow band around NSFW_PROBABILITY: at the default SAFETY_THRESHOLD (0.5) every placeholder
output passes, so the placeholder pod behaves as it does without the check; a test that sets the
threshold below the band (0.01) makes every output flag.
"""
from __future__ import annotations

import math
from pathlib import Path

SEED = 4567
NSFW_PROBABILITY = 0.1   # the centre of the band; the band's width comes from the small random head weights
IMAGE_SIZE = 32
MODEL: dict = dict(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=64, hidden_act="gelu", layer_norm_eps=1e-12,
                   qkv_bias=True)
LABELS = {0: "normal", 1: "nsfw"}


def build_model():
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()}, **MODEL)
    torch.manual_seed(SEED)
    model = ViTForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        # The final LayerNorm keeps features at unit scale, so head weights of std 0.02 move the logit
        # difference by about +-0.1: the probability stays within roughly 0.08-0.12.
        head = model.classifier
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
        head.bias.copy_(torch.tensor([0.0, math.log(NSFW_PROBABILITY / (1 - NSFW_PROBABILITY))]))
    processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_resize=True,
                                  do_rescale=True, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
                                  image_std=[0.5, 0.5, 0.5])
    return model, processor


def build(directory: Path) -> None:
    model, processor = build_model()
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
