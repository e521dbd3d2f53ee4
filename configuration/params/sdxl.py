"""SDXL request body -> internal parameters."""
from __future__ import annotations

from typing import NotRequired, TypedDict

from configuration import job_types, preset_defaults
from configuration.params.common import aliased, caller_metadata, given, requested_seed, resolve_seed, resolve_size
from configuration.schemas.common import field_error
from configuration.settings import Settings


class SDXLReference(TypedDict):
    url: str
    mode: str                   # modify | exact_copy
    denoise_strength: float
    strength_source: str        # denoise_strength | reference_strength | preset
    resize_policy: str          # center_crop | letterbox


class SDXLParams(TypedDict):
    """What the SDXL engine runs with: every value within the schema's bounds, defaults applied."""
    job_type: str
    prompt: str
    negative_prompt: str
    num_images: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    seed_source: str
    seed_requested: NotRequired[int]   # the caller's seed when it was reduced to the generators' range
    compel_enabled: bool
    compel_weights: str | None
    reference: SDXLReference | None
    caller_metadata: dict


_REFERENCE_FIELDS = {"reference_image_url", "denoise_strength", "reference_strength", "exact_copy_mode",
                     "resize_policy"}


def normalise(body: dict, settings: Settings) -> SDXLParams:
    job_type = body["type"]
    preset = job_types("sdxl")[job_type]
    defaults = preset_defaults(job_type, settings)
    config = body.get("config", {})
    metadata = body.get("metadata", {})
    width, height = resolve_size(config, defaults)
    seed, seed_source = resolve_seed(config)
    steps = aliased(config, "steps", ("num_inference_steps",), "/config")

    params: SDXLParams = {
        "job_type": job_type,
        "prompt": body["prompt"],
        "negative_prompt": config.get("negative_prompt", defaults["negative_prompt"]),
        "num_images": int(config.get("num_images", defaults["num_images"])),
        "steps": int(steps if given(steps) else defaults["steps"]),
        "guidance_scale": float(config.get("guidance_scale", defaults["guidance_scale"])),
        "width": width,
        "height": height,
        "seed": seed,
        "seed_source": seed_source,
        "compel_enabled": bool(body.get("compel_enabled", False)),
        "compel_weights": body.get("compel_weights") or None,
        "reference": _reference(metadata, preset),
        "caller_metadata": caller_metadata(metadata, _REFERENCE_FIELDS),
    }
    params.update(requested_seed(config, seed))  # type: ignore[typeddict-item]
    if params["reference"] and params["reference"]["mode"] == "exact_copy":
        if "guidance_scale" not in config:
            params["guidance_scale"] = float(preset["exact_copy"]["guidance_scale"])
        if "negative_prompt" not in config:
            # An exact copy reproduces the reference: no negative prompt unless the caller sends one (the
            # app leaves it out on purpose).
            params["negative_prompt"] = ""
    if params["compel_weights"] and not params["compel_enabled"]:
        raise field_error("/compel_weights", "is only used when compel_enabled is true")
    return params


def _reference(metadata: dict, preset: dict) -> SDXLReference | None:
    url = metadata.get("reference_image_url")
    for name in ("denoise_strength", "reference_strength", "exact_copy_mode", "resize_policy"):
        if name in metadata and not url:
            raise field_error(f"/metadata/{name}", "needs metadata.reference_image_url")
    if not url:
        return None
    exact_copy = bool(metadata.get("exact_copy_mode", False))
    if "denoise_strength" in metadata and "reference_strength" in metadata:
        if abs(metadata["denoise_strength"] - (1 - metadata["reference_strength"])) > 1e-6:
            raise field_error("/metadata/reference_strength", "conflicts with denoise_strength (denoise = 1 - "
                                                              "reference_strength)")
    if "denoise_strength" in metadata:
        strength, source = float(metadata["denoise_strength"]), "denoise_strength"
    elif "reference_strength" in metadata:
        strength, source = 1.0 - float(metadata["reference_strength"]), "reference_strength"
    else:
        mode_preset = preset["exact_copy"] if exact_copy else preset["img2img"]
        strength, source = float(mode_preset["denoise_strength"]), "preset"
    reference: SDXLReference = {
        "url": url,
        "mode": "exact_copy" if exact_copy else "modify",
        "denoise_strength": strength,
        "strength_source": source,
        "resize_policy": metadata.get("resize_policy", preset["img2img"]["resize_policy"]),
    }
    return reference
