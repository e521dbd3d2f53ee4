"""Helpers shared by the model builders."""
from __future__ import annotations

import math


def variance_preserving_init(module, seed: int, gain: float = 1.0) -> None:
    """Re-draw every Conv/Linear weight from N(0, gain^2 / fan_in) and zero the biases.

    PyTorch's default init (std 1/sqrt(3 fan_in)) shrinks the signal at every layer, so a randomly initialised
    VAE maps every picture to nearly the same latent and conditioning inputs (img2img / reference frames,
    VACE masks) barely change the output. With this init they visibly do, which is what tests downstream
    need. Deterministic: uses its own generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
                fan_in = sub.weight[0].numel()
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * (gain / math.sqrt(fan_in)))
                if sub.bias is not None:
                    sub.bias.zero_()
