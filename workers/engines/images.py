"""Image helpers every engine shares."""
from __future__ import annotations

from PIL import Image, ImageOps


def resize_reference(image: Image.Image, width: int, height: int, policy: str) -> Image.Image:
    """center_crop: scale to cover the target, crop the middle. letterbox: scale to fit, pad black."""
    if policy == "center_crop":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if policy == "letterbox":
        return ImageOps.pad(image, (width, height), Image.Resampling.LANCZOS, color=(0, 0, 0))
    raise ValueError(f"unknown resize policy {policy!r}")
