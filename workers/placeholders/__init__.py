"""Placeholder models: tiny random-weight models in the exact on-disk formats of the real ones.

No machine in development or CI reaches a model hub, so the workers' real loading code
(`from_pretrained`, `from_single_file`) runs against these instead. They are built offline, in a few
seconds, into `root`, and rebuilt only when the libraries that write them change:

    root/manifest.json                            versions, builder version, file hashes
    root/sdxl/                                    StableDiffusionXLPipeline folder
    root/sdxl-single/placeholder_sdxl.safetensors the same SDXL weights as one original-format checkpoint
    root/sdxl-single/config/                      the folder's configs + tokenizers, no weights
    root/wan2.1-t2v/                              WanPipeline folder
    root/wan2.1-vace/                             WanVACEPipeline folder (same VAE/text encoder as t2v)
    root/qwen2.5-base/, root/qwen2.5-instruct/    Qwen2ForCausalLM folders
    root/safety-classifier/                       ViTForImageClassification folder (output safety check)
    root/text-safety-classifier/                  XLMRobertaForSequenceClassification folder (text classifier)

This module imports nothing heavy: checking a cached tree takes about a millisecond.
"""
from __future__ import annotations

import os
from pathlib import Path

from .manifest import BUILDER_VERSION, installed_versions, is_current, placeholder_paths, read_manifest


def ensure_placeholder_models(root: str | os.PathLike, force: bool = False) -> Path:
    """Build every placeholder model under `root` unless a current build is already there; return `root`.

    Safe to call from several processes at once: the build runs under an exclusive `flock` on
    `root/.lock`, into a temporary folder that is renamed into place, and the manifest is written last
    (and removed first on a rebuild), so a reader that finds a current manifest sees a complete tree."""
    root = Path(root).resolve()
    if not force and is_current(root):
        return root
    from .build import build_locked

    build_locked(root, force=force)
    return root


__all__ = ["BUILDER_VERSION", "ensure_placeholder_models", "placeholder_paths", "installed_versions", "is_current",
           "read_manifest"]
